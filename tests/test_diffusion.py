"""Schedulers against diffusers, the forward process, the objective, the sampling loop and the
SDE illustration (and, until they get a file of their own, the judge-based metrics)."""

import math

import pytest
import torch

from minimodels.diffusion import (
    DDIMScheduler,
    DDPMScheduler,
    diffusion_loss,
    gaussian_mixture_score,
    reverse_sde_sample,
    sample_loop,
    vp_alpha_bar,
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


def test_add_noise_takes_one_timestep_for_the_batch_or_one_per_sample():
    s = DDPMScheduler(1000)
    x0, noise = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    expected = s.add_noise(x0, noise, torch.tensor([7, 7, 7]))
    torch.testing.assert_close(s.add_noise(x0, noise, 7), expected, rtol=0, atol=0)
    torch.testing.assert_close(s.add_noise(x0, noise, torch.tensor(7)), expected, rtol=0, atol=0)


def test_scheduler_bad_settings_raise_clear_errors():
    # the constructor and set_timesteps are what a student calls; step and add_noise trust
    with pytest.raises(ValueError, match="beta_schedule"):
        DDPMScheduler(beta_schedule="quadratic")
    with pytest.raises(ValueError, match="num_train_timesteps"):
        DDPMScheduler(num_train_timesteps=0)
    with pytest.raises(TypeError, match="num_train_timesteps"):
        DDPMScheduler(num_train_timesteps=10.5)
    with pytest.raises(ValueError, match="beta_start"):
        DDPMScheduler(beta_start=0.05, beta_end=0.02)
    with pytest.raises(TypeError, match="clip_sample"):
        DDPMScheduler(clip_sample="yes")
    with pytest.raises(ValueError, match="clip_sample_range"):
        DDPMScheduler(clip_sample=True, clip_sample_range=-1.0)
    s = DDPMScheduler(1000)
    for n in (0, 1001):
        with pytest.raises(ValueError, match="num_inference_steps"):
            s.set_timesteps(n)
    with pytest.raises(TypeError, match="scheduler must have"):
        sample_loop(lambda x, t: x, object(), (1, 3, 4, 4), 2)
    with pytest.raises(TypeError, match="eps_fn"):
        sample_loop("model", s, (1, 3, 4, 4), 2)


def test_ddim_without_set_timesteps_steps_one_training_step_at_a_time():
    ours, stride_one = DDIMScheduler(100), DDIMScheduler(100)
    stride_one.set_timesteps(100)
    x, e = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(
        ours.step(e, 50, x).prev_sample, stride_one.step(e, 50, x).prev_sample
    )


def test_diffusion_loss_min_snr_weighting():
    torch.manual_seed(0)
    w = torch.randn(3, 3, 1, 1) * 0.3

    def model(x, t, scale=1.0):  # a stand-in ε-predictor that depends on x, t and a condition
        return (
            scale * torch.nn.functional.conv2d(x, w) * (1 + t.float()[:, None, None, None] / 1000)
        )

    sched = DDPMScheduler(1000, "cosine")
    x0 = torch.rand(6, 3, 8, 8) * 2 - 1

    def loss(gamma, **condition):
        return diffusion_loss(model, sched, x0, generator=torch.Generator().manual_seed(3),
                              snr_gamma=gamma, **condition)  # fmt: skip

    # the same draws by hand: t, ε, then min(SNR_t, γ) / SNR_t times each example's error
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (6,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    err = (model(sched.add_noise(x0, noise, t), t) - noise).pow(2).mean(dim=(1, 2, 3))
    snr = sched.alphas_cumprod[t] / (1 - sched.alphas_cumprod[t])
    weight = torch.minimum(snr, torch.tensor(2.0)) / snr
    assert weight.min() < 0.5 and weight.max() == 1.0  # the draws cover both regimes
    torch.testing.assert_close(loss(2.0), (weight * err).mean())
    torch.testing.assert_close(loss(None), err.mean())  # unweighted: the plain MSE
    torch.testing.assert_close(loss(1e9), err.mean())  # γ above every SNR: no weighting
    assert (loss(None, scale=2.0) - loss(None)).abs() > 1e-3  # the condition reaches the model
    for bad in (0, -1.0, "5"):
        with pytest.raises((TypeError, ValueError), match="snr_gamma"):
            loss(bad)


@pytest.mark.parametrize("ours_cls", [DDPMScheduler, DDIMScheduler])
def test_sample_loop_runs_diffusers_schedulers_as_ours(ours_cls):
    # any scheduler with set_timesteps / timesteps / step: diffusers' give our numbers
    ours = ours_cls(1000, "cosine", clip_sample=True)
    kwargs = {"variance_type": "fixed_small"} if ours_cls is DDPMScheduler else {}
    ref = getattr(diffusers, ours_cls.__name__)(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", **kwargs
    )

    def eps_fn(x, t):
        return torch.tanh(x) * (1 + t.float()[:, None, None, None] / 1000)

    a = sample_loop(eps_fn, ours, (2, 3, 4, 4), 10, torch.Generator().manual_seed(0))
    b = sample_loop(eps_fn, ref, (2, 3, 4, 4), 10, torch.Generator().manual_seed(0))
    assert ref.timesteps.tolist() == ours.timesteps.tolist()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


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
    x = reverse_sde_sample(lambda x, t: gaussian_mixture_score(x, means, 0.3, vp_alpha_bar(t)),
                           n=4000, num_steps=300, generator=torch.manual_seed(0))  # fmt: skip
    assert abs((x > 0).float().mean().item() - 0.5) < 0.05
    assert abs(x.abs().mean().item() - 2.0) < 0.15
    assert abs(x.abs().std().item() - 0.3) < 0.1


# ---- metrics (minimodels/metrics.py; they belong in a tests/test_metrics.py) ------------
