"""A tiny conditional GAN: the generative model before diffusion, for the trilemma comparison.

Goodfellow et al. (2014) set a generator G against a discriminator D; Mirza & Osindero (2014)
conditioned both on extra inputs y (here the object's colour-shape pair); Miyato & Koyama (2018)
put the condition into D as a projection. The two play

    min_G max_D  E_x[log D(x, y)] + E_z[log(1 - D(G(z, y), y))]

(with the "non-saturating" generator loss -log D(G(z, y), y) in practice). One forward pass of
G makes an image: fast. What GANs are known to trade away is diversity (mode collapse) and
stable training; notebook 05 measures all three corners beside the diffusion model.

    gan = ConditionalGAN(GANConfig())
    history = train_gan(gan, steps=1500)            # minimodels.recipes.gan (not shipped)
    images = gan.generate(["a red circle", "a blue square"], seed=0)  # (2, 3, 20, 20) in [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from minimodels.checks import check_instance, check_int, check_strings
from minimodels.data.world import TRAIN_PAIRS

PAIRS: tuple[tuple[str, str], ...] = TRAIN_PAIRS  # the classes y: colour-shape pairs


@dataclass
class GANConfig:
    image_size: int = 20  # divisible by 4
    latent_dim: int = 32  # z ~ N(0, I)
    embed_dim: int = 16  # width of the class embedding in G
    channels: int = 32  # G's and D's base width


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
        self.config = c = check_instance(config or GANConfig(), GANConfig, "config")
        if c.image_size % 4:
            raise ValueError(f"image_size must be divisible by 4; got {c.image_size}")
        self.generator = Generator(c)
        self.discriminator = Discriminator(c)

    @staticmethod
    def labels(prompts: Sequence[str]) -> torch.Tensor:
        """'a red circle' -> the index of ("red", "circle") in PAIRS: (B,) long."""
        out = []
        for p in check_strings(prompts, "prompts"):
            words = p.split()
            pair = next((q for q in PAIRS if len(words) >= 2 and (words[-2], words[-1]) == q), None)
            if pair is None:
                raise ValueError(
                    f"each prompt must end in a training colour-shape pair such as 'a red "
                    f"circle'; got {p!r}"
                )
            out.append(PAIRS.index(pair))
        return torch.tensor(out, device="cpu")  # host side, as a tokenizer's ids

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], seed: int = 0) -> torch.Tensor:
        """One image per prompt, float (B, 3, S, S) in [0, 1]: a single pass of G."""
        y = self.labels(prompts)
        g = torch.Generator().manual_seed(check_int(seed, "seed", 0))
        z = torch.randn(len(y), self.config.latent_dim, generator=g, device=g.device)
        self.generator.eval()
        dev = self.generator.fc.weight.device
        x = self.generator(z.to(dev), y.to(dev))
        return ((x.clamp(-1, 1) + 1) / 2).cpu()
