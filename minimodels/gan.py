"""A tiny conditional GAN: the generative model before diffusion, for the trilemma comparison.

Goodfellow et al. (2014) set a generator G against a discriminator D; Mirza & Osindero (2014)
conditioned both on extra inputs y (here the object's colour-shape pair); Miyato & Koyama (2018)
put the condition into D as a projection. The two play

    min_G max_D  E_x[log D(x, y)] + E_z[log(1 - D(G(z, y), y))]

(with the "non-saturating" generator loss -log D(G(z, y), y) in practice). One forward pass of
G makes an image: fast. What GANs are known to trade away is diversity (mode collapse) and
stable training; notebook 05 measures all three corners beside the diffusion model.

    gan = ConditionalGAN(GANConfig())
    history = train_gan(gan, steps=1500)
    images = gan.generate(["a red circle", "a blue cross"], seed=0)   # (2, 3, 20, 20) in [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimodels import shapeworld as sw
from minimodels.data.shapeworld import sample_single_objects

PAIRS: tuple[tuple[str, str], ...] = sw.TRAIN_PAIRS  # the classes y: colour-shape pairs


@dataclass
class GANConfig:
    image_size: int = 20  # divisible by 4
    latent_dim: int = 32  # z ~ N(0, I)
    embed_dim: int = 16  # width of the class embedding in G
    channels: int = 32  # G's and D's base width

    def __post_init__(self):
        for name in ("image_size", "latent_dim", "embed_dim", "channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if self.image_size % 4:
            raise ValueError(f"image_size must be divisible by 4; got {self.image_size}")


class Generator(nn.Module):
    """G(z, y): (B, latent), (B,) -> (B, 3, S, S) in [-1, 1]; upsampling S/4 -> S/2 -> S."""

    def __init__(self, c: GANConfig):
        super().__init__()
        self.s4, ch = c.image_size // 4, c.channels
        self.embed = nn.Embedding(len(PAIRS), c.embed_dim)
        self.fc = nn.Linear(c.latent_dim + c.embed_dim, 2 * ch * self.s4**2)
        self.net = nn.Sequential(
            nn.BatchNorm2d(2 * ch), nn.ReLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * ch, ch, 3, padding=1),
            nn.BatchNorm2d(ch), nn.ReLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(ch, ch, 3, padding=1),
            nn.BatchNorm2d(ch), nn.ReLU(),
            nn.Conv2d(ch, 3, 3, padding=1), nn.Tanh(),
        )  # fmt: skip

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, self.embed(y)], dim=1))  # (B, 2C·(S/4)²)
        return self.net(h.view(len(z), -1, self.s4, self.s4))  # (B, 3, S, S)


class Discriminator(nn.Module):
    """D(x, y) -> logit (B,): conv features h, then w·h + embed(y)·h (projection)."""

    def __init__(self, c: GANConfig):
        super().__init__()
        ch = c.channels
        self.net = nn.Sequential(
            nn.Conv2d(3, ch, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(2 * ch * (c.image_size // 4) ** 2, 128), nn.LeakyReLU(0.2),
        )  # fmt: skip
        self.out = nn.Linear(128, 1)
        self.embed = nn.Embedding(len(PAIRS), 128)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.net(x)  # (B, 128)
        return self.out(h).squeeze(1) + (self.embed(y) * h).sum(1)  # projection discriminator


class ConditionalGAN(nn.Module):
    config_class = GANConfig

    def __init__(self, config: GANConfig | None = None):
        super().__init__()
        self.config = c = config if config is not None else GANConfig()
        if not isinstance(c, GANConfig):
            raise TypeError(f"config must be a GANConfig; got {type(c).__name__}")
        self.generator = Generator(c)
        self.discriminator = Discriminator(c)

    @staticmethod
    def labels(prompts: Sequence[str]) -> torch.Tensor:
        """'a red circle' -> the index of ("red", "circle") in PAIRS: (B,) long."""
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
            raise TypeError(f"prompts must be a non-empty list of strings; got {prompts!r:.60}")
        out = []
        for p in prompts:
            words = p.split() if isinstance(p, str) else []
            pair = next((q for q in PAIRS if len(words) >= 2 and (words[-2], words[-1]) == q), None)
            if pair is None:
                raise ValueError(
                    f"each prompt must end in a training colour-shape pair such as 'a red "
                    f"circle'; got {p!r}"
                )
            out.append(PAIRS.index(pair))
        return torch.tensor(out)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], seed: int = 0) -> torch.Tensor:
        """One image per prompt, float (B, 3, S, S) in [0, 1]: a single pass of G."""
        y = self.labels(prompts)
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(len(y), self.config.latent_dim, generator=g)
        self.generator.eval()
        dev = self.generator.fc.weight.device
        x = self.generator(z.to(dev), y.to(dev))
        return ((x.clamp(-1, 1) + 1) / 2).cpu()


def train_gan(
    gan: ConditionalGAN,
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 2e-4,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Alternate one D step and one G step per batch (Adam, β₁ = 0.5, as in DCGAN).

    Returns the loss histories {"d": [...], "g": [...]}.
    """
    from tqdm.auto import tqdm

    from minimodels.unet import to_model_range

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int; got {steps!r}")
    torch.manual_seed(seed)
    G, D, c = gan.generator, gan.discriminator, gan.config
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.5, 0.999))
    dev = G.fc.weight.device
    history: dict[str, list[float]] = {"d": [], "g": []}
    G.train()
    D.train()
    for step in tqdm(range(steps), disable=not progress, leave=False, desc="gan"):
        scenes = sample_single_objects("train", batch_size, 1_000_000 * (seed + 1) + step,
                                       c.image_size)  # fmt: skip
        x = to_model_range(sw.render(scenes, c.image_size)).to(dev)
        y = torch.tensor([PAIRS.index((s["objects"][0]["color"], s["objects"][0]["shape"]))
                          for s in scenes], device=dev)  # fmt: skip
        z = torch.randn(batch_size, c.latent_dim, device=dev)
        fake = G(z, y)
        # D: maximise log D(x, y) + log(1 - D(G(z, y), y))
        loss_d = F.softplus(-D(x, y)).mean() + F.softplus(D(fake.detach(), y)).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        # G: the non-saturating loss -log D(G(z, y), y)
        loss_g = F.softplus(-D(fake, y)).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        history["d"].append(loss_d.item())
        history["g"].append(loss_g.item())
    G.eval()
    D.eval()
    return history
