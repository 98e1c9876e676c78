"""Recipe of the pixel-space U-Nets: `ddpm` (unconditional), `ddpm-weak` (the weaker copy that
guides it) and `ddpm-text` (cross-attention to the frozen CLIP text tower).

    python -m minimodels.pretrain ddpm          # about 25 CPU minutes on one thread
    python -m minimodels.evaluate ddpm          # valid shapes, toy FID, prompt faithfulness

The data are single-object ShapeWorld scenes (one large object), in [-1, 1]; the objective is
`minimodels.diffusion.diffusion_loss`; sampling is `minimodels.pipelines`.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from minimodels import pretrained
from minimodels.checkpoint import load_model, weights_path
from minimodels.data.captions import mixed_captions
from minimodels.data.images import to_tensor
from minimodels.data.shapeworld import render, sample_single_objects
from minimodels.diffusion import DDIMScheduler, DDPMScheduler, diffusion_loss
from minimodels.metrics import fid_toy, prompt_faithfulness, valid_shape_rate
from minimodels.pipelines import DDPMPipeline, TextToImagePipeline
from minimodels.train import fit, get_device, seed_everything
from minimodels.unet import UNet2DModel, UNetConfig

# How the shipped U-Net is sampled with the shipped weak one as guide (autoguidance): w, and
# the timesteps lo ≤ t < hi it applies at. How it was chosen: minimodels/weights/ddpm-weak.json.
AUTOGUIDANCE = {"guidance_scale": 2.0, "guidance_interval": (0, 500)}


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def training_batch(step: int, batch_size: int = 32, seed: int = 0, image_size: int = 20):
    """Fresh single-object scenes (large objects) of the `train` split: images in [-1, 1]
    (B, 3, H, W) and one prompt per image. Half of the prompts are short ('a red circle'),
    half the full caption ('there is a large red circle at the top left')."""
    stream = 1_000_000 * (seed + 1) + step  # scene seeds apart from evaluation seeds
    scenes = sample_single_objects("train", batch_size, stream, image_size)
    images = to_tensor(render(scenes, image_size), (-1, 1))  # (B, 3, H, W) in [-1, 1]
    rng = np.random.default_rng([seed, step, 5])
    prompts = mixed_captions(scenes, rng, 0.5)
    return images, prompts


def real_images(n: int, seed: int = 0, image_size: int = 20, split: str = "test"):
    """n real single-object scenes (large objects) as uint8 (n, 3, S, S), with their
    (colour, shape) pairs: the distribution the shipped models were trained on."""
    scenes = sample_single_objects(split, n, seed, image_size)
    images = to_tensor(render(scenes, image_size))  # uint8 (n, 3, S, S)
    return images, [(s["objects"][0]["color"], s["objects"][0]["shape"]) for s in scenes]


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def train_unet(
    steps: int = 1000,
    batch_size: int = 32,
    seed: int = 0,
    lr: float = 2e-3,
    config: UNetConfig | None = None,
    text: bool = False,
    time_budget: float | None = None,
    snr_gamma: float | None = None,
    progress: bool = True,
    device=None,
) -> tuple[UNet2DModel, list[float]]:
    """Train a U-Net ε-predictor on single-object ShapeWorld scenes; returns (model, losses).

    text=True conditions on the frozen shipped CLIP's token features (cross-attention),
    replacing the prompt by "" for config.cond_dropout of the examples (for CFG).
    snr_gamma=γ trains with the Min-SNR weighting (see diffusion_loss).
    """
    seed_everything(seed)
    dev = get_device(device)
    clip = pretrained("clip", device=dev) if text else None
    if config is None:
        config = UNetConfig(cross_attention_dim=clip.config.text_width if text else None)
    if text and config.cross_attention_dim != clip.config.text_width:
        raise ValueError(f"text=True needs cross_attention_dim={clip.config.text_width}")
    model = UNet2DModel(config).to(dev)
    encoder = TextToImagePipeline(model, clip) if text else None  # its encode_prompt caches
    scheduler = DDPMScheduler(config.num_train_timesteps, config.beta_schedule)
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(model, batch):
        x0, prompts = batch
        condition = {}
        if text:
            drop = torch.rand(len(prompts), generator=gen) < config.cond_dropout
            prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]  # CFG dropout
            feats, mask = encoder.encode_prompt(prompts)  # (B, L, D), (B, L)
            condition = {"encoder_hidden_states": feats.to(dev),
                         "encoder_attention_mask": mask.to(dev)}  # fmt: skip
        return diffusion_loss(model, scheduler, x0.to(dev), gen, snr_gamma, **condition)

    history = fit(
        model, loss_fn, lambda s: training_batch(s, batch_size, seed, config.sample_size),
        steps=steps, time_budget=time_budget, lr=lr, warmup=min(100, steps // 10),
        cosine=True, progress=progress, desc="unet",
    )  # fmt: skip
    model.eval()
    return model, history


def _unconditional_unet(steps: int, seed: int, snr_gamma: float, device=None):
    """The unconditional recipe: 24×24 scenes, cosine schedule, batches of 24, lr 2e-3."""
    config = UNetConfig(beta_schedule="cosine", sample_size=24)
    return train_unet(steps=steps, batch_size=24, seed=seed, lr=2e-3, config=config,
                      snr_gamma=snr_gamma, device=device)  # fmt: skip


def pretrain_ddpm(steps: int, seed: int, device=None):
    """The shipped unconditional U-Net: Min-SNR γ = 5."""
    return _unconditional_unet(steps, seed, snr_gamma=5.0, device=device)


def pretrain_ddpm_weak(steps: int, seed: int, device=None):
    """The shipped guide of `ddpm` (autoguidance): the same network, fewer steps, γ = 2."""
    return _unconditional_unet(steps, seed, snr_gamma=2.0, device=device)


def pretrain_ddpm_text(steps: int, seed: int, device=None):
    """The shipped text-to-image U-Net: cross-attention to CLIP's 64-wide token features."""
    config = UNetConfig(beta_schedule="cosine", cross_attention_dim=64)
    return train_unet(steps=steps, batch_size=32, seed=seed, lr=2e-3, config=config,
                      text=True, device=device)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def load_ddpm(device=None) -> UNet2DModel:
    """The shipped unconditional U-Net (minimodels/weights/ddpm.safetensors)."""
    return load_model(UNet2DModel, weights_path("ddpm"), device=device)


def load_ddpm_weak(device=None) -> UNet2DModel:
    """The shipped weak U-Net: `ddpm`'s network, trained far less; it guides `ddpm`."""
    return load_model(UNet2DModel, weights_path("ddpm-weak"), device=device)


def load_ddpm_text(device=None) -> TextToImagePipeline:
    """The shipped text-to-image pipeline: the ddpm-text U-Net and the shipped CLIP."""
    unet = load_model(UNet2DModel, weights_path("ddpm-text"), device=device)
    return TextToImagePipeline(unet, pretrained("clip", device=device))


# ----------------------------------------------------------------------------------------------
# Evaluation (python -m minimodels.evaluate ddpm / ddpm-weak / ddpm-text)
# ----------------------------------------------------------------------------------------------


def samples(pipe: DDPMPipeline, n: int, seed: int, steps: int = 50, **guidance) -> torch.Tensor:
    """n samples in [0, 1] with `steps` steps of the pipe's scheduler (DDIM-50 by default), from
    the noise of `seed`, in batches of 256."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([pipe(min(256, n - s), steps, gen, **guidance) for s in range(0, n, 256)])


def _text_samples(pipe, prompts, seed: int, guidance_scale: float) -> torch.Tensor:
    """One DDIM-50 image per prompt in [0, 1] from the noise of `seed`, in batches of 128."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([
        pipe(prompts[s : s + 128], num_inference_steps=50, guidance_scale=guidance_scale,
             generator=gen)
        for s in range(0, len(prompts), 128)
    ])  # fmt: skip


def _timed(images: int, fn, *args, **kwargs) -> tuple[float, float]:
    """Wall and CPU seconds of fn(*args, **kwargs) per image, for a call that makes `images`."""
    start, cpu = time.perf_counter(), time.process_time()
    fn(*args, **kwargs)
    return (time.perf_counter() - start) / images, (time.process_time() - cpu) / images


@torch.no_grad()
def evaluate_ddpm(
    seed: int = 0,
    n: int = 256,
    device=None,
    guidance_scale: float = 3.0,
    timing_batch: int = 64,
    ddpm_timing_batch: int = 16,
) -> dict:
    """The issue's metrics on fresh samples (deterministic in seed, except the timings).

    Unconditional (DDIM-50, autoguided by ddpm-weak with AUTOGUIDANCE): valid_shape_rate,
    fid_toy against n real images, fid_toy_real (real against other real images: the floor);
    the same from the same noise without autoguidance (..._no_autoguidance). Text (ddpm-text,
    DDIM-50): prompt_faithfulness with guidance_scale and without guidance (w = 1), for n
    prompts 'a {colour} {shape}' of the test split's scenes. Seconds per image: DDIM-50 (also
    autoguided) and DDIM-25 on a batch of timing_batch, DDPM-1000 on ddpm_timing_batch; wall
    seconds, and the process's CPU seconds (cpu_...), which a busy machine inflates less.
    """
    unet, text_pipe = load_ddpm(device), load_ddpm_text(device)
    pipe = DDPMPipeline(unet, load_ddpm_weak(device))
    judge = pretrained("judge")
    size = unet.config.sample_size
    real, pairs = real_images(n, seed, size)
    real2, _ = real_images(n, seed + 100_000, size)
    guided, plain = samples(pipe, n, seed, **AUTOGUIDANCE), samples(pipe, n, seed)
    out = {
        "n": n,
        "valid_shape_rate": round(valid_shape_rate(guided, judge), 4),
        "valid_shape_rate_real": round(valid_shape_rate(real, judge), 4),
        "fid_toy": round(fid_toy(guided, real, judge), 4),
        "fid_toy_real": round(fid_toy(real2, real, judge), 4),
        "valid_shape_rate_no_autoguidance": round(valid_shape_rate(plain, judge), 4),
        "fid_toy_no_autoguidance": round(fid_toy(plain, real, judge), 4),
        "autoguidance_scale": AUTOGUIDANCE["guidance_scale"],
        "autoguidance_interval": list(AUTOGUIDANCE["guidance_interval"]),
    }
    prompts = [f"a {c} {s}" for c, s in pairs]
    for key, w in (
        ("prompt_faithfulness", guidance_scale),
        ("prompt_faithfulness_no_guidance", 1.0),
    ):
        images = _text_samples(text_pipe, prompts, seed + 1, w)
        out[key] = round(prompt_faithfulness(images, pairs, judge), 4)
    out["guidance_scale"] = guidance_scale
    c = unet.config
    ddpm = DDPMPipeline(unet, scheduler=DDPMScheduler(c.num_train_timesteps, c.beta_schedule,
                                                      clip_sample=True))  # fmt: skip
    timings = [
        ("seconds_per_image_ddim50", pipe, 50, timing_batch, {}),
        ("seconds_per_image_ddim25", pipe, 25, timing_batch, {}),
        ("seconds_per_image_ddpm1000", ddpm, 1000, ddpm_timing_batch, {}),
        ("seconds_per_image_ddim50_autoguided", pipe, 50, timing_batch, AUTOGUIDANCE),
    ]
    for key, sampler, steps, batch, kwargs in timings:
        gen = torch.Generator().manual_seed(seed)
        wall, cpu = _timed(batch, sampler, batch, steps, gen, **kwargs)
        out[key], out["cpu_" + key] = round(wall, 5), round(cpu, 5)
    gen = torch.Generator().manual_seed(seed)
    wall, cpu = _timed(1, text_pipe, (prompts * 64)[:64], num_inference_steps=50,
                       guidance_scale=guidance_scale, generator=gen)  # fmt: skip
    out["seconds_64_images_ddim50_text_cfg"] = round(wall, 3)  # the ≤ 15 s bar
    out["cpu_seconds_64_images_ddim50_text_cfg"] = round(cpu, 3)
    out["threads"] = torch.get_num_threads()
    return out


@torch.no_grad()
def evaluate_ddpm_weak(seed: int = 0, n: int = 256, device=None) -> dict:
    """What makes ddpm-weak a guide: it is the same network as ddpm, measurably worse.

    Its DDIM-50 samples on their own (valid_shape_rate, fid_toy against n real images; the
    floor fid_toy_real), and ddpm's from the same noise (..._ddpm, unguided); the ε-prediction
    loss of both on n fresh training-like images at uniform t (denoising_loss, plain MSE: the
    weak one's is higher); seconds per image of DDIM-50 on a batch of 64.
    """
    weak, strong = load_ddpm_weak(device), load_ddpm(device)
    judge = pretrained("judge")
    size = weak.config.sample_size
    real, _ = real_images(n, seed, size)
    real2, _ = real_images(n, seed + 100_000, size)
    x0, _ = training_batch(0, n, 10_000 + seed, size)  # fresh scenes of the training split
    scheduler = DDPMScheduler(weak.config.num_train_timesteps, weak.config.beta_schedule)
    out = {"n": n, "fid_toy_real": round(fid_toy(real2, real, judge), 4)}
    for suffix, unet in (("", weak), ("_ddpm", strong)):
        images = samples(DDPMPipeline(unet), n, seed)
        out["valid_shape_rate" + suffix] = round(valid_shape_rate(images, judge), 4)
        out["fid_toy" + suffix] = round(fid_toy(images, real, judge), 4)
        gen = torch.Generator().manual_seed(seed)
        loss = diffusion_loss(unet, scheduler, x0.to(unet.device), generator=gen)
        out["denoising_loss" + suffix] = round(loss.item(), 5)
    wall, cpu = _timed(64, DDPMPipeline(weak), 64, 50, torch.Generator().manual_seed(seed))
    out["seconds_per_image_ddim50"] = round(wall, 5)
    out["cpu_seconds_per_image_ddim50"] = round(cpu, 5)
    return out


@torch.no_grad()
def evaluate_ddpm_text(seed: int = 0, n: int = 256, device=None, guidance_scale: float = 3.0):
    """How well ddpm-text follows a prompt, what guidance buys, and what clipping costs.

    n prompts 'a {colour} {shape}' from the test split's scenes, one DDIM-50 image each, three
    ways: as shipped (guidance_scale, x̂_0 not clamped), without guidance (w = 1), and guided
    with x̂_0 clamped to [-1, 1] at every step (_clip_sample). For each: prompt_faithfulness
    (the judge's surest object has the asked colour and shape), valid_shape_rate and fid_toy
    against n real images of the prompts' scenes (the floor: fid_toy_real). Wall and CPU
    seconds of 64 guided images (the ≤ 15 s bar).
    """
    pipe = load_ddpm_text(device)
    judge = pretrained("judge")
    c = pipe.unet.config
    real, pairs = real_images(n, seed, c.sample_size)
    real2, _ = real_images(n, seed + 100_000, c.sample_size)
    prompts = [f"a {col} {shape}" for col, shape in pairs]
    shipped = pipe.scheduler
    clipped = DDIMScheduler(c.num_train_timesteps, c.beta_schedule, clip_sample=True)
    out = {"n": n, "guidance_scale": guidance_scale}
    for key, w, scheduler in (
        ("", guidance_scale, shipped),
        ("_no_guidance", 1.0, shipped),
        ("_clip_sample", guidance_scale, clipped),
    ):
        pipe.scheduler = scheduler
        images = _text_samples(pipe, prompts, seed + 1, w)
        out["prompt_faithfulness" + key] = round(prompt_faithfulness(images, pairs, judge), 4)
        out["valid_shape_rate" + key] = round(valid_shape_rate(images, judge), 4)
        out["fid_toy" + key] = round(fid_toy(images, real, judge), 4)
    pipe.scheduler = shipped
    out["fid_toy_real"] = round(fid_toy(real2, real, judge), 4)
    gen = torch.Generator().manual_seed(seed)
    wall, cpu = _timed(1, pipe, (prompts * 64)[:64], num_inference_steps=50,
                       guidance_scale=guidance_scale, generator=gen)  # fmt: skip
    out["seconds_64_images_ddim50_cfg"] = round(wall, 3)
    out["cpu_seconds_64_images_ddim50_cfg"] = round(cpu, 3)
    return out
