"""Recipe of `flow`: the shipped DDPM's U-Net, trained with the flow-matching (velocity)
objective instead of the noise one, so that few Euler steps suffice.

    python -m minimodels.pretrain flow          # about 25 CPU minutes on one thread
    python -m minimodels.evaluate flow          # valid shapes at 5, 10, 20 steps, vs DDIM

Everything but the objective is the shipped `ddpm`'s: the same U-Net (16/32/64 channels,
24×24), the same single-object scenes, batches of 24, lr 2e-3 with warm-up and cosine decay,
and the same number of steps, so the shipped `ddpm` is "a U-Net trained with the same budget".
The objective is `minimodels.flow.flow_matching_loss` (logit-normal t, as SD3); the U-Net's
time input is the timestep σ · 1000 (a float), as diffusers feeds a flow model. Sampling is
`minimodels.pipelines.DDPMPipeline` with a `FlowMatchEulerDiscreteScheduler` (Euler steps).
"""

from __future__ import annotations

import torch

from minimodels import pretrained
from minimodels.checkpoint import load_model, weights_path
from minimodels.checks import check_int
from minimodels.diffusion import DDIMScheduler
from minimodels.flow import FlowMatchEulerDiscreteScheduler, flow_matching_loss
from minimodels.metrics import fid_toy, valid_shape_rate
from minimodels.pipelines import DDPMPipeline
from minimodels.recipes.ddpm import (
    AUTOGUIDANCE,
    load_ddpm,
    load_ddpm_weak,
    real_images,
    samples,
    training_batch,
)
from minimodels.train import fit, get_device, seed_everything
from minimodels.unet import UNet2DModel, UNetConfig

STEP_COUNTS = (5, 10, 20)  # the sampling steps `evaluate_flow` reports


def train_flow(
    steps: int = 1000,
    batch_size: int = 24,
    seed: int = 0,
    lr: float = 2e-3,
    config: UNetConfig | None = None,
    t_sampling: str = "logit_normal",
    time_budget: float | None = None,
    progress: bool = True,
    device=None,
) -> tuple[UNet2DModel, list[float]]:
    """Train an unconditional U-Net velocity predictor v_θ(x_t, t · 1000) ≈ ε - x_0 on
    single-object ShapeWorld scenes; returns (model, losses). config: the shipped ddpm's
    (24×24; its beta_schedule is unused by a flow)."""
    seed_everything(seed)
    dev = get_device(device)
    config = config or UNetConfig(beta_schedule="cosine", sample_size=24)
    model = UNet2DModel(config).to(dev)
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(model, batch):
        x0, _prompts = batch  # unconditional: the prompts are unused
        return flow_matching_loss(model, x0.to(dev), gen, t_sampling, config.num_train_timesteps)

    history = fit(
        model, loss_fn, lambda s: training_batch(s, batch_size, seed, config.sample_size),
        steps=steps, time_budget=time_budget, lr=lr, warmup=min(100, steps // 10),
        cosine=True, progress=progress, desc="flow",
    )  # fmt: skip
    model.eval()
    return model, history


def pretrain_flow(steps: int, seed: int, device=None):
    """The shipped flow U-Net: ddpm's network, data, batch, lr and steps; logit-normal t."""
    return train_flow(steps=steps, batch_size=24, seed=seed, lr=2e-3, device=device)


def load_flow(device=None) -> UNet2DModel:
    """The shipped flow-matching U-Net (minimodels/weights/flow.safetensors): it predicts the
    velocity ε - x_0; sample it with `flow_pipeline`."""
    return load_model(UNet2DModel, weights_path("flow"), device=device)


def flow_pipeline(unet: UNet2DModel) -> DDPMPipeline:
    """Euler sampling of a flow U-Net: images in [0, 1] from ``pipe(batch, steps, generator)``."""
    return DDPMPipeline(unet, scheduler=FlowMatchEulerDiscreteScheduler(
        unet.config.num_train_timesteps))  # fmt: skip


@torch.no_grad()
def evaluate_flow(seed: int = 0, n: int = 256, device=None, steps: int = 10) -> dict:
    """Few-step sampling: the flow U-Net (Euler) against the shipped ddpm U-Net (DDIM).

    From the same noise (`seed`), n images each: valid_shape_rate and fid_toy (against n real
    images; the floor fid_toy_real) of the flow with Euler steps and of ddpm with DDIM (x̂_0
    clamped, as shipped; ddim_...), unguided both (like for like), at `steps` steps (no
    suffix) and at the other STEP_COUNTS (_5_steps, ...); and ddpm's DDIM at `steps` steps
    autoguided as in ddpm's own evaluation (ddim_..._autoguided, AUTOGUIDANCE). Both models
    are unconditional, so there is no prompt faithfulness.
    """
    steps = check_int(steps, "steps", 1, 1000)
    unet, ddpm = load_flow(device), load_ddpm(device)
    judge = pretrained("judge")
    size = unet.config.sample_size
    real, _ = real_images(n, seed, size)
    real2, _ = real_images(n, seed + 100_000, size)
    out = {"n": n, "steps": steps, "fid_toy_real": round(fid_toy(real2, real, judge), 4)}
    flow = flow_pipeline(unet)
    for k in sorted(set(STEP_COUNTS) | {steps}):
        images = samples(flow, n, seed, k)
        key = "" if k == steps else f"_{k}_steps"
        out["valid_shape_rate" + key] = round(valid_shape_rate(images, judge), 4)
        out["fid_toy" + key] = round(fid_toy(images, real, judge), 4)
    c = ddpm.config
    ddim = DDIMScheduler(c.num_train_timesteps, c.beta_schedule, clip_sample=True)
    runs = [(f"_{k}_steps", k, DDPMPipeline(ddpm, scheduler=ddim), {}) for k in STEP_COUNTS]
    runs.append(("_autoguided", steps, DDPMPipeline(ddpm, load_ddpm_weak(device), ddim),
                 AUTOGUIDANCE))  # fmt: skip
    for key, k, pipe, guidance in runs:
        images = samples(pipe, n, seed, k, **guidance)
        key = "" if key == f"_{steps}_steps" else key
        out["ddim_valid_shape_rate" + key] = round(valid_shape_rate(images, judge), 4)
        out["ddim_fid_toy" + key] = round(fid_toy(images, real, judge), 4)
    return out
