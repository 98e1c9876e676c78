"""The pipelines: classifier-free guidance, negative prompts, autoguidance, the prompt cache,
diffusers' schedulers in their place; DALL-E's sampling with the KV cache against a plain loop;
and their entry-point checks."""

import pytest
import tiny
import torch

import minimodels
from minimodels import shapeworld as sw
from minimodels.clip import CLIP, CLIPConfig
from minimodels.dalle import DALLEConfig, DALLEPrior
from minimodels.diffusion import DDIMScheduler, DDPMScheduler
from minimodels.dit import DiTConfig, DiTTransformer2DModel
from minimodels.dvae import DVAE, DVAEConfig
from minimodels.latent import Autoencoder
from minimodels.pipelines import (
    DALLEPipeline,
    DDPMPipeline,
    LatentDiffusionPipeline,
    TextToImagePipeline,
    classifier_free_guidance,
)
from minimodels.text import Tokenizer
from minimodels.unet import UNet2DModel, UNetConfig


def _unet(seed: int, **kwargs) -> UNet2DModel:
    torch.manual_seed(seed)
    m = UNet2DModel(UNetConfig(**{**tiny.UNET, **kwargs})).eval()
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
    z_T = torch.randn(
        (2,) + latent_pipe.vae.latent_shape, generator=torch.Generator().manual_seed(1)
    )
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


# ---- DALL-E: autoregressive sampling with the prior's KV cache ----------------------------

TINY_DVAE = DVAEConfig(codebook_size=16, code_dim=8, hidden=8)
TINY_PRIOR = DALLEConfig(codebook_size=16, grid=8, dim=32, layers=2, heads=2)


@pytest.fixture(scope="module")
def dalle():
    torch.manual_seed(0)
    return DALLEPipeline(DALLEPrior(TINY_PRIOR), DVAE(TINY_DVAE))


@pytest.fixture(scope="module")
def images():
    x, _ = sw.generate("test", 6, seed=3)
    return torch.from_numpy(x).permute(0, 3, 1, 2)


@torch.no_grad()
def codes_without_cache(prior, prompts, negatives, w, temperature, top_k, generator):
    """The sampling loop written plainly: the whole sequence through `forward` at every step."""
    c, B = prior.config, len(prompts)
    text = prior.text_tokens(prompts + (negatives or []))
    soi = torch.full((len(text), 1), Tokenizer().soi_token_id, dtype=torch.long)
    seq = torch.cat([text, soi], 1)  # (B or 2B, L + 1)
    for _ in range(c.grid**2):
        logits = prior(seq)[:, -1, c.text_vocab_size :]  # (B or 2B, K)
        if negatives:
            logits = logits[B:] + w * (logits[:B] - logits[B:])  # ℓ(∅) + w (ℓ(c) − ℓ(∅))
        logits = logits / temperature
        if top_k is not None:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)  # (B, 1)
        seq = torch.cat([seq, (nxt + c.text_vocab_size).repeat(2 if negatives else 1, 1)], 1)
    return seq[:B, c.text_length + 1 :].view(B, c.grid, c.grid) - c.text_vocab_size


@pytest.mark.parametrize(
    "negatives, w, temperature, top_k",
    [(None, 1.0, 1.0, None), (None, 1.0, 0.7, 5), (["", ""], 3.0, 1.0, None),
     (["a red circle", "a blue square"], 2.0, 0.9, 8)],
)  # fmt: skip
def test_sampling_with_the_kv_cache_equals_the_plain_loop(dalle, negatives, w, temperature, top_k):
    prompts = ["a green cross", "a yellow triangle"]
    kw = dict(guidance_scale=w, temperature=temperature, top_k=top_k)
    g = torch.Generator().manual_seed(7)
    _, got = dalle(prompts, negative_prompt=negatives, generator=g, return_codes=True, **kw)
    g = torch.Generator().manual_seed(7)
    want = codes_without_cache(dalle.prior, prompts, negatives, w, temperature, top_k, g)
    assert torch.equal(got, want)


def test_guidance_default_negative_is_the_empty_prompt(dalle):
    kw = dict(guidance_scale=2.5, return_codes=True)
    a = dalle(["a red circle"], generator=torch.Generator().manual_seed(1), **kw)[1]
    b = dalle(
        ["a red circle"], negative_prompt="", generator=torch.Generator().manual_seed(1), **kw
    )
    assert torch.equal(a, b[1])
    assert classifier_free_guidance(torch.tensor(3.0), torch.tensor(1.0), 2.5) == 6.0


def test_call_is_deterministic_grouped_by_prompt_and_decodes_its_codes(dalle):
    prompts = ["a red circle", "a cyan cross"]
    a, codes = dalle(prompts, num_images_per_prompt=3, generator=torch.Generator().manual_seed(4),
                    return_codes=True)  # fmt: skip
    assert a.shape == (6, 3, 32, 32) and codes.shape == (6, 8, 8)
    assert 0 <= a.min() and a.max() <= 1 and codes.max() < 16
    torch.testing.assert_close(dalle.dvae.decode(codes), a)
    again = dalle(prompts, num_images_per_prompt=3, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(again, a)
    seed_0 = dalle(prompts, num_images_per_prompt=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(dalle(prompts, num_images_per_prompt=3), seed_0)  # None: seed 0
    other = dalle(prompts, num_images_per_prompt=3, generator=torch.Generator().manual_seed(5))
    assert not torch.equal(other, a)
    # top_k=1 is greedy: every sample of a prompt is the same
    greedy = dalle(["a red circle"], num_images_per_prompt=3, top_k=1)
    torch.testing.assert_close(greedy[0], greedy[2])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(prompt=[]), ValueError, "empty"),
        (dict(prompt=[3]), TypeError, "strings"),
        (dict(prompt=["a"], temperature=0.0), ValueError, "temperature"),
        (dict(prompt=["a"], top_k=0), ValueError, "top_k"),
        (dict(prompt=["a"], num_images_per_prompt=0), ValueError, "num_images_per_prompt"),
        (dict(prompt=["a"], guidance_scale=-1.0), ValueError, "guidance_scale"),
        (dict(prompt=["a", "b"], negative_prompt=["x", "y", "z"]), ValueError, "negative_prompt"),
        (dict(prompt=["a"], generator=0), TypeError, "generator"),
    ],
)
def test_bad_call_arguments_raise(dalle, kwargs, error, match):
    with pytest.raises(error, match=match):
        dalle(**kwargs)


def test_pipeline_rejects_mismatched_parts():
    with pytest.raises(ValueError, match="disagree"):
        DALLEPipeline(DALLEPrior(TINY_PRIOR), DVAE(DVAEConfig(codebook_size=32, code_dim=8)))
    with pytest.raises(TypeError, match="prior"):
        DALLEPipeline(DVAE(TINY_DVAE), DVAE(TINY_DVAE))


def test_rerank_orders_by_clip_similarity(dalle, images):
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(vision_width=16, vision_layers=1, text_width=16, text_layers=1))
    order = dalle.rerank(images, "a red circle", clip)
    sims = clip.encode_image(images, True) @ clip.encode_text(Tokenizer()(["a red circle"]), True).T
    assert torch.equal(order, sims[:, 0].argsort(descending=True))
    # float images in [0, 1] rank the same as their uint8 originals; other sizes are resized
    assert torch.equal(dalle.rerank(images.float() / 255, "a red circle", clip), order)
    big = torch.nn.functional.interpolate(images.float() / 255, size=64)
    assert dalle.rerank(big, "a red circle", clip).shape == (6,)
    with pytest.raises(ValueError, match="prompt"):
        dalle.rerank(images, "", clip)
    with pytest.raises(TypeError, match="clip"):
        dalle.rerank(images, "a red circle", dalle.prior)
