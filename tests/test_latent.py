"""Latent diffusion: the autoencoder, the pipeline's guidance, training, shipped weights."""

import pytest
import torch

from minimodels import shapeworld as sw
from minimodels.checkpoint import weights_path
from minimodels.dit import DiTConfig, DiTTransformer2DModel
from minimodels.latent import (
    Autoencoder,
    AutoencoderConfig,
    LatentDiffusionPipeline,
    fit_autoencoder,
    images_to_model_range,
    train_latent_dit,
)

SHIPPED = weights_path("latent").with_suffix(".safetensors").exists()


def test_shapes_and_latent_scaling_round_trip():
    vae = Autoencoder(AutoencoderConfig(scaling_factor=2.5, shift_factor=0.3))
    x = torch.rand(3, 3, 24, 24) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (3, 16, 6, 6) == (3,) + vae.latent_shape  # 16·6·6 = 576 numbers of 1728
    assert vae.decode(z).shape == x.shape
    torch.testing.assert_close(vae.unscale_latents(vae.scale_latents(z)), z)
    torch.testing.assert_close(vae.scale_latents(torch.full_like(z, 0.3)), torch.zeros_like(z))


def test_pca_fit_is_the_best_linear_code_and_whitened():
    images = images_to_model_range(sw.generate("train", 256, seed=3, image_size=24)[0])
    test = images_to_model_range(sw.generate("test", 64, seed=4, image_size=24)[0])
    errors = {}
    for k in (4, 16, 48):
        vae, history = fit_autoencoder(images, AutoencoderConfig(latent_channels=k))
        with torch.no_grad():
            z = vae.encode(images)
            errors[k] = torch.nn.functional.mse_loss(vae(test), test).item()
        assert history[0] < 0.05
        # whitened codes: each latent channel has mean 0 and variance 1 on the fitting images
        torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(k), atol=1e-4, rtol=0)
        torch.testing.assert_close(z.std((0, 2, 3)), torch.ones(k), atol=2e-2, rtol=0)
    assert errors[4] > errors[16] > errors[48]  # a longer code keeps more
    assert errors[48] < 1e-8  # 48 = the whole patch: a perfect round trip
    # the PCA code beats a random linear code of the same length fitted by least squares
    torch.manual_seed(0)
    vae, _ = fit_autoencoder(images, AutoencoderConfig(latent_channels=16))
    p = torch.nn.functional.unfold(images, 4, stride=4).transpose(1, 2).reshape(-1, 48)
    W = torch.randn(48, 16)
    coef = torch.linalg.lstsq(p @ W, p).solution
    q = torch.nn.functional.unfold(test, 4, stride=4).transpose(1, 2).reshape(-1, 48)
    assert errors[16] < ((q @ W @ coef - q) ** 2).mean().item()


class FixedNoise(torch.nn.Module):
    """A stand-in denoiser: ε̂ = a·z for the null condition, b·z + (mean of c) otherwise."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, z, t, condition=None, drop_condition=None):
        uncond = 0.1 * z
        if condition is None:
            return uncond
        cond = 0.3 * z + condition.mean(1)[:, None, None, None]
        if drop_condition is None:
            return cond
        return torch.where(drop_condition[:, None, None, None], uncond, cond)


@pytest.fixture(scope="module")
def pipeline():
    pytest.importorskip("minimodels.diffusion")
    import minimodels
    from minimodels.diffusion import DDIMScheduler

    torch.manual_seed(0)
    vae = Autoencoder().eval()
    return LatentDiffusionPipeline(
        vae, FixedNoise(), DDIMScheduler(), minimodels.pretrained("clip")
    )


def test_guidance_scale_zero_one_and_negative_prompts(pipeline):
    def run(**kw):
        return pipeline(num_inference_steps=5, generator=torch.Generator().manual_seed(1), **kw)

    prompt = ["a red circle", "a blue square"]
    uncond = run(num_images_per_prompt=2)
    cond = run(prompt=prompt, guidance_scale=1.0)
    # w = 0: ε̂ = ε_∅, the prompt is ignored
    torch.testing.assert_close(run(prompt=prompt, guidance_scale=0.0), uncond)
    # w = 1: ε̂ = ε_c, plain conditional sampling (whether or not both branches are run)
    assert (cond - uncond).abs().max() > 1e-3
    # a negative prompt replaces ∅: at w = 0 only the negative prompt is followed
    neg = run(prompt=prompt, negative_prompt=["a blue square", "a red circle"], guidance_scale=0.0)
    torch.testing.assert_close(neg, run(prompt=prompt[::-1], guidance_scale=1.0))
    # w = 3 extrapolates beyond the conditional prediction: ε̂ = ε_∅ + 3 (ε_c − ε_∅)
    z_w3 = pipeline(prompt=prompt, guidance_scale=3.0, num_inference_steps=1,
                    generator=torch.Generator().manual_seed(1), output_type="latent")  # fmt: skip
    z_T = torch.randn((2, 16, 6, 6), generator=torch.Generator().manual_seed(1))
    c = pipeline.encode_prompt(prompt).mean(1)[:, None, None, None]
    eps = 0.1 * z_T + 3.0 * ((0.3 * z_T + c) - 0.1 * z_T)
    ab = pipeline.scheduler.alphas_cumprod[pipeline.scheduler.timesteps[0]]
    torch.testing.assert_close(z_w3, (z_T - (1 - ab).sqrt() * eps) / ab.sqrt())  # x̂_0 (1 step)


def test_pipeline_bad_inputs(pipeline):
    with pytest.raises(ValueError, match="negative_prompt needs a prompt"):
        pipeline(negative_prompt="a red circle")
    with pytest.raises(ValueError, match="one per prompt"):
        pipeline(prompt=["a", "b"], negative_prompt=["x", "y", "z"])
    with pytest.raises(TypeError, match="prompt must be a string"):
        pipeline(prompt=3)
    with pytest.raises(TypeError, match="guidance_scale must be a number"):
        pipeline(prompt="a red circle", guidance_scale="high")
    with pytest.raises(ValueError, match="output_type"):
        pipeline(prompt="a red circle", output_type="pil")


def test_bad_inputs_raise_clear_errors():
    vae = Autoencoder()
    with pytest.raises(TypeError, match="images_to_model_range"):
        vae.encode(torch.zeros(1, 3, 24, 24, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"images must have shape \(B, 3, 24, 24\)"):
        vae.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="latents must have shape"):
        vae.decode(torch.zeros(1, 8, 6, 6))
    with pytest.raises(TypeError, match="uint8"):
        images_to_model_range(torch.rand(1, 3, 24, 24))
    with pytest.raises(ValueError, match="divisible by patch_size"):
        AutoencoderConfig(image_size=30)
    with pytest.raises(ValueError, match="at most patch_size"):
        AutoencoderConfig(latent_channels=64)
    with pytest.raises(TypeError, match="vae must be an Autoencoder"):
        LatentDiffusionPipeline(object(), FixedNoise(), object())


def test_latent_dit_training_lowers_the_loss():
    pytest.importorskip("minimodels.diffusion")
    import minimodels

    torch.manual_seed(0)
    vae = Autoencoder().eval()
    cfg = DiTConfig(hidden_size=32, num_layers=1, num_attention_heads=2, cond_dim=64)
    model, history = train_latent_dit(vae, minimodels.pretrained("clip"), steps=60,
                                      pool_size=256, config=cfg, progress=False)  # fmt: skip
    assert isinstance(model, DiTTransformer2DModel) and not model.training
    first, last = sum(history[:10]) / 10, sum(history[-10:]) / 10
    assert last < 0.9 * first, f"loss {first:.3f} -> {last:.3f}"


@pytest.mark.skipif(not SHIPPED, reason="no shipped latent weights")
def test_shipped_autoencoder_keeps_what_the_judge_reads():
    import minimodels
    from minimodels.latent import load_pretrained

    vae, judge = load_pretrained(), minimodels.pretrained("judge")
    images, scenes = sw.generate("heldout", 64, seed=123, image_size=24)
    with torch.no_grad():
        recon = vae(images_to_model_range(images)).clamp(-1, 1)
    read = judge.read((recon + 1) / 2)
    truth = [{(o["color"], o["shape"]) for o in s["objects"]} for s in scenes]
    got = [{(o["color"], o["shape"]) for o in r["objects"]} for r in read]
    accuracy = sum(t == g for t, g in zip(truth, got)) / len(truth)
    assert accuracy >= 0.85, f"the judge reads {accuracy:.2f} of the reconstructions right"


@pytest.mark.skipif(
    not weights_path("dit").with_suffix(".safetensors").exists(), reason="no shipped DiT"
)
def test_shipped_latent_dit_follows_the_colour_of_the_prompt_with_guidance():
    import minimodels
    from minimodels.diffusion import DDIMScheduler
    from minimodels.judge import COLOR_CLASSES
    from minimodels.latent import load_pipeline
    from minimodels.metrics import cell_confidence

    pipe, judge = load_pipeline(scheduler=DDIMScheduler()), minimodels.pretrained("judge")
    pairs = sw.TRAIN_PAIRS[::2]  # 12 colour-shape pairs, every colour
    prompts = [f"a {c} {s}" for c, s in pairs]

    def colour_agreement(w):
        images = pipe(prompts, num_inference_steps=20, guidance_scale=w,
                      generator=torch.Generator().manual_seed(5))  # fmt: skip
        conf, color, _, _ = cell_confidence(images, judge)
        best = color[torch.arange(len(conf)), conf.argmax(1)]
        return sum(COLOR_CLASSES[i] == c for i, (c, _) in zip(best.tolist(), pairs)) / len(pairs)

    unguided, guided = colour_agreement(0.0), colour_agreement(7.0)
    assert guided >= 0.6 and guided > unguided + 0.3, (unguided, guided)
