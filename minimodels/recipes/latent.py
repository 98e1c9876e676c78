"""Recipe of latent diffusion: the autoencoder (`latent`) and the text-conditioned DiT on its
latents (`dit`, shipped as a `LatentDiffusionPipeline` with the shipped CLIP).

    python -m minimodels.pretrain latent     # the VAE, minutes on one thread
    python -m minimodels.pretrain dit        # 4000 steps on the latents, minutes on one thread
    python -m minimodels.evaluate latent     # reconstruction error, what the judge still reads
    python -m minimodels.evaluate dit        # valid shapes, prompt faithfulness, seconds/image
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from minimodels import pretrained
from minimodels.checkpoint import load_model, weights_path
from minimodels.checks import check_float, check_instance, check_int
from minimodels.data.captions import mixed_captions
from minimodels.data.images import to_tensor, to_unit
from minimodels.data.shapeworld import generate, render, sample_single_objects
from minimodels.diffusion import DDIMScheduler, DDPMScheduler
from minimodels.dit import DiTConfig, DiTTransformer2DModel
from minimodels.judge import COLOR_CLASSES
from minimodels.latent import Autoencoder, AutoencoderConfig
from minimodels.metrics import cell_confidence, fid_toy, prompt_faithfulness, valid_shape_rate
from minimodels.pipelines import LatentDiffusionPipeline
from minimodels.text import Tokenizer
from minimodels.train import fit, get_device, seed_everything

# ----------------------------------------------------------------------------------------------
# 1. The autoencoder: a small VAE
# ----------------------------------------------------------------------------------------------


def autoencoder_images(n: int, seed: int, image_size: int) -> torch.Tensor:
    """n training images in [-1, 1] (n, 3, S, S): 1-3 objects, three quarters `train`, a
    quarter `heldout` (so that every colour-shape pair is seen)."""
    stream = 3_000_000 * (seed + 1)  # scene seeds apart from evaluation seeds
    k = n // 4
    held, _ = generate("heldout", k, seed=stream, image_size=image_size)
    train, _ = generate("train", n - k, seed=stream, image_size=image_size)
    return to_tensor(np.concatenate([train, held]), (-1, 1))


def vae_loss(model: Autoencoder, images: torch.Tensor, beta: float, generator=None):
    """The VAE's negative ELBO per pixel value: ‖x − decode(z)‖² (mean) + β · KL / (pixel values),
    with z = μ + σ ⊙ ε drawn from q(z | x) (the reparameterisation trick)."""
    mean, logvar = model.encode_distribution(images)
    noise = torch.randn(mean.shape, generator=generator).to(mean.device)
    z = mean + (0.5 * logvar).exp() * noise  # z ~ q(z | x), differentiable in μ and σ
    reconstruction = F.mse_loss(model.decode(z), images.to(mean.device))
    kl = model.kl_divergence(mean, logvar).mean() / images[0].numel()
    return reconstruction + beta * kl


def train_autoencoder(
    steps: int = 2000,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 2e-3,
    beta: float = 1e-3,
    n_images: int = 8192,
    config: AutoencoderConfig | None = None,
    progress: bool = True,
    device=None,
) -> tuple[Autoencoder, list[float]]:
    """Train the VAE on n_images fresh ShapeWorld images (what `pretrain latent` runs).

    Afterwards scaling_factor is set to 1 / (std of the latents μ(x) on the training images),
    so that the scaled latents z₀ have unit variance, as diffusion expects.
    """
    steps, n_images = check_int(steps, "steps", 1), check_int(n_images, "n_images", 2)
    beta = check_float(beta, "beta", 0.0)
    seed_everything(seed)
    device = get_device(device)
    model = Autoencoder(config).to(device)
    images = autoencoder_images(n_images, seed, model.config.image_size)
    gen = torch.Generator().manual_seed(seed)

    def batch(step):
        return images[torch.randint(0, len(images), (batch_size,), generator=gen)]

    history = fit(
        model, lambda m, x: vae_loss(m, x, beta, gen), batch, steps=steps, lr=lr, warmup=100,
        cosine=True, progress=progress, desc="VAE",
    )  # fmt: skip
    model.eval()
    with torch.no_grad():
        z = torch.cat([model.encode(images[s : s + 512]) for s in range(0, len(images), 512)])
    model.config.scaling_factor = round(1.0 / z.std().item(), 5)
    return model, history


def pretrain_latent(steps: int, seed: int, device=None):
    """The shipped VAE: 4 latent numbers per 4×4 patch (batches of 64, lr 2e-3, β = 1e-3)."""
    return train_autoencoder(steps=steps, seed=seed, device=device)


def load_latent(device=None) -> Autoencoder:
    """The shipped autoencoder (minimodels/weights/latent.safetensors)."""
    return load_model(Autoencoder, weights_path("latent"), device=device)


# ----------------------------------------------------------------------------------------------
# 2. The DiT on the latents
# ----------------------------------------------------------------------------------------------


def latent_training_pool(vae, clip, n: int = 8192, seed: int = 0, batch_size: int = 512):
    """Scaled latents z₀ (n, 4, 6, 6) and CLIP prompt embeddings (n, E) of fresh scenes.

    The scenes are those of the pixel-space text model (`recipes.ddpm.training_batch`): one
    large object on the `train` split, prompted half by 'a red circle', half by the caption.
    Encoding once and reusing the pool (fresh noise and t every step) is how latent diffusion
    is trained in practice: the autoencoder is frozen, so the latents never change.
    """
    check_instance(vae, Autoencoder, "vae")
    n = check_int(n, "n", 1)
    rng = np.random.default_rng([seed, 11])
    tokenizer = Tokenizer()
    size = vae.config.image_size
    latents, embeds = [], []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        scenes = sample_single_objects("train", m, 5_000_000 * (seed + 1) + start, size)
        prompts = mixed_captions(scenes, rng, 0.5)
        x = to_tensor(render(scenes, size), (-1, 1))  # (m, 3, S, S) in [-1, 1]
        with torch.no_grad():
            latents.append(vae.scale_latents(vae.encode(x)).cpu())  # z₀: (m, 4, 6, 6)
            tokens = tokenizer(prompts, padding=True)
            embeds.append(clip.encode_text(tokens, normalize=True).cpu())  # (m, E)
    return torch.cat(latents), torch.cat(embeds)


def train_latent_dit(
    vae: Autoencoder,
    clip,
    steps: int = 4000,
    batch_size: int = 64,
    seed: int = 0,
    lr: float = 1e-3,
    pool_size: int = 8192,
    p_uncond: float = 0.1,
    config: DiTConfig | None = None,
    scheduler=None,
    progress: bool = True,
    device=None,
) -> tuple[DiTTransformer2DModel, list[float]]:
    """Train a text-conditioned DiT on the autoencoder's latents (`pretrain dit` runs this).

    loss = ‖ε − ε_θ(√ᾱ_t z₀ + √(1−ᾱ_t) ε, t, c)‖², with c replaced by ∅ for a fraction
    ``p_uncond`` of the examples (classifier-free guidance training). scheduler: ours or a
    diffusers one (its add_noise); DDPMScheduler(1000, "linear") by default.
    """
    check_instance(vae, Autoencoder, "vae")
    check_float(p_uncond, "p_uncond", 0.0, 1.0, max_inclusive=False)
    seed_everything(seed)
    device = get_device(device)
    scheduler = scheduler if scheduler is not None else DDPMScheduler(1000, "linear")
    # minimodels' schedulers carry T as an attribute, diffusers' in their config
    T = getattr(scheduler, "num_train_timesteps", None) or scheduler.config.num_train_timesteps
    latents, embeds = latent_training_pool(vae, clip, pool_size, seed)
    c = vae.config
    config = config or DiTConfig(
        sample_size=c.latent_size, in_channels=c.latent_channels, cond_dim=embeds.shape[1]
    )
    model = DiTTransformer2DModel(config).to(device)
    gen = torch.Generator().manual_seed(seed)

    def batch(step):
        idx = torch.randint(0, len(latents), (batch_size,), generator=gen)
        z0, cond = latents[idx], embeds[idx]
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, T, (batch_size,), generator=gen)
        z_t = scheduler.add_noise(z0, noise, t)  # z_t = √ᾱ_t z₀ + √(1−ᾱ_t) ε
        drop = torch.rand(batch_size, generator=gen) < p_uncond
        return z_t, t, cond, drop, noise

    def loss_fn(model, b):
        z_t, t, cond, drop, noise = (v.to(device) for v in b)
        eps = model(z_t, t, condition=cond, drop_condition=drop)
        return F.mse_loss(eps, noise)  # ‖ε − ε_θ(z_t, t, c)‖²

    history = fit(
        model, loss_fn, batch, steps=steps, lr=lr, warmup=100, cosine=True,
        progress=progress, desc="latent DiT",
    )  # fmt: skip
    model.eval()
    return model, history


def pretrain_dit(steps: int, seed: int, device=None):
    """The shipped latent DiT, on the shipped autoencoder and CLIP (batches of 64, lr 1e-3)."""
    vae, clip = load_latent(device), pretrained("clip", device=device)
    return train_latent_dit(vae, clip, steps=steps, seed=seed, device=device)


def load_dit(device=None) -> LatentDiffusionPipeline:
    """The shipped latent pipeline: autoencoder + DiT + CLIP text encoder (DDPM scheduler)."""
    dit = load_model(DiTTransformer2DModel, weights_path("dit"), device=device)
    return LatentDiffusionPipeline(load_latent(device), dit, pretrained("clip", device=device))


# ----------------------------------------------------------------------------------------------
# Evaluation (python -m minimodels.evaluate latent / dit)
# ----------------------------------------------------------------------------------------------


def _objects(scenes_or_reads) -> list[set]:
    """The (colour, shape) pairs of each scene (or of each judge.read result)."""
    return [{(o["color"], o["shape"]) for o in s["objects"]} for s in scenes_or_reads]


@torch.no_grad()
def evaluate_latent(seed: int = 0, n: int = 256, device=None) -> dict:
    """How much the shipped autoencoder keeps, on n fresh `test` scenes of 1-3 objects.

    reconstruction_mse (in [-1, 1]) and psnr_db (of [0, 1] images); judge_exact: the share of
    images whose objects (colour and shape) the judge reads exactly as the scene holds them,
    for the reconstructions and (the floor of the judge itself) the originals; latent_shape,
    compression (pixels per latent number) and latent_std (std of the scaled latents z₀ on
    these images: about 1, what scaling_factor is for); seconds per image of encode + decode.
    """
    vae, judge = load_latent(device), pretrained("judge")
    images, scenes = generate("test", n, seed=seed, image_size=vae.config.image_size)
    x = to_tensor(images, (-1, 1))  # (n, 3, 24, 24) in [-1, 1]
    start = time.perf_counter()
    z = vae.encode(x)  # (n, 4, 6, 6)
    recon = vae.decode(z).clamp(-1, 1).cpu()
    seconds = (time.perf_counter() - start) / n
    mse = F.mse_loss(recon, x).item()
    truth = _objects(scenes)

    def exact(batch: torch.Tensor) -> float:  # the judge reads the scene's objects, no more
        return round(
            float(np.mean([a == b for a, b in zip(truth, _objects(judge.read(batch)))])), 4
        )

    return {
        "n": n,
        "latent_shape": list(vae.latent_shape),
        "compression": round(x[0].numel() / z[0].numel(), 2),
        "latent_std": round(vae.scale_latents(z).std().item(), 4),
        "reconstruction_mse": round(mse, 5),
        "psnr_db": round(10 * np.log10(4 / mse), 2),  # peak-to-peak 2 in [-1, 1]
        "judge_exact": exact(to_unit(recon)),
        "judge_exact_original": exact(to_unit(x)),
        "seconds_per_image_encode_decode": round(seconds, 6),
    }


def colour_faithfulness(images, targets, judge) -> float:
    """Share of images whose most confident object has the asked colour (shape ignored)."""
    conf, color, _, _ = cell_confidence(images, judge)
    best = color[torch.arange(len(conf)), conf.argmax(1)]  # colour of the surest cell
    return float(np.mean([COLOR_CLASSES[i] == c for i, (c, _) in zip(best.tolist(), targets)]))


@torch.no_grad()
def evaluate_dit(seed: int = 0, n: int = 256, device=None, guidance_scale: float = 3.0) -> dict:
    """What the shipped latent pipeline draws for n prompts 'a {colour} {shape}' (DDIM-50).

    For w = guidance_scale, 1 (no guidance), 0 (the prompt ignored) and 7 (_guidance_7, as in
    notebook 06's sweep): prompt_faithfulness (the judge's surest object has the asked colour
    and shape) and colour_faithfulness (the colour alone, an easier test); for the samples at
    guidance_scale valid_shape_rate and fid_toy against n real 24×24 images (the floor
    fid_toy_real); seconds per guided image on a batch of 64.
    """
    pipe, judge = load_dit(device), pretrained("judge")
    c = pipe.vae.config
    pipe.scheduler = DDIMScheduler(1000, "linear")  # the DiT's training schedule, 50 DDIM steps
    scenes = sample_single_objects("test", n, seed, c.image_size)
    pairs = [(s["objects"][0]["color"], s["objects"][0]["shape"]) for s in scenes]
    prompts = [f"a {col} {shape}" for col, shape in pairs]
    real = to_tensor(render(scenes, c.image_size))
    real2 = to_tensor(render(sample_single_objects("test", n, seed + 100_000, c.image_size)))
    out = {"n": n, "guidance_scale": guidance_scale}
    ways = (("", guidance_scale), ("_no_guidance", 1.0), ("_unconditional", 0.0),
            ("_guidance_7", 7.0))  # fmt: skip
    for key, w in ways:
        gen = torch.Generator().manual_seed(seed + 1)
        images = torch.cat([
            pipe(prompts[s : s + 128], num_inference_steps=50, guidance_scale=w, generator=gen)
            for s in range(0, n, 128)
        ])  # fmt: skip
        out["prompt_faithfulness" + key] = round(prompt_faithfulness(images, pairs, judge), 4)
        out["colour_faithfulness" + key] = round(colour_faithfulness(images, pairs, judge), 4)
        if w == guidance_scale:
            out["valid_shape_rate"] = round(valid_shape_rate(images, judge), 4)
            out["fid_toy"] = round(fid_toy(images, real, judge), 4)
    out["fid_toy_real"] = round(fid_toy(real2, real, judge), 4)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    pipe((prompts * 64)[:64], num_inference_steps=50, guidance_scale=guidance_scale,
         generator=gen)  # fmt: skip
    out["seconds_per_image_ddim50_cfg"] = round((time.perf_counter() - start) / 64, 5)
    return out
