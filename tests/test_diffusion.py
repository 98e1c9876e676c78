"""Schedulers against diffusers, the forward process, the U-Net and the metrics."""

import math

import pytest
import torch

from minimodels.diffusion import (
    DDIMScheduler,
    DDPMScheduler,
    gaussian_mixture_score,
    reverse_sde_sample,
    sample_loop,
)

diffusers = pytest.importorskip("diffusers")

SCHEDULES = [("linear", "linear"), ("cosine", "squaredcos_cap_v2")]


def _reference_ddpm(name):
    return diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule=name, prediction_type="epsilon",
        variance_type="fixed_small", clip_sample=False,
    )  # fmt: skip


# ---- schedules and the forward process -------------------------------------------------------


@pytest.mark.parametrize("ours_name, ref_name", SCHEDULES)
def test_schedule_and_add_noise_match_diffusers(ours_name, ref_name):
    ours, ref = DDPMScheduler(1000, ours_name), _reference_ddpm(ref_name)
    torch.testing.assert_close(ours.betas, ref.betas, rtol=0, atol=1e-7)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod, rtol=0, atol=1e-7)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(8, 3, 5, 5, generator=g), torch.randn(8, 3, 5, 5, generator=g)
    t = torch.tensor([0, 1, 10, 250, 500, 750, 998, 999])
    torch.testing.assert_close(
        ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("ours_name, ref_name", SCHEDULES)
def test_ddpm_step_matches_diffusers_at_every_timestep(ours_name, ref_name):
    ours, ref = DDPMScheduler(1000, ours_name), _reference_ddpm(ref_name)
    g = torch.Generator().manual_seed(1)
    sample, eps = torch.randn(1000, 3, 4, 4, generator=g), torch.randn(1000, 3, 4, 4, generator=g)
    worst = 0.0
    for t in range(1000):
        a = ours.step(eps[t : t + 1], t, sample[t : t + 1], generator=torch.manual_seed(t))
        b = ref.step(eps[t : t + 1], t, sample[t : t + 1], generator=torch.manual_seed(t))
        worst = max(worst, (a.prev_sample - b.prev_sample).abs().max().item())
        worst = max(worst, (a.pred_original_sample - b.pred_original_sample).abs().max().item())
    assert worst < 1e-5, f"largest difference to diffusers {worst:.2e}"


@pytest.mark.parametrize("ours_name, ref_name", SCHEDULES)
def test_clipped_steps_match_diffusers_defaults(ours_name, ref_name):
    # diffusers clips x̂_0 to [-1, 1] by default; ours with clip_sample=True must agree, for
    # DDPM and DDIM, on inputs whose x̂_0 falls far outside [-1, 1]
    g = torch.Generator().manual_seed(4)
    sample, eps = 3 * torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 3, 4, 4, generator=g)
    ours = DDPMScheduler(1000, ours_name, clip_sample=True)
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=ref_name,
                                  variance_type="fixed_small")  # fmt: skip
    for i, t in enumerate([0, 3, 100, 500, 900, 999]):
        a = ours.step(eps[i : i + 1], t, sample[i : i + 1], generator=torch.manual_seed(t))
        b = ref.step(eps[i : i + 1], t, sample[i : i + 1], generator=torch.manual_seed(t))
        assert b.pred_original_sample.abs().max() <= 1
        torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample)
        torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=0, atol=1e-5)
    ours, ref = DDIMScheduler(1000, ours_name, clip_sample=True), diffusers.DDIMScheduler(
        num_train_timesteps=1000, beta_schedule=ref_name)  # fmt: skip
    ours.set_timesteps(20)
    ref.set_timesteps(20)
    for i, t in enumerate(ours.timesteps[:6].tolist()):
        a, b = ours.step(eps[i], t, sample[i]), ref.step(eps[i], t, sample[i])
        torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=0, atol=1e-5)
    assert not DDPMScheduler().clip_sample  # ours: the textbook step unless asked
    with pytest.raises(TypeError, match="clip_sample"):
        DDPMScheduler(clip_sample="yes")
    with pytest.raises(ValueError, match="clip_sample_range"):
        DDPMScheduler(clip_sample=True, clip_sample_range=-1.0)


def test_ddpm_step_adds_noise_except_at_zero():
    s = DDPMScheduler()
    x, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    a = s.step(eps, 0, x, generator=torch.manual_seed(0)).prev_sample
    b = s.step(eps, 0, x, generator=torch.manual_seed(1)).prev_sample
    torch.testing.assert_close(a, b)  # t = 0: deterministic
    a = s.step(eps, 5, x, generator=torch.manual_seed(0)).prev_sample
    b = s.step(eps, 5, x, generator=torch.manual_seed(1)).prev_sample
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("ours_name, ref_name", SCHEDULES)
@pytest.mark.parametrize("n", [50, 25, 7])
def test_ddim_matches_diffusers(ours_name, ref_name, n):
    ours = DDIMScheduler(1000, ours_name)
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule=ref_name,
                                  clip_sample=False)  # fmt: skip
    ours.set_timesteps(n)
    ref.set_timesteps(n)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()

    def eps_fn(x, t):  # any smooth function of x and t serves as a "model"
        return torch.tanh(x) * (1 + t.float()[:, None, None, None] / 1000)

    x_ours = x_ref = torch.randn(2, 3, 4, 4, generator=torch.manual_seed(3))
    for t in ours.timesteps:
        tb = torch.full((2,), int(t))
        x_ours = ours.step(eps_fn(x_ours, tb), int(t), x_ours).prev_sample
        x_ref = ref.step(eps_fn(x_ref, tb), int(t), x_ref).prev_sample
        assert (x_ours - x_ref).abs().max() < 1e-5
    # eta > 0 draws the same noise as diffusers with the same generator
    t = int(ours.timesteps[3])
    x, e = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    a = ours.step(e, t, x, eta=0.5, generator=torch.manual_seed(9)).prev_sample
    b = ref.step(e, t, x, eta=0.5, generator=torch.manual_seed(9)).prev_sample
    assert (a - b).abs().max() < 1e-5


def test_chain_and_closed_form_give_the_same_distribution():
    s = DDPMScheduler(1000, "linear")
    n = 20000
    x0 = torch.linspace(-1, 1, n)  # a spread of clean values
    g = torch.Generator().manual_seed(0)
    x = x0.clone()
    for t in range(1000):
        x = s.q_step(x, t, torch.randn(n, generator=g))
        if t in (10, 300, 999):
            closed = s.add_noise(x0, torch.randn(n, generator=g), t)
            ab = s.alphas_cumprod[t].item()
            # the residual x_t - √ᾱ_t x_0 is N(0, 1-ᾱ_t) for both
            for name, sample in (("chain", x), ("closed form", closed)):
                r = sample - math.sqrt(ab) * x0
                se_mean, se_var = math.sqrt((1 - ab) / n), (1 - ab) * math.sqrt(2 / n)
                assert abs(r.mean().item()) < 5 * se_mean, (name, t)
                assert abs(r.var().item() - (1 - ab)) < 5 * se_var, (name, t)
            assert abs(x.mean().item() - closed.mean().item()) < 10 * math.sqrt(1 / n)


def test_q_chain_is_q_step_iterated():
    s = DDPMScheduler(100)
    x0 = torch.randn(4, 3, 2, 2)
    a = s.q_chain(x0, 5, generator=torch.manual_seed(2))
    g = torch.manual_seed(2)
    b = x0
    for t in range(6):
        b = s.q_step(b, t, torch.randn(b.shape, generator=g))
    torch.testing.assert_close(a, b)


def test_scheduler_bad_inputs():
    with pytest.raises(ValueError, match="beta_schedule"):
        DDPMScheduler(beta_schedule="quadratic")
    with pytest.raises(ValueError, match="num_train_timesteps"):
        DDPMScheduler(num_train_timesteps=0)
    s = DDPMScheduler(1000)
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 999\]"):
        s.add_noise(x, x, torch.tensor([0, 1000]))
    with pytest.raises(ValueError, match="timesteps must lie"):
        s.add_noise(x, x, -1)
    with pytest.raises(TypeError, match="timesteps must be integers"):
        s.add_noise(x, x, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="same shape"):
        s.add_noise(x, torch.zeros(2, 3, 4, 5), 3)
    with pytest.raises(ValueError, match="one step per sample"):
        s.add_noise(x, x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="same shape"):
        s.step(torch.zeros(2, 3, 4, 4), 3, torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="timestep must be in"):
        s.step(x, 1000, x)
    with pytest.raises(TypeError, match="model_output must be a float"):
        s.step(x.long(), 3, x)
    for n in (0, 1001):
        with pytest.raises(ValueError, match="num_inference_steps"):
            s.set_timesteps(n)
    with pytest.raises(ValueError, match="set_timesteps"):
        DDIMScheduler().step(x, 3, x)


def test_sample_loop_and_sde_helpers():
    s = DDIMScheduler(100)
    out, strip = sample_loop(lambda x, t: torch.zeros_like(x), s, (2, 3, 4, 4), 10,
                             torch.manual_seed(0), return_intermediates=4)  # fmt: skip
    assert out.shape == (2, 3, 4, 4) and len(strip) == 5
    # ε̂ = 0 means x̂_0 = x_t / √ᾱ_t: the final sample is the initial noise rescaled
    x_T = torch.randn(2, 3, 4, 4, generator=torch.manual_seed(0))
    torch.testing.assert_close(out, x_T / s.alphas_cumprod[90].sqrt(), rtol=1e-4, atol=1e-4)
    # the reverse SDE with the exact score recovers a two-bump mixture
    means = torch.tensor([-2.0, 2.0])
    from minimodels.diffusion import vp_alpha_bar

    x = reverse_sde_sample(lambda x, t: gaussian_mixture_score(x, means, 0.3, vp_alpha_bar(t)),
                           n=4000, num_steps=300, generator=torch.manual_seed(0))  # fmt: skip
    assert abs((x > 0).float().mean().item() - 0.5) < 0.05
    assert abs(x.abs().mean().item() - 2.0) < 0.15
    assert abs(x.abs().std().item() - 0.3) < 0.1


# ---- the U-Net and the pipeline --------------------------------------------------------------


def test_unet_shapes_time_and_text_conditioning():
    from minimodels.unet import UNet2DModel, UNetConfig

    torch.manual_seed(0)
    m = UNet2DModel(UNetConfig(sample_size=8, block_out_channels=(8, 16), cross_attention_dim=12,
                               attention_head_dim=8, norm_num_groups=4))  # fmt: skip
    for p in m.parameters():  # leave the zero initialisation so every path matters
        torch.nn.init.normal_(p, std=0.2)
    x, ctx = torch.randn(3, 3, 8, 8), torch.randn(3, 5, 12)
    mask = torch.tensor([[1, 1, 1, 0, 0]] * 3).bool()
    out = m(x, torch.tensor([1, 500, 999]), ctx, mask)
    assert out.shape == x.shape
    assert (m(x, 10, ctx, mask) - m(x, 900, ctx, mask)).abs().max() > 1e-3  # t matters
    ctx2 = ctx.clone()
    ctx2[:, :3] += 1.0
    assert (m(x, 10, ctx2, mask) - m(x, 10, ctx, mask)).abs().max() > 1e-3  # text matters
    ctx3 = ctx.clone()
    ctx3[:, 3:] = 100.0  # padding tokens are ignored
    torch.testing.assert_close(m(x, 10, ctx3, mask), m(x, 10, ctx, mask))
    with pytest.raises(ValueError, match="sample must have shape"):
        m(torch.randn(2, 3, 9, 9), 1)
    with pytest.raises(ValueError, match="encoder_hidden_states must have shape"):
        m(x, 1, torch.randn(3, 5, 7))
    with pytest.raises(ValueError, match="sample_size must be divisible"):
        UNetConfig(sample_size=10, block_out_channels=(8, 16, 32))
    with pytest.raises(ValueError, match="beta_schedule"):
        UNetConfig(beta_schedule="nope")


def test_diffusion_loss_min_snr_weighting():
    from minimodels.unet import UNet2DModel, UNetConfig, diffusion_loss

    torch.manual_seed(0)
    m = UNet2DModel(UNetConfig(sample_size=8, block_out_channels=(8, 16), attention_head_dim=8,
                               norm_num_groups=4, beta_schedule="cosine"))  # fmt: skip
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.1)
    sched = DDPMScheduler(1000, "cosine")
    x0 = torch.rand(6, 3, 8, 8) * 2 - 1

    def loss(gamma):
        return diffusion_loss(m, sched, x0, generator=torch.Generator().manual_seed(3),
                              snr_gamma=gamma)  # fmt: skip

    # the same draws by hand: t, ε, then min(SNR_t, γ) / SNR_t times each example's error
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (6,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    with torch.no_grad():
        err = (m(sched.add_noise(x0, noise, t), t) - noise).pow(2).mean(dim=(1, 2, 3))
    snr = sched.alphas_cumprod[t] / (1 - sched.alphas_cumprod[t])
    weight = torch.minimum(snr, torch.tensor(2.0)) / snr
    assert weight.min() < 0.5 and weight.max() == 1.0  # the draws cover both regimes
    torch.testing.assert_close(loss(2.0), (weight * err).mean())
    torch.testing.assert_close(loss(None), err.mean())  # unweighted: the plain MSE
    torch.testing.assert_close(loss(1e9), err.mean())  # γ above every SNR: no weighting
    for bad in (0, -1.0, "5"):
        with pytest.raises(ValueError, match="snr_gamma"):
            loss(bad)


def test_autoguidance_combines_the_two_models():
    from minimodels.unet import UNet2DModel, UNetConfig, generate_unconditional

    def tiny(seed, **kw):
        torch.manual_seed(seed)
        m = UNet2DModel(UNetConfig(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4,
                                   attention_head_dim=8, **kw)).eval()  # fmt: skip
        for p in m.parameters():  # leave the zero initialisation: ε̂ = 0 would hide the mix
            torch.nn.init.normal_(p, std=0.2)
        return m

    model, weak = tiny(0), tiny(1)

    def sample(m, **kw):
        return generate_unconditional(m, 3, 4, seed=5, clip_sample=False, **kw)

    plain, weak_alone = sample(model), sample(weak)
    assert (plain - weak_alone).abs().max() > 1e-2  # two different models
    # w = 1 is the model alone; w = 0 is the guide alone; w = 2 extrapolates past the model
    torch.testing.assert_close(sample(model, guide_model=weak, guidance_scale=1.0), plain)
    torch.testing.assert_close(sample(model, guide_model=weak, guidance_scale=0.0), weak_alone)
    guided = sample(model, guide_model=weak, guidance_scale=2.0)
    assert (guided - plain).abs().max() > 1e-2
    # an interval that holds none of the 4 DDIM timesteps leaves plain sampling
    s = DDIMScheduler(1000)
    s.set_timesteps(4)
    top = int(s.timesteps.max())
    torch.testing.assert_close(
        sample(model, guide_model=weak, guidance_scale=2.0, guidance_interval=(top + 1, 1000)),
        plain,
    )
    torch.testing.assert_close(
        sample(model, guide_model=weak, guidance_scale=2.0, guidance_interval=(0, 1000)), guided
    )
    with pytest.raises(ValueError, match="needs a guide_model"):
        sample(model, guidance_scale=2.0)
    with pytest.raises(ValueError, match="guide_model must denoise the same images"):
        sample(model, guide_model=tiny(2, beta_schedule="cosine"), guidance_scale=2.0)
    with pytest.raises(TypeError, match="guide_model"):
        sample(model, guide_model=torch.nn.Linear(2, 2), guidance_scale=2.0)
    with pytest.raises(ValueError, match="lo < hi"):
        sample(model, guide_model=weak, guidance_scale=2.0, guidance_interval=(500, 500))
    with pytest.raises(ValueError, match="guidance_scale"):
        sample(model, guide_model=weak, guidance_scale=-1.0)


def test_pipeline_guidance_and_negative_prompt():
    from minimodels.unet import TextToImage, UNet2DModel, UNetConfig

    torch.manual_seed(0)
    config = UNetConfig(sample_size=8, block_out_channels=(8, 16), cross_attention_dim=64,
                        norm_num_groups=4, attention_head_dim=8)  # fmt: skip
    unet = UNet2DModel(config)
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.1)
    pipe = TextToImage(unet)
    a = pipe.generate(["a red circle"], num_inference_steps=3, seed=0)
    assert a.shape == (1, 3, 8, 8) and 0 <= a.min() and a.max() <= 1
    torch.testing.assert_close(a, pipe.generate(["a red circle"], num_inference_steps=3, seed=0))
    b = pipe.generate(["a red circle"], num_inference_steps=3, seed=0,
                      negative_prompt="a blue square")  # fmt: skip
    assert (a - b).abs().max() > 1e-4
    # guidance 0 ignores the prompt: two prompts give the same image
    u1 = pipe.generate(["a red circle"], num_inference_steps=3, seed=0, guidance_scale=0.0)
    u2 = pipe.generate(["a blue cross"], num_inference_steps=3, seed=0, guidance_scale=0.0)
    torch.testing.assert_close(u1, u2)
    with pytest.raises(ValueError, match="guidance_scale"):
        pipe.generate(["a red circle"], guidance_scale=-1)
    with pytest.raises(ValueError, match="negative_prompt"):
        pipe.generate(["a", "b"], negative_prompt=["x", "y", "z"])
    with pytest.raises(TypeError, match="prompts"):
        pipe.generate([1, 2])


def test_clip_text_features_are_what_encode_text_pools():
    import minimodels
    from minimodels.text import Tokenizer

    clip, tok = minimodels.pretrained("clip"), Tokenizer()
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


# ---- metrics ---------------------------------------------------------------------------------


def test_frechet_distance_of_gaussians():
    from minimodels.metrics import frechet_distance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 3, generator=g)
    b = torch.randn(20000, 3, generator=g) * 2 + torch.tensor([1.0, 0.0, 0.0])
    # N(0, I) vs N(μ, 4I): ‖μ‖² + Tr(I + 4I - 2·2I) = 1 + 3
    assert abs(frechet_distance(a, b) - 4.0) < 0.15
    assert frechet_distance(a, a) < 1e-6
    with pytest.raises(ValueError, match="same width"):
        frechet_distance(a, b[:, :2])


def test_judge_metrics_on_real_and_noise_images():
    from minimodels import shapeworld as sw
    from minimodels.data.shapeworld import sample_single_objects
    from minimodels.metrics import fid_toy, prompt_faithfulness, valid_shape_rate

    scenes = sample_single_objects("test", 64, seed=5, image_size=20)
    real = sw.render(scenes, 20)
    targets = [(s["objects"][0]["color"], s["objects"][0]["shape"]) for s in scenes]
    noise = torch.rand(64, 3, 20, 20, generator=torch.manual_seed(0))
    assert valid_shape_rate(real) >= 0.9
    assert valid_shape_rate(noise) < 0.1
    assert prompt_faithfulness(real, targets) >= 0.9
    wrong = [("red", "circle") if t != ("red", "circle") else ("blue", "cross") for t in targets]
    assert prompt_faithfulness(real, wrong) < 0.1
    other = sw.render(sample_single_objects("test", 64, seed=6, image_size=20), 20)
    assert fid_toy(real, other) * 10 < fid_toy(real, noise)


def test_valid_shapes_gives_the_verdict_and_the_shape_read_per_image():
    from minimodels import shapeworld as sw
    from minimodels.data.shapeworld import sample_single_objects
    from minimodels.metrics import valid_shape_rate, valid_shapes

    scenes = sample_single_objects("test", 64, seed=5, image_size=32)
    real = sw.render(scenes, 32)  # at the judge's own size it reads every shape
    noise = torch.rand(8, 3, 32, 32, generator=torch.manual_seed(0))
    ok, names = valid_shapes(real)
    assert ok.dtype == torch.bool and ok.shape == (64,) and ok.all()
    assert names == [s["objects"][0]["shape"] for s in scenes]
    ok_noise, _ = valid_shapes(noise)
    assert not ok_noise.any()
    assert valid_shape_rate(noise) == float(ok_noise.float().mean()) == 0.0
    with pytest.raises(ValueError, match="threshold"):
        valid_shapes(real, threshold=1.5)
    with pytest.raises(ValueError, match="max_objects"):
        valid_shapes(real, max_objects=0)


# ---- the GAN ---------------------------------------------------------------------------------


def test_conditional_gan_trains_and_generates():
    from minimodels.gan import PAIRS, ConditionalGAN, GANConfig, train_gan

    torch.manual_seed(0)
    gan = ConditionalGAN(GANConfig(image_size=16, channels=8))
    before = [p.detach().clone() for p in gan.generator.parameters()]
    history = train_gan(gan, steps=3, batch_size=8, progress=False)
    assert len(history["d"]) == 3 and all(math.isfinite(v) for v in history["g"])
    assert any((a - b).abs().max() > 0 for a, b in zip(before, gan.generator.parameters()))
    prompts = [f"a {c} {s}" for c, s in PAIRS[:3]]
    x = gan.generate(prompts, seed=1)
    assert x.shape == (3, 3, 16, 16) and 0 <= x.min() and x.max() <= 1
    torch.testing.assert_close(x, gan.generate(prompts, seed=1))
    assert ConditionalGAN.labels(["there is a red circle"]).tolist() == [
        PAIRS.index(("red", "circle"))
    ]
    with pytest.raises(ValueError, match="colour-shape pair"):
        ConditionalGAN.labels(["a red triangle"])  # held out: not a training class
    with pytest.raises(ValueError, match="image_size"):
        GANConfig(image_size=10)
