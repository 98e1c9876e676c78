"""Flow matching: the scheduler step for step against diffusers, the objective's target, the
sampling loop with a velocity model, and the checks at the student-facing entry points."""

import pytest
import torch

from minimodels.diffusion import sample_loop
from minimodels.flow import (
    FlowMatchEulerDiscreteScheduler,
    flow_matching_loss,
    gaussian_mixture_velocity,
    sample_t,
)

diffusers = pytest.importorskip("diffusers")


def _reference():
    return diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


# ---- the scheduler against diffusers -----------------------------------------------------------


def test_training_sigmas_and_timesteps_match_diffusers():
    ours, ref = FlowMatchEulerDiscreteScheduler(1000), _reference()
    torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=0, atol=0)
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=0)
    assert ours.num_train_timesteps == ref.config.num_train_timesteps == len(ours) == 1000


@pytest.mark.parametrize("n", [1, 2, 5, 10, 20, 50, 999, 1000])
def test_set_timesteps_matches_diffusers(n):
    ours, ref = FlowMatchEulerDiscreteScheduler(), _reference()
    ours.set_timesteps(n)
    ref.set_timesteps(n)
    assert ours.timesteps.dtype == ref.timesteps.dtype == torch.float32
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=0, atol=1e-6)
    assert len(ours.sigmas) == n + 1 and ours.sigmas[-1] == 0 and ours.sigmas[0] == 1


def test_scale_noise_matches_diffusers():
    ours, ref = FlowMatchEulerDiscreteScheduler(), _reference()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(8, 3, 5, 5, generator=g), torch.randn(8, 3, 5, 5, generator=g)
    t = ref.timesteps[[0, 1, 10, 250, 500, 750, 998, 999]]  # training timesteps 1000 ... 1
    torch.testing.assert_close(
        ours.scale_noise(x0, t, noise), ref.scale_noise(x0, t, noise), rtol=0, atol=1e-6
    )
    # x_σ = (1 - σ) x_0 + σ ε, at the two ends: pure noise and (almost) the image
    torch.testing.assert_close(ours.scale_noise(x0, 1000.0, noise), noise)
    torch.testing.assert_close(ours.scale_noise(x0, 0, noise), x0)


@pytest.mark.parametrize("n", [1, 3, 10, 37])
def test_step_matches_diffusers_step_for_step(n):
    ours, ref = FlowMatchEulerDiscreteScheduler(), _reference()
    ours.set_timesteps(n)
    ref.set_timesteps(n)
    g = torch.Generator().manual_seed(n)
    x_ours = x_ref = torch.randn(4, 3, 6, 6, generator=g)
    for t in ref.timesteps:
        v = torch.tanh(x_ref) + 0.1 * torch.randn(x_ref.shape, generator=g)  # any "velocity"
        a, b = ours.step(v, t, x_ours), ref.step(v, t, x_ref)
        torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=0, atol=1e-6)
        x_ours, x_ref = a.prev_sample, b.prev_sample
    # the same chain from the same start: the final samples agree as well
    torch.testing.assert_close(x_ours, x_ref, rtol=0, atol=1e-6)


def test_step_is_an_euler_step_and_predicts_x0():
    s = FlowMatchEulerDiscreteScheduler()
    s.set_timesteps(4)
    x0, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = s.timesteps[0]  # σ = 1
    x = s.scale_noise(x0, t, noise)
    out = s.step(noise - x0, t, x)  # the true velocity: one step lands on the path again
    torch.testing.assert_close(out.pred_original_sample, x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.prev_sample, s.scale_noise(x0, s.timesteps[1], noise),
                               atol=1e-5, rtol=0)  # fmt: skip
    assert s.step(noise - x0, t, x, return_dict=False)[0].shape == x.shape


def test_sample_loop_runs_the_flow_scheduler_like_diffusers_own():
    """sample_loop passes the float timesteps (σ · 1000) to the model and to step."""
    seen = []

    def velocity(x, t):
        seen.append(t)
        return 0.5 * x + t[:, None, None, None] / 1000

    outs = []
    for scheduler in (FlowMatchEulerDiscreteScheduler(), _reference()):
        seen.clear()
        g = torch.Generator().manual_seed(0)
        outs.append(sample_loop(velocity, scheduler, (2, 3, 4, 4), 7, g))
        assert seen[0].dtype == torch.float32 and seen[0][0].item() == 1000.0
        assert seen[1][0].item() == pytest.approx(1000 - 999 / 6)  # not rounded to an int
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    _, strip = sample_loop(velocity, FlowMatchEulerDiscreteScheduler(), (2, 3, 4, 4), 7, g,
                           return_intermediates=2)  # fmt: skip
    assert len(strip) == 3 and strip[0].shape == (2, 3, 4, 4)


# ---- the objective -------------------------------------------------------------------------------


def test_loss_target_is_noise_minus_data_on_the_straight_path():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 4, 4, generator=g)
    seen = {}

    def model(x_t, timestep):
        seen["x_t"], seen["timestep"] = x_t, timestep
        return torch.zeros_like(x_t)

    gen = torch.Generator().manual_seed(1)
    loss, (x_t, t, target) = flow_matching_loss(model, x0, gen, "uniform", return_target=True)
    gen = torch.Generator().manual_seed(1)  # the draws, in the documented order: t, then ε
    t_ref = torch.rand(6, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    torch.testing.assert_close(t, t_ref)
    torch.testing.assert_close(target, noise - x0)  # v = ε - x_0
    torch.testing.assert_close(x_t, (1 - t_ref[:, None, None, None]) * x0
                               + t_ref[:, None, None, None] * noise)  # fmt: skip
    torch.testing.assert_close(seen["timestep"], t_ref * 1000)  # the model sees σ · 1000
    torch.testing.assert_close(loss, (noise - x0).pow(2).mean())  # v̂ = 0: ‖ε - x_0‖²
    # the scheduler's forward process is the same path
    s = FlowMatchEulerDiscreteScheduler()
    torch.testing.assert_close(s.scale_noise(x0, t_ref * 1000, noise), x_t, atol=1e-6, rtol=0)


def test_loss_is_zero_for_the_true_velocity_and_t_sampling_stays_inside():
    x0 = torch.randn(4, 3, 4, 4)
    loss = flow_matching_loss(lambda x, t: torch.zeros_like(x), x0, torch.manual_seed(0))
    assert loss > 0
    for kind in ("uniform", "logit_normal"):
        t = sample_t(10_000, torch.Generator().manual_seed(0), kind)
        assert t.min() > 0 and t.max() < 1
    # logit-normal puts more mass in the middle than uniform does
    mid = lambda t: ((t > 0.25) & (t < 0.75)).float().mean()  # noqa: E731
    g = torch.Generator().manual_seed(0)
    assert mid(sample_t(10_000, g, "logit_normal")) > mid(sample_t(10_000, g, "uniform")) + 0.05


def test_mixture_velocity_is_tweedies_posterior_mean():
    """v = (x - E[x_0 | x_t]) / t with E[(1-t) x_0 | x_t] = x + t² ∇log p_t(x) (Tweedie), the
    score taken by autograd of the mixture density p_t = Σ_k N((1-t) μ_k, (1-t)² s² + t²)."""
    means, std = torch.tensor([-2.0, 2.0]), 0.3
    x = torch.linspace(-4, 4, 41, dtype=torch.float64).requires_grad_()
    for t in (0.05, 0.3, 0.7, 1.0):
        var = (1 - t) ** 2 * std**2 + t**2
        log_p = torch.logsumexp(-((x[:, None] - (1 - t) * means) ** 2) / (2 * var), dim=1)
        (score,) = torch.autograd.grad(log_p.sum(), x)
        if t < 1:
            x0_hat = (x + t**2 * score) / (1 - t)
            v = gaussian_mixture_velocity(x.detach(), means.double(), std, t)
            torch.testing.assert_close(v, (x.detach() - x0_hat) / t, rtol=0, atol=1e-6)
    # one Euler step from t = 1 with the exact velocity lands on E[x_0] = 0 for any start
    x1 = torch.randn(5)
    v = gaussian_mixture_velocity(x1, means, std, 1.0)
    torch.testing.assert_close(x1 - v, torch.zeros(5), atol=1e-6, rtol=0)


# ---- wrong arguments at the entry points ----------------------------------------------------


def test_wrong_arguments_are_explained():
    s = FlowMatchEulerDiscreteScheduler()
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="num_inference_steps must be at most 1000"):
        s.set_timesteps(1001)
    with pytest.raises(TypeError, match="num_inference_steps must be an int"):
        s.set_timesteps(2.5)
    with pytest.raises(ValueError, match="call set_timesteps"):
        s.step(x, 1000.0, x)
    s.set_timesteps(4)
    with pytest.raises(ValueError, match="model_output must be a tensor of sample's shape"):
        s.step(x[:1], 1000.0, x)
    with pytest.raises(ValueError, match="timestep must be 1 or B=2 values in"):
        s.scale_noise(x, torch.tensor([1.0, 2.0, 3.0]), torch.randn_like(x))
    with pytest.raises(ValueError, match="timestep must be 1 or B=2 values in"):
        s.scale_noise(x, 1500, torch.randn_like(x))
    with pytest.raises(ValueError, match="noise must be a tensor of sample's shape"):
        s.scale_noise(x, 500, torch.randn(3, 3, 4, 4))
    with pytest.raises(TypeError, match="num_train_timesteps must be an int"):
        FlowMatchEulerDiscreteScheduler(1000.0)
    with pytest.raises(ValueError, match="t_sampling must be one of"):
        flow_matching_loss(lambda x, t: x, x, t_sampling="beta")
    with pytest.raises(ValueError, match=r"x0 must have 4 dimensions"):
        flow_matching_loss(lambda x, t: x, torch.randn(3, 4))
    with pytest.raises(TypeError, match="model must be callable"):
        flow_matching_loss("unet", x)
