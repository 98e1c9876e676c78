"""The diffusion pipelines: classifier-free guidance, negative prompts, autoguidance, the prompt
cache, diffusers' schedulers in their place, and their entry-point checks. (DALL-E's pipeline:
tests/test_pipelines_dalle.py.)"""

import pytest
import torch

import minimodels
from minimodels.diffusion import DDIMScheduler, DDPMScheduler
from minimodels.dit import DiTConfig, DiTTransformer2DModel
from minimodels.latent import Autoencoder
from minimodels.pipelines import (
    DDPMPipeline,
    LatentDiffusionPipeline,
    TextToImagePipeline,
    classifier_free_guidance,
)
from minimodels.text import Tokenizer
from minimodels.unet import UNet2DModel, UNetConfig

TINY = dict(sample_size=16, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=8)


def _unet(seed: int, **kwargs) -> UNet2DModel:
    torch.manual_seed(seed)
    m = UNet2DModel(UNetConfig(**{**TINY, **kwargs})).eval()
    for p in m.parameters():  # leave the zero initialisation: ε̂ = 0 would hide the mix
        torch.nn.init.normal_(p, std=0.1)
    return m


@pytest.fixture(scope="module")
def clip():
    return minimodels.pretrained("clip")


@pytest.fixture(scope="module")
def text_pipe(clip):
    return TextToImagePipeline(_unet(0, cross_attention_dim=clip.config.text_width), clip)


def test_classifier_free_guidance_is_the_one_line():
    u, c = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(classifier_free_guidance(c, u, 0.0), u)
    torch.testing.assert_close(classifier_free_guidance(c, u, 1.0), c)
    torch.testing.assert_close(classifier_free_guidance(c, u, 3.0), u + 3 * (c - u))


# ---- text to image (pixel U-Net) ---------------------------------------------------------------


def test_text_pipeline_guidance_and_negative_prompt(text_pipe):
    def run(prompt, **kw):
        return text_pipe(prompt, num_inference_steps=3,
                         generator=torch.Generator().manual_seed(0), **kw)  # fmt: skip

    a = run(["a red circle"])
    assert a.shape == (1, 3, 16, 16) and 0 <= a.min() and a.max() <= 1
    torch.testing.assert_close(a, run(["a red circle"]))  # the generator makes it repeatable
    torch.testing.assert_close(a, text_pipe(["a red circle"], num_inference_steps=3))  # seed 0
    b = run(["a red circle"], negative_prompt="a blue square")
    assert (a - b).abs().max() > 1e-4
    # guidance 0 ignores the prompt: two prompts give the same image
    u1, u2 = run(["a red circle"], guidance_scale=0.0), run(["a blue cross"], guidance_scale=0.0)
    torch.testing.assert_close(u1, u2)
    # a negative prompt at w = 0 is followed alone: the same as that prompt at w = 1
    torch.testing.assert_close(run("a red circle", negative_prompt="a blue cross",
                                   guidance_scale=0.0),
                               run("a blue cross", guidance_scale=1.0))  # fmt: skip
    four = run(["a red circle", "a blue cross"], num_images_per_prompt=2)
    assert four.shape == (4, 3, 16, 16) and (four[0] - four[1]).abs().max() > 1e-4


def test_text_pipeline_strip_and_scheduler_swap(text_pipe):
    images, strip = text_pipe("a red circle", num_inference_steps=4, return_intermediates=2)
    assert images.shape == (1, 3, 16, 16) and len(strip) == 3
    torch.testing.assert_close(strip[-1], images)  # the last x̂_0 is the image (DDIM)
    saved = text_pipe.scheduler
    try:
        c = text_pipe.unet.config
        text_pipe.scheduler = DDIMScheduler(c.num_train_timesteps, c.beta_schedule,
                                            clip_sample=True)  # fmt: skip
        clipped = text_pipe("a red circle", num_inference_steps=4)
    finally:
        text_pipe.scheduler = saved
    assert (clipped - images).abs().max() > 1e-4  # clamping x̂_0 changes what guidance does


def test_encode_prompt_caches_and_trims_the_padding(text_pipe, clip):
    feats, mask = text_pipe.encode_prompt(["a red circle", "there is a large blue cross"])
    assert feats.shape[:2] == mask.shape and feats.shape[2] == clip.config.text_width
    assert mask.sum(1).max() == mask.shape[1]  # no all-padding column is left
    assert {"a red circle", "there is a large blue cross"} <= set(text_pipe._cache)
    alone, alone_mask = text_pipe.encode_prompt("a red circle")  # from the cache, trimmed
    n = int(alone_mask.sum())
    torch.testing.assert_close(alone[0, :n], feats[0, :n])


def test_clip_text_features_are_what_encode_text_pools(clip):
    tok = Tokenizer()
    short = tok(["a red circle", "there is a large blue cross on the left"], padding=True)
    long = tok(["a red circle", "there is a large blue cross on the left"],
               padding="max_length", max_length=20)  # fmt: skip
    with torch.no_grad():
        f = clip.encode_text_features(short)
        torch.testing.assert_close(clip.text_proj(f[:, 0]), clip.encode_text(short))
        g = clip.encode_text_features(long)
    keep = short["attention_mask"].bool()
    torch.testing.assert_close(f[keep], g[:, : f.shape[1]][keep], atol=1e-5, rtol=1e-5)
    assert f.shape == (2, short["input_ids"].shape[1], clip.config.text_width)


def test_text_pipeline_bad_inputs(text_pipe, clip):
    with pytest.raises(ValueError, match="guidance_scale"):
        text_pipe(["a red circle"], guidance_scale=-1)
    with pytest.raises(ValueError, match="negative_prompt"):
        text_pipe(["a", "b"], negative_prompt=["x", "y", "z"])
    with pytest.raises(TypeError, match="prompt"):
        text_pipe([1, 2])
    with pytest.raises(ValueError, match="num_inference_steps"):
        text_pipe("a red circle", num_inference_steps=0)
    with pytest.raises(TypeError, match="generator"):
        text_pipe("a red circle", generator=0)
    with pytest.raises(ValueError, match="cross-attends to width"):
        TextToImagePipeline(_unet(0, cross_attention_dim=12), clip)
    with pytest.raises(TypeError, match="unet must be a UNet2DModel"):
        TextToImagePipeline(torch.nn.Linear(2, 2), clip)


# ---- unconditional, with autoguidance ----------------------------------------------------------


def test_autoguidance_combines_the_two_models():
    model, weak = _unet(0), _unet(1)
    plain_scheduler = DDIMScheduler(1000, "linear")  # no clipping: the mix stays visible

    def sample(m, guide=None, **kw):
        pipe = DDPMPipeline(m, guide, scheduler=plain_scheduler)
        return pipe(3, 4, torch.Generator().manual_seed(5), **kw)

    plain, weak_alone = sample(model), sample(weak)
    assert (plain - weak_alone).abs().max() > 1e-2  # two different models
    # w = 1 is the model alone; w = 0 is the guide alone; w = 2 extrapolates past the model
    torch.testing.assert_close(sample(model, weak, guidance_scale=1.0), plain)
    torch.testing.assert_close(sample(model, weak, guidance_scale=0.0), weak_alone)
    guided = sample(model, weak, guidance_scale=2.0)
    assert (guided - plain).abs().max() > 1e-2
    # an interval that holds none of the 4 DDIM timesteps leaves plain sampling
    top = int(plain_scheduler.timesteps.max())
    torch.testing.assert_close(
        sample(model, weak, guidance_scale=2.0, guidance_interval=(top + 1, 1000)), plain
    )
    torch.testing.assert_close(
        sample(model, weak, guidance_scale=2.0, guidance_interval=(0, 1000)), guided
    )
    with pytest.raises(ValueError, match="needs a guide"):
        sample(model, guidance_scale=2.0)
    with pytest.raises(ValueError, match="guide must denoise the same images"):
        sample(model, _unet(2, beta_schedule="cosine"), guidance_scale=2.0)
    with pytest.raises(TypeError, match="guide"):
        sample(model, torch.nn.Linear(2, 2), guidance_scale=2.0)
    with pytest.raises(ValueError, match="lo < hi"):
        sample(model, weak, guidance_scale=2.0, guidance_interval=(500, 500))
    with pytest.raises(ValueError, match="guidance_scale"):
        sample(model, weak, guidance_scale=-1.0)


def test_ddpm_pipeline_clips_by_default_and_runs_ddpm_with_every_step():
    model = _unet(0)
    pipe = DDPMPipeline(model)
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.scheduler.clip_sample
    images, strip = pipe(2, 5, return_intermediates=2)
    assert images.shape == (2, 3, 16, 16) and len(strip) == 3
    pipe.scheduler = DDPMScheduler(1000, "linear", clip_sample=True)
    ancestral = pipe(2, 1000, torch.Generator().manual_seed(0))
    assert ancestral.shape == (2, 3, 16, 16) and pipe.scheduler.timesteps[-1] == 0


def test_pipelines_take_diffusers_schedulers():
    diffusers = pytest.importorskip("diffusers")
    model = _unet(0)
    ours = DDPMPipeline(model, scheduler=DDIMScheduler(1000, "linear", clip_sample=True))
    theirs = DDPMPipeline(model, scheduler=diffusers.DDIMScheduler(num_train_timesteps=1000))
    a = ours(2, 6, torch.Generator().manual_seed(1))
    b = theirs(2, 6, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


# ---- latent diffusion -------------------------------------------------------------------------


class FixedNoise(DiTTransformer2DModel):
    """A stand-in denoiser: ε̂ = 0.1·z for the null condition, 0.3·z + (mean of c) otherwise."""

    def __init__(self):
        super().__init__(DiTConfig(hidden_size=8, num_layers=1, num_attention_heads=2, cond_dim=64))

    def forward(self, z, t, condition=None, drop_condition=None):
        uncond = 0.1 * z
        if condition is None:
            return uncond
        cond = 0.3 * z + condition.mean(1)[:, None, None, None]
        if drop_condition is None:
            return cond
        return torch.where(drop_condition[:, None, None, None], uncond, cond)


@pytest.fixture(scope="module")
def latent_pipe(clip):
    torch.manual_seed(0)
    return LatentDiffusionPipeline(Autoencoder().eval(), FixedNoise(), clip,
                                   scheduler=DDIMScheduler())  # fmt: skip


def test_latent_guidance_scale_zero_one_and_negative_prompts(latent_pipe):
    def run(**kw):
        return latent_pipe(num_inference_steps=5, generator=torch.Generator().manual_seed(1), **kw)

    prompt = ["a red circle", "a blue square"]
    uncond = run(num_images_per_prompt=2)  # no prompt: the null condition for every image
    cond = run(prompt=prompt, guidance_scale=1.0)
    # w = 0: ε̂ = ε_∅, the prompt is ignored
    torch.testing.assert_close(run(prompt=prompt, guidance_scale=0.0), uncond)
    # w = 1: ε̂ = ε_c, plain conditional sampling
    assert (cond - uncond).abs().max() > 1e-3
    # a negative prompt replaces ∅: at w = 0 only the negative prompt is followed
    neg = run(prompt=prompt, negative_prompt=["a blue square", "a red circle"], guidance_scale=0.0)
    torch.testing.assert_close(neg, run(prompt=prompt[::-1], guidance_scale=1.0))


def test_latent_guidance_extrapolates_and_decodes_once(latent_pipe):
    # w = 3 extrapolates beyond the conditional prediction: ε̂ = ε_∅ + 3 (ε_c − ε_∅); one DDIM
    # step lands on x̂_0, which the pipeline decodes into [0, 1]
    prompt = ["a red circle", "a blue square"]
    images = latent_pipe(prompt, guidance_scale=3.0, num_inference_steps=1,
                         generator=torch.Generator().manual_seed(1))  # fmt: skip
    z_T = torch.randn((2, 16, 6, 6), generator=torch.Generator().manual_seed(1))
    c = latent_pipe.encode_prompt(prompt).mean(1)[:, None, None, None]
    eps = 0.1 * z_T + 3.0 * ((0.3 * z_T + c) - 0.1 * z_T)
    ab = latent_pipe.scheduler.alphas_cumprod[latent_pipe.scheduler.timesteps[0]]
    z0 = (z_T - (1 - ab).sqrt() * eps) / ab.sqrt()  # x̂_0 after the single step
    vae = latent_pipe.vae
    expected = (vae.decode(vae.unscale_latents(z0)).clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(images, expected.detach())


def test_latent_pipeline_bad_inputs(latent_pipe, clip):
    with pytest.raises(ValueError, match="one per prompt"):
        latent_pipe(prompt=["a", "b"], negative_prompt=["x", "y", "z"])
    with pytest.raises(TypeError, match="prompt must be a list of strings"):
        latent_pipe(prompt=3)
    with pytest.raises(TypeError, match="guidance_scale must be a number"):
        latent_pipe(prompt="a red circle", guidance_scale="high")
    with pytest.raises(TypeError, match="vae must be an? Autoencoder"):
        LatentDiffusionPipeline(object(), FixedNoise(), clip)
    with pytest.raises(TypeError, match="denoiser must be a DiTTransformer2DModel"):
        LatentDiffusionPipeline(Autoencoder(), torch.nn.Linear(2, 2), clip)
