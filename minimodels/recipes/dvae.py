"""Recipe of the dVAE: its training batches, the τ schedule, training, evaluation and loading.

python -m minimodels.pretrain dvae       # 2000 steps, about 7 min on one CPU thread
python -m minimodels.evaluate dvae       # PSNR through hard codes, codebook perplexity
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from minimodels.checkpoint import load_model, weights_path
from minimodels.checks import check_float, check_instance, check_int, check_tensor
from minimodels.data.images import to_tensor
from minimodels.data.shapeworld import generate
from minimodels.dvae import DVAE, DVAEConfig
from minimodels.train import fit, get_device, seed_everything


def load_dvae(device=None) -> DVAE:
    """The shipped dVAE (minimodels/weights/dvae.safetensors)."""
    return load_model(DVAE, weights_path("dvae"), device=device)


def pretrain_dvae(steps: int, seed: int, device=None):
    """The shipped recipe: K = 128 codes on a 16×16 grid, Gumbel-softmax, batches of 32."""
    config = DVAEConfig(codebook_size=128, hidden=32, downsample=2)
    return train_dvae(steps=steps, batch_size=32, seed=seed, config=config, beta=0.0,
                      diversity=0.05, device=device)  # fmt: skip


def evaluate_dvae(seed: int = 0, n: int = 1000, device=None, model: DVAE | None = None) -> dict:
    """PSNR through hard codes, decode(encode(x)), and codebook perplexity on n fresh `test`
    images (the shipped dVAE unless `model` is given)."""
    model = (model or load_dvae(device)).eval()
    images, _ = generate("test", n, seed=seed, image_size=model.config.image_size)
    x = to_tensor(images)  # uint8 (n, 3, H, W)
    with torch.no_grad():
        codes = torch.cat([model.encode(x[s : s + 500]) for s in range(0, n, 500)])  # (n, h, w)
        recon = torch.cat([model.decode(codes[s : s + 500]).cpu() for s in range(0, n, 500)])
    return {
        "psnr": round(psnr(recon, to_tensor(images, value_range=(0, 1))), 3),
        "codebook_perplexity": round(codebook_perplexity(codes, model.config.codebook_size), 2),
        "codebook_size": model.config.codebook_size,
    }


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def tau_schedule(step: int, steps: int, tau_start: float = 1.0, tau_end: float = 1 / 16):
    """Exponential annealing τ_t = τ_start · (τ_end / τ_start)^(t / T), as DALL-E anneals τ."""
    frac = min(1.0, step / max(1, steps - 1))
    return tau_start * (tau_end / tau_start) ** frac


def dvae_batch(step: int, batch_size: int = 64, seed: int = 0, image_size: int = 32):
    """Fresh `train` images (1-3 objects) for step `step`: uint8 (B, 3, H, W)."""
    stream = 3_000_000 * (seed + 1) + step  # apart from the evaluation seeds
    images, _ = generate("train", batch_size, seed=stream, image_size=image_size)
    return to_tensor(images)


def train_dvae(
    steps: int = 1000,
    batch_size: int = 64,
    seed: int = 0,
    lr: float = 2e-3,
    config: DVAEConfig | None = None,
    beta: float = 1e-4,
    diversity: float = 0.2,
    time_budget: float | None = None,
    progress: bool = True,
    device=None,
) -> tuple[DVAE, list[float]]:
    """Train a dVAE from scratch on ShapeWorld `train`; τ goes from 1 to 1/16 over `steps`.

    `beta` weighs KL(q ‖ uniform) and `diversity` KL(q̄ ‖ uniform) (see `DVAE.loss`). Returns
    the model (eval mode) and the loss of every step. With `time_budget` (seconds) training
    may stop early; τ still follows the schedule of `steps`.
    """
    steps = check_int(steps, "steps", 1)
    seed_everything(seed)
    model = DVAE(config or DVAEConfig()).to(get_device(device))

    def loss_fn(m, batch):
        step, images = batch
        return m.loss(images, tau=tau_schedule(step, steps), beta=beta, diversity=diversity)["loss"]

    history = fit(
        model, loss_fn, lambda step: (step, dvae_batch(step, batch_size, seed)),
        steps=steps, time_budget=time_budget, lr=lr, warmup=min(50, steps // 10),
        cosine=True, progress=progress, desc=f"dvae ({model.config.quantizer})",
    )  # fmt: skip
    model.eval()
    return model, history


def finetune_dvae(
    model: DVAE,
    steps: int = 30,
    beta: float = 0.0,
    tau: float = 1 / 16,
    diversity: float = 0.05,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 1,
    progress: bool = False,
) -> tuple[DVAE, list[float]]:
    """Train a copy of a trained dVAE for `steps` more steps with KL weight `beta`, at the fixed
    temperature `tau` (where the shipped recipe's schedule ends) and its diversity weight: the
    notebook's β trade-off.

    `model` itself is left as it was. Returns the copy (eval mode) and the loss of every step.
    """
    check_instance(model, DVAE, "model")
    steps = check_int(steps, "steps", 1)
    beta = check_float(beta, "beta", 0.0)
    tau = check_float(tau, "tau", 0.0, min_inclusive=False)
    seed_everything(seed)
    tuned = copy.deepcopy(model).train()

    def loss_fn(m, images):
        return m.loss(images, tau=tau, beta=beta, diversity=diversity)["loss"]

    history = fit(
        tuned, loss_fn, lambda step: dvae_batch(step, batch_size, seed), steps=steps, lr=lr,
        progress=progress, desc=f"dvae fine-tuning (β = {beta:g})",
    )  # fmt: skip
    tuned.eval()
    return tuned, history


# ----------------------------------------------------------------------------------------------
# The two figures of the evaluation
# ----------------------------------------------------------------------------------------------


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]: 10 log₁₀(1 / MSE)."""
    check_tensor(x, "x")
    check_tensor(y, "y")
    if x.shape != y.shape:
        raise ValueError(
            f"x and y must have the same shape; got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    mse = F.mse_loss(x.double(), y.double()).item()
    if not math.isfinite(mse):
        raise ValueError("x and y must be images in [0, 1]; their difference overflowed")
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def codebook_perplexity(codes: torch.Tensor, codebook_size: int) -> float:
    """exp(H(p)) of the code usage p: how many codes are in effective use (1 to K).

    K if every code is used equally often, 1 if one code does everything.
    """
    codebook_size = check_int(codebook_size, "codebook_size", 1, 1 << 20)
    codes = check_tensor(codes, "codes", floating=False).flatten().cpu()
    if codes.min() < 0 or codes.max() >= codebook_size:
        raise ValueError(f"codes must lie in [0, codebook_size={codebook_size})")
    counts = torch.bincount(codes, minlength=codebook_size).float()  # (K,)
    p = counts / counts.sum()
    return math.exp(-(p[p > 0] * p[p > 0].log()).sum().item())
