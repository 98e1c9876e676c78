"""Recipe of the conditional GAN of notebook 05 (not shipped: the notebook trains it live).

gan = ConditionalGAN(GANConfig())
history = train_gan(gan, steps=300)           # {"d": [...], "g": [...]}
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from minimodels.checks import check_instance, check_int
from minimodels.data.images import to_tensor
from minimodels.data.shapeworld import render, sample_single_objects
from minimodels.gan import PAIRS, ConditionalGAN


def training_batch(step: int, batch_size: int, seed: int, image_size: int):
    """Fresh single-object `train` scenes: images in [-1, 1] (B, 3, S, S) and their class
    indices y (B,) into PAIRS."""
    scenes = sample_single_objects("train", batch_size, 1_000_000 * (seed + 1) + step, image_size)
    x = to_tensor(render(scenes, image_size), (-1, 1))  # (B, 3, S, S) in [-1, 1]
    y = torch.tensor([PAIRS.index((s["objects"][0]["color"], s["objects"][0]["shape"]))
                      for s in scenes])  # fmt: skip
    return x, y


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
    check_instance(gan, ConditionalGAN, "gan")
    steps = check_int(steps, "steps", 1)
    torch.manual_seed(seed)
    G, D, c = gan.generator, gan.discriminator, gan.config
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.5, 0.999))
    dev = G.fc.weight.device
    history: dict[str, list[float]] = {"d": [], "g": []}
    G.train()
    D.train()
    for step in tqdm(range(steps), disable=not progress, leave=False, desc="gan"):
        x, y = training_batch(step, batch_size, seed, c.image_size)
        x, y = x.to(dev), y.to(dev)
        z = torch.randn(batch_size, c.latent_dim, device=dev)  # z ~ N(0, I)
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
