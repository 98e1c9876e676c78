"""Flow matching: straight paths from noise to data, a velocity to learn, Euler steps to sample.

Lipman et al. (2023), "Flow Matching for Generative Modeling"; Liu et al. (2023), "Flow
Straight and Fast" (rectified flow); Esser et al. (2024), "Scaling Rectified Flow Transformers"
(Stable Diffusion 3: logit-normal t). The scheduler mirrors diffusers'
``FlowMatchEulerDiscreteScheduler`` (shift = 1; the tests check it step for step)::

    scheduler = FlowMatchEulerDiscreteScheduler()
    x_t = scheduler.scale_noise(x_0, timestep, noise)         # training: the straight path
    scheduler.set_timesteps(10)                                # sampling: σ = 1, ..., 0
    for t in scheduler.timesteps:                              # t = σ · 1000 (floats)
        v = model(x, t)
        x = scheduler.step(v, t, x).prev_sample

The forward process is a straight line between a clean image x_0 and pure noise ε,

    x_σ = (1 - σ) · x_0 + σ · ε,   σ ∈ [0, 1]                         (scale_noise)

whose velocity dx_σ/dσ = ε - x_0 is the same at every σ. The network learns
v_θ(x_σ, σ) ≈ E[ε - x_0 | x_σ] (flow_matching_loss), and sampling integrates the ODE
dx/dσ = v_θ from σ = 1 (noise) to σ = 0 (data) with Euler steps (step). DDPM's path
√ᾱ x_0 + √(1-ᾱ) ε bends (a quarter circle for unit-variance data); the flow's is straight,
so an Euler step along the predicted velocity goes further before it leaves the path.

The network's time input is the timestep t = σ · num_train_timesteps (in [0, 1000]), as in
diffusers. Shape letters: B batch, C channels, H, W height and width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from minimodels.checks import check_int, check_str, check_tensor

T_SAMPLING = ("uniform", "logit_normal")


def _check_like(x, like: torch.Tensor, name: str) -> None:
    """x must be a tensor of `like`'s shape (noise for a sample, a velocity for a sample)."""
    if not isinstance(x, torch.Tensor) or x.shape != like.shape:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"{name} must be a tensor of sample's shape {tuple(like.shape)}; got {got}"
        )


@dataclass
class FlowMatchEulerDiscreteSchedulerOutput:
    """What `step` returns (diffusers' has prev_sample only; x̂_0 feeds sample_loop's strips)."""

    prev_sample: torch.Tensor  # x_{σ_next} (B, C, H, W)
    pred_original_sample: torch.Tensor  # x̂_0 = x_σ - σ · v̂, the current guess of the image


class FlowMatchEulerDiscreteScheduler:
    """The straight noise-to-data path and its Euler sampler (velocity prediction, shift = 1).

    Matches ``diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps, shift=1.0)``:
    after ``set_timesteps(n)``, ``sigmas`` are n evenly spaced values from 1 down to
    1/num_train_timesteps, then a final 0, and ``timesteps = sigmas[:-1] · num_train_timesteps``.
    Unlike diffusers', `step` finds σ from the timestep it is given (the nearest of
    `timesteps`) instead of counting calls, so it holds no state between steps.
    """

    def __init__(self, num_train_timesteps: int = 1000):
        T = self.num_train_timesteps = check_int(num_train_timesteps, "num_train_timesteps", 1)
        self.sigmas = torch.arange(T, 0, -1, dtype=torch.float32) / T  # σ = 1, ..., 1/T (T,)
        self.timesteps = self.sigmas * T  # t = σ · T: T, ..., 1
        self.sigma_max, self.sigma_min = self.sigmas[0].item(), self.sigmas[-1].item()
        self.init_noise_sigma = 1.0  # x_1 = ε ~ N(0, I)
        self.num_inference_steps: int | None = None

    def __len__(self) -> int:
        return self.num_train_timesteps

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_train_timesteps={self.num_train_timesteps}, "
                f"num_inference_steps={self.num_inference_steps})")  # fmt: skip

    # ---- the forward process -----------------------------------------------------------------

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor) -> torch.Tensor:
        """x_σ = (1 - σ) · x_0 + σ · ε with σ = timestep / T, one timestep per sample (a (B,)
        tensor) or one for all (a number): the point of the straight path at σ. (B, ...)"""
        x0 = check_tensor(sample, "sample", None, "(B, ...)", floating=True)
        _check_like(noise, x0, "noise")
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)  # (B,) or (1,)
        if t.numel() not in (1, x0.shape[0]) or not bool(((t >= 0) & (t <= len(self))).all()):
            raise ValueError(f"timestep must be 1 or B={x0.shape[0]} values in [0, {len(self)}];"
                             f" got {t.tolist()[:4]}{'...' if t.numel() > 4 else ''}")  # fmt: skip
        sigma = (t / self.num_train_timesteps).to(x0.device, x0.dtype)  # σ = t / T
        sigma = sigma.reshape(-1, *([1] * (x0.ndim - 1)))  # (B, 1, 1, 1)
        return (1 - sigma) * x0 + sigma * noise  # x_σ

    # ---- the reverse process ------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        """Sample with n Euler steps: σ_0 = 1 > σ_1 > ... > σ_{n-1} = 1/T evenly spaced,
        then σ_n = 0 (the clean image); timesteps t_i = σ_i · T (floats)."""
        T = self.num_train_timesteps
        n = check_int(num_inference_steps, "num_inference_steps", 1, T)
        self.num_inference_steps = n
        t = np.linspace(self.sigma_max * T, self.sigma_min * T, n)  # float64, as diffusers
        sigmas = torch.from_numpy(t / T).to(dtype=torch.float32, device=device)  # (n,)
        self.timesteps = sigmas * T  # (n,)
        self.sigmas = torch.cat([sigmas, torch.zeros(1, device=sigmas.device)])  # (n+1,)

    def index_for_timestep(self, timestep) -> int:
        """The position i of `timestep` in `timesteps` (the nearest one)."""
        t = float(timestep)  # a number, or a tensor holding one
        return int((self.timesteps.cpu() - t).abs().argmin())

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ):
        """One Euler step of dx/dσ = v from σ_i (of `timestep`) to σ_{i+1}:

            x_{σ_{i+1}} = x_{σ_i} + (σ_{i+1} - σ_i) · v̂        (σ_{i+1} < σ_i: towards the data)
            x̂_0 = x_{σ_i} - σ_i · v̂                            (the end of the straight line)

        model_output: the predicted velocity v̂ = ε̂ - x̂_0, sample's shape. The step is
        deterministic (`generator` is accepted for sample_loop and unused). Computed in
        float32, returned in model_output's dtype as diffusers does.
        Returns FlowMatchEulerDiscreteSchedulerOutput(prev_sample, pred_original_sample), or a
        tuple (prev_sample,).
        """
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step")
        _check_like(model_output, sample, "model_output")
        i = self.index_for_timestep(timestep)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]  # σ_i, σ_{i+1}
        x = sample.to(torch.float32)
        prev_sample = x + (sigma_next - sigma) * model_output  # Euler: x + dσ · v̂
        x0 = x - sigma * model_output  # x̂_0 = x_σ - σ v̂
        prev_sample = prev_sample.to(model_output.dtype)
        if not return_dict:
            return (prev_sample,)
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample, x0.to(model_output.dtype))

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The identity (diffusers' schedulers share this hook)."""
        return sample


# ----------------------------------------------------------------------------------------------
# The objective
# ----------------------------------------------------------------------------------------------


def sample_t(
    B: int, generator: torch.Generator | None = None, t_sampling: str = "logit_normal"
) -> torch.Tensor:
    """B flow times t ∈ (0, 1) (float32, CPU). uniform: t ~ U(0, 1). logit_normal (SD3's
    default): t = sigmoid(u), u ~ N(0, 1), which trains the middle of the path, where the
    velocity is hardest to guess, more than its two ends."""
    check_str(t_sampling, "t_sampling", T_SAMPLING)
    if t_sampling == "uniform":
        return torch.rand(B, generator=generator)  # t ~ U(0, 1)
    return torch.sigmoid(torch.randn(B, generator=generator))  # t = σ(u), u ~ N(0, 1)


def flow_matching_loss(
    model: Callable,
    x0: torch.Tensor,
    generator: torch.Generator | None = None,
    t_sampling: str = "logit_normal",
    num_train_timesteps: int = 1000,
    return_target: bool = False,
    **condition,
):
    """The (conditional) flow-matching objective, rectified flow's:

        L = E_{x_0, t, ε} ‖(ε - x_0) - v_θ((1 - t) x_0 + t ε, t · T)‖²

    ``model(x_t, timestep, **condition)`` predicts the velocity; its time input is the
    timestep t · T (float, (B,)), as diffusers feeds it. t and ε are drawn on the CPU from
    `generator`, in that order. return_target=True also returns (x_t, t, target) (for tests
    and the notebook).
    """
    if not callable(model):
        raise TypeError("model must be callable as model(x_t, timestep) -> predicted velocity")
    x0 = check_tensor(x0, "x0", 4, "(B, C, H, W)", floating=True)
    T = check_int(num_train_timesteps, "num_train_timesteps", 1)
    B = x0.shape[0]
    t = sample_t(B, generator, t_sampling)  # (B,) in (0, 1)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)  # ε ~ N(0, I)
    t_ = t.to(x0.device, x0.dtype)[:, None, None, None]  # (B, 1, 1, 1)
    x_t = (1 - t_) * x0 + t_ * noise  # the straight path: x_t = (1 - t) x_0 + t ε
    target = noise - x0  # v = dx_t/dt = ε - x_0, the same at every t
    v = model(x_t, (t * T).to(x0.device))  # v_θ(x_t, t · T)  (B, C, H, W)
    v = getattr(v, "sample", v)
    loss = F.mse_loss(v.float(), target.float())  # ‖(ε - x_0) - v_θ‖²
    return (loss, (x_t, t, target)) if return_target else loss


def gaussian_mixture_velocity(
    x: torch.Tensor, means: torch.Tensor, std: float, t: float
) -> torch.Tensor:
    """The exact velocity v(x, t) = E[ε - x_0 | x_t = x] for 1-D data p_0 = an even mixture of
    N(μ_k, std²) on the straight path x_t = (1 - t) x_0 + t ε, t in (0, 1].

    From x_t = (1 - t) x_0 + t ε:  ε - x_0 = (x_t - x_0) / t, so v = (x - E[x_0 | x_t = x]) / t.
    Given the component k, (x_0, x_t) is Gaussian: x_t ~ N((1 - t) μ_k, (1 - t)² std² + t²) and
    E[x_0 | x_t, k] = μ_k + (1 - t) std² / var_k · (x - (1 - t) μ_k). What a trained network
    only approximates (as `minimodels.diffusion.gaussian_mixture_score` for the score).
    """
    mu = (1 - t) * means  # (K,): the components' centres at time t
    var = (1 - t) ** 2 * std**2 + t**2
    logp = -((x[..., None] - mu) ** 2) / (2 * var)  # (..., K), up to a constant
    w = torch.softmax(logp, dim=-1)  # posterior responsibility of each component
    x0_k = means + (1 - t) * std**2 / var * (x[..., None] - mu)  # E[x_0 | x_t, k]  (..., K)
    x0_hat = (w * x0_k).sum(-1)  # E[x_0 | x_t]
    return (x - x0_hat) / t  # v = (x - x̂_0) / t
