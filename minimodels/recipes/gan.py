"""Recipe of the conditional GAN of notebook 05 (not shipped: the notebook trains it live), and
the generative trilemma that sets it against the diffusion samplers.

gan = ConditionalGAN(GANConfig())
history = train_gan(gan, steps=300)           # {"d": [...], "g": [...]}
evaluate_trilemma(seed=10, n=256)             # quality, diversity and speed, as notebook 05
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from minimodels import pretrained
from minimodels.checks import check_instance, check_int
from minimodels.data.images import to_tensor
from minimodels.data.shapeworld import render, sample_single_objects
from minimodels.diffusion import DDPMScheduler
from minimodels.gan import PAIRS, ConditionalGAN
from minimodels.metrics import (
    attribute_diversity,
    frechet_distance,
    judge_features,
    valid_shape_rate,
)
from minimodels.pipelines import DDPMPipeline
from minimodels.recipes.ddpm import load_ddpm, real_images
from minimodels.train import get_device
from minimodels.unet import UNet2DModel

# How notebook 05 trains its GAN live: steps and batch size of train_gan (about 14 CPU seconds).
NOTEBOOK_GAN = {"steps": 300, "batch_size": 32}


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


# ----------------------------------------------------------------------------------------------
# The generative trilemma (notebook 05): quality, diversity and speed of GAN, DDPM and DDIM
# ----------------------------------------------------------------------------------------------

Sampler = Callable[[int, torch.Generator], torch.Tensor]  # (n, generator) -> (n, 3, S, S) in [0, 1]


def trilemma_samplers(unet: UNet2DModel, gan: ConditionalGAN) -> dict[str, Sampler]:
    """The samplers notebook 05 compares, each (n, generator) -> n images in [0, 1].

    The same U-Net four ways (its scheduler decides): DDPM with 1000 ancestral steps, DDIM with
    50, 25 and 5 deterministic ones, x̂_0 clamped to [-1, 1] in both; and the GAN, one pass of
    G, with its classes drawn uniformly from PAIRS, as often as the data hold each pair.
    """
    check_instance(unet, UNet2DModel, "unet")
    check_instance(gan, ConditionalGAN, "gan")
    c = unet.config
    ddpm = DDPMPipeline(unet, scheduler=DDPMScheduler(c.num_train_timesteps, c.beta_schedule,
                                                      clip_sample=True))  # fmt: skip
    ddim = DDPMPipeline(unet)  # DDIM with clip_sample, the pipeline's default

    def gan_sampler(n: int, generator: torch.Generator) -> torch.Tensor:
        y = torch.randint(len(PAIRS), (n,), generator=generator)  # (n,) classes, uniform
        seed = int(torch.randint(2**31, (1,), generator=generator))  # the noise z's
        return gan.generate([f"a {PAIRS[i][0]} {PAIRS[i][1]}" for i in y.tolist()], seed=seed)

    return {
        "DDPM 1000": lambda n, g: ddpm(n, 1000, g),
        "DDIM 50": lambda n, g: ddim(n, 50, g),
        "DDIM 25": lambda n, g: ddim(n, 25, g),
        "DDIM 5": lambda n, g: ddim(n, 5, g),
        "GAN": gan_sampler,
    }


@torch.no_grad()
def measure_trilemma(
    samplers: dict[str, Sampler], n: int, seed: int, judge=None, reference: int = 256
) -> tuple[dict[str, dict], dict[str, torch.Tensor]]:
    """Each sampler's n images from the noise of `seed`, measured on the trilemma's corners.

    Quality: valid_shape_rate, and fid_toy against max(n, reference) real images of the
    sampler's own side (lower is better). Diversity: attribute_diversity (normalised entropy
    of the colours, shapes and positions the judge reads; distinct colour-shape pairs).
    Speed: wall and CPU seconds per sample of the one call that drew them. A row "real S×S"
    per image side S gives the same figures for n real images: the level at this n.
    Returns (rows {label: figures}, images {label: (n, 3, S, S) in [0, 1]}).
    """
    check_instance(samplers, dict, "samplers")
    n, seed = check_int(n, "n", 2), check_int(seed, "seed", 0)
    judge = pretrained("judge") if judge is None else judge
    rows, images, refs = {}, {}, {}

    def figures(x: torch.Tensor) -> dict:
        side = x.shape[-1]
        if side not in refs:  # the judge's features of real images of this side (fid_toy)
            real, _ = real_images(max(n, reference), seed + 100_000, side)
            refs[side] = judge_features(real, judge)
        fid = frechet_distance(judge_features(x, judge), refs[side])  # = fid_toy(x, real)
        quality = {"valid_shape_rate": valid_shape_rate(x, judge), "fid_toy": fid}
        return {**quality, **attribute_diversity(x, judge)}

    for label, sampler in samplers.items():
        generator = torch.Generator().manual_seed(seed)
        start, cpu = time.perf_counter(), time.process_time()
        x = sampler(n, generator).cpu()  # on the host: a GPU's work is done and counted
        wall, cpu = (time.perf_counter() - start) / n, (time.process_time() - cpu) / n
        images[label] = x
        rows[label] = {**figures(x), "seconds_per_sample": wall, "cpu_seconds_per_sample": cpu}
    for side in sorted({x.shape[-1] for x in images.values()}, reverse=True):
        real, _ = real_images(n, seed, side)
        images[f"real {side}×{side}"] = real.float() / 255
        rows[f"real {side}×{side}"] = figures(real)
    return rows, images


def notebook_gan(
    seed: int = 0,
    steps: int = NOTEBOOK_GAN["steps"],
    batch_size: int = NOTEBOOK_GAN["batch_size"],
    device=None,
) -> ConditionalGAN:
    """The GAN as notebook 05 trains it (NOTEBOOK_GAN, seed 0): initialised after
    torch.manual_seed(seed), then train_gan."""
    torch.manual_seed(seed)
    gan = ConditionalGAN().to(get_device(device))
    train_gan(gan, steps=steps, batch_size=batch_size, seed=seed, progress=False)
    return gan


def evaluate_trilemma(
    seed: int = 0,
    n: int = 256,
    device=None,
    gan_steps: int = NOTEBOOK_GAN["steps"],
    gan_batch_size: int = NOTEBOOK_GAN["batch_size"],
) -> dict:
    """Notebook 05's trilemma at a larger n: the shipped `ddpm` U-Net sampled by DDPM-1000 and
    DDIM-50/25/5, and the notebook's GAN (NOTEBOOK_GAN, trained here in about 14 CPU seconds;
    gan_steps trains it longer), through measure_trilemma with seed; figures rounded.

    python -c "from minimodels.recipes.gan import evaluate_trilemma as e; print(e(10, 256))"

    DDPM-1000 is the cost: about 1.5 CPU seconds a sample on one thread, so n = 256 takes
    about 7 CPU minutes in all.
    """
    dev = get_device(device)
    gan = notebook_gan(0, gan_steps, gan_batch_size, dev)
    rows, _ = measure_trilemma(trilemma_samplers(load_ddpm(dev), gan), n, seed)
    rows = {label: {k: round(v, 5) if isinstance(v, float) else v for k, v in r.items()}
            for label, r in rows.items()}  # fmt: skip
    return {"n": n, "seed": seed, "gan_steps": gan_steps, "gan_batch_size": gan_batch_size,
            "threads": torch.get_num_threads(), "rows": rows}  # fmt: skip
