"""Denoising diffusion: noise schedules, the forward process and the reverse samplers.

Ho et al. (2020), "Denoising Diffusion Probabilistic Models" (DDPM); Song et al. (2021),
"Denoising Diffusion Implicit Models" (DDIM). The names and signatures follow Hugging Face
diffusers, so that code written against these classes reads like code written against
``diffusers.DDPMScheduler`` and ``diffusers.DDIMScheduler`` (and the tests check that both give
the same numbers)::

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    x_t = scheduler.add_noise(x_0, noise, t)                  # training: the closed form
    for t in scheduler.timesteps:                             # sampling: T-1, ..., 0
        eps = model(x, t)
        x = scheduler.step(eps, t, x, generator=g).prev_sample

The forward process adds Gaussian noise step by step,

    q(x_t | x_{t-1}) = N(√(1-β_t) x_{t-1}, β_t I)                      (q_step)

and, because Gaussians compose, jumps to any t at once,

    q(x_t | x_0) = N(√ᾱ_t x_0, (1-ᾱ_t) I),   ᾱ_t = ∏_{s≤t} (1-β_s)     (add_noise)

Time steps are 0-based as in diffusers: t = 0 is the first noising step, t = T-1 the last.
Shape letters: B batch, C channels, H, W height and width.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from minimodels.checks import check_bool, check_float, check_int, check_str

SCHEDULES = ("linear", "cosine")
_ALIASES = {"squaredcos_cap_v2": "cosine"}  # diffusers' name for the cosine schedule


def _broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, ...) with as many dims as `like`."""
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


def randn_tensor(shape, generator=None, device=None, dtype=None) -> torch.Tensor:
    """ε ~ N(0, I) on the generator's device (else the CPU), moved to `device` (diffusers')."""
    on = torch.device("cpu") if generator is None else generator.device
    return torch.randn(shape, generator=generator, device=on, dtype=dtype).to(device or on)


def _timesteps(timesteps, like: torch.Tensor) -> torch.Tensor:
    """An int, or a (B,) / 0-d integer tensor -> a LongTensor on `like`'s device (1 or B)."""
    return torch.as_tensor(timesteps).reshape(-1).to(like.device, torch.long)


# ----------------------------------------------------------------------------------------------
# Variance schedules
# ----------------------------------------------------------------------------------------------


def cosine_alpha_bar(t: float, s: float = 0.008) -> float:
    """Nichol & Dhariwal's ᾱ(t) = cos²((t + s)/(1 + s) · π/2) for t in [0, 1]."""
    return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def make_betas(
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    max_beta: float = 0.999,
) -> torch.Tensor:
    """β_0 … β_{T-1} (T,) float32.

    linear: β_t evenly spaced from beta_start to beta_end (DDPM).
    cosine: β_t = min(1 - ᾱ((t+1)/T) / ᾱ(t/T), max_beta), with ᾱ from `cosine_alpha_bar`
    (improved DDPM; diffusers' "squaredcos_cap_v2"). beta_start/beta_end are then unused.
    """
    T = num_train_timesteps
    if _ALIASES.get(beta_schedule, beta_schedule) == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    abar = cosine_alpha_bar
    betas = [min(1 - abar((i + 1) / T) / abar(i / T), max_beta) for i in range(T)]  # capped
    return torch.tensor(betas, dtype=torch.float32)


@dataclass
class SchedulerOutput:
    """What `step` returns (as diffusers' DDPMSchedulerOutput)."""

    prev_sample: torch.Tensor  # x_{t-1} (B, C, H, W)
    pred_original_sample: torch.Tensor  # x̂_0, the model's current guess of the clean image


# ----------------------------------------------------------------------------------------------
# DDPM
# ----------------------------------------------------------------------------------------------


class DDPMScheduler:
    """The DDPM noise schedule, forward process and ancestral sampler (ε-prediction).

    Matches ``diffusers.DDPMScheduler(prediction_type="epsilon", variance_type="fixed_small")``
    with the same schedule ("cosine" here is diffusers' "squaredcos_cap_v2") and the same
    ``clip_sample``. diffusers clips x̂_0 to [-1, 1] by default; here clip_sample=False is the
    default, so that step() is the textbook formula; `minimodels.pipelines.DDPMPipeline` clips.
    """

    _only = {"trained_betas": None, "prediction_type": "epsilon", "timestep_spacing": "leading",
             "variance_type": "fixed_small", "thresholding": False,
             "rescale_betas_zero_snr": False}  # diffusers' options fixed here  # fmt: skip
    _keys = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "clip_sample",
             "clip_sample_range", "steps_offset")  # the ones from_config reads  # fmt: skip

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        steps_offset: int = 0,
    ):
        self.num_train_timesteps = check_int(num_train_timesteps, "num_train_timesteps", 1, 100_000)
        self.steps_offset = check_int(steps_offset, "steps_offset", 0, num_train_timesteps - 1)
        check_str(beta_schedule, "beta_schedule", SCHEDULES + tuple(_ALIASES))
        self.beta_schedule = _ALIASES.get(beta_schedule, beta_schedule)
        beta_end = check_float(beta_end, "beta_end", 0, 1, False, False)
        check_float(beta_start, "beta_start", 0, beta_end, min_inclusive=False)  # ≤ beta_end
        self.clip_sample = check_bool(clip_sample, "clip_sample")  # clamp x̂_0 to ±range
        self.clip_sample_range = check_float(clip_sample_range, "clip_sample_range", 0, 1e4, False)
        self.betas = make_betas(num_train_timesteps, beta_schedule, beta_start, beta_end)  # β_t
        self.alphas = 1.0 - self.betas  # α_t = 1 - β_t
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # ᾱ_t = ∏_{s≤t} α_s
        self.one = self.final_alpha_cumprod = torch.tensor(1.0)  # ᾱ_{-1} = 1: the clean image
        self.init_noise_sigma = 1.0  # x_T ~ N(0, I)
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(self.num_train_timesteps - 1, -1, -1)  # T-1, ..., 0

    @classmethod
    def from_config(cls, config: dict):
        """From a diffusers scheduler config (``pipe.scheduler.config``) as diffusers reads it:
        other keys ignored, missing ones at diffusers' defaults, any outside `_only` ValueError."""
        for key, only in cls._only.items():
            if (value := config.get(key, only)) is not only and (only is None or value != only):
                raise ValueError(f"{cls.__name__}: {key}={value!r:.40} unsupported (only {only!r})")
        return cls(**{"clip_sample": True, **{k: config[k] for k in cls._keys if k in config}})

    def __len__(self) -> int:
        return self.num_train_timesteps

    def __repr__(self) -> str:
        keys = ("num_train_timesteps", "beta_schedule", "num_inference_steps")
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)!r}' for k in keys)})"

    # ---- the forward process -----------------------------------------------------------------

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps
    ) -> torch.Tensor:
        """x_t = √ᾱ_t · x_0 + √(1-ᾱ_t) · ε, one t per sample (or one for all): (B, ...)."""
        x0 = original_samples
        t = _timesteps(timesteps, x0)  # (B,) or (1,)
        alpha_bar = _broadcast(self.alphas_cumprod.to(x0.device, x0.dtype)[t], x0)  # ᾱ_t
        return alpha_bar**0.5 * x0 + (1 - alpha_bar) ** 0.5 * noise  # x_t

    def q_step(self, x_prev: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """One step of the chain: x_t = √(1-β_t) · x_{t-1} + √β_t · ε (x_{-1} is x_0)."""
        beta = self.betas.to(x_prev.device, x_prev.dtype)[_timesteps(t, x_prev)]
        beta = _broadcast(beta, x_prev)  # β_t
        return (1 - beta) ** 0.5 * x_prev + beta**0.5 * noise  # q(x_t | x_{t-1})

    def q_chain(self, original_samples: torch.Tensor, t: int, generator=None) -> torch.Tensor:
        """Iterate q_step from x_0 through steps 0..t: a sample of x_t the slow way."""
        x = original_samples
        for s in range(t + 1):
            x = self.q_step(x, s, randn_tensor(x.shape, generator, x.device, x.dtype))  # ε
        return x

    # ---- the reverse process ------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        """Sample with n of the T steps: t = (n-1)·k, ..., k, 0 with k = T // n ("leading"
        spacing, as diffusers' default), each + steps_offset."""
        T = self.num_train_timesteps
        n = check_int(num_inference_steps, "num_inference_steps", 1, T)
        self.num_inference_steps = n
        timesteps = np.arange(0, n)[::-1] * (T // n) + self.steps_offset  # stride k = T // n
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.long)

    def previous_timestep(self, timestep: int) -> int:
        """The step after `timestep` in the sampling loop (-1 after the last)."""
        n = self.num_inference_steps  # None: all T steps, one by one
        return timestep - (1 if n is None else self.num_train_timesteps // n)

    def _alpha_bar_prev(self, prev_t: int) -> torch.Tensor:
        return self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ):
        """One ancestral step x_t -> x_{t-1} from the predicted noise ε_θ(x_t, t).

            x̂_0 = (x_t - √(1-ᾱ_t) ε_θ) / √ᾱ_t
            μ̃_t = √ᾱ_{t-1} β_t / (1-ᾱ_t) · x̂_0 + √α_t (1-ᾱ_{t-1}) / (1-ᾱ_t) · x_t
            x_{t-1} = μ̃_t + σ_t z,  σ_t² = β̃_t = (1-ᾱ_{t-1}) / (1-ᾱ_t) · β_t,  z ~ N(0, I)

        `timestep`: an int (or a CPU tensor holding one). No noise is added at t = 0 (z from
        `randn_tensor`). Returns SchedulerOutput(prev_sample, pred_original_sample), or a tuple.
        """
        t = int(timestep)
        alpha_bar_t = self.alphas_cumprod[t]  # ᾱ_t
        alpha_bar_prev = self._alpha_bar_prev(self.previous_timestep(t))  # ᾱ_{t-1}
        alpha_t = alpha_bar_t / alpha_bar_prev  # α_t (over a stride of steps: ᾱ_t / ᾱ_prev)
        beta_t = 1 - alpha_t  # β_t
        # x̂_0 = (x_t - √(1-ᾱ_t) ε) / √ᾱ_t
        x0 = (sample - (1 - alpha_bar_t) ** 0.5 * model_output) / alpha_bar_t**0.5
        x0 = self._clip(x0)
        # μ̃_t(x_t, x̂_0), the mean of the posterior q(x_{t-1} | x_t, x_0)
        coef_x0 = alpha_bar_prev**0.5 * beta_t / (1 - alpha_bar_t)
        coef_xt = alpha_t**0.5 * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
        prev_sample = coef_x0 * x0 + coef_xt * sample
        if t > 0:
            # β̃_t = (1-ᾱ_{t-1}) / (1-ᾱ_t) · β_t   ("fixed small" variance)
            variance = torch.clamp((1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t, min=1e-20)
            z = randn_tensor(sample.shape, generator, sample.device, sample.dtype)  # z ~ N(0, I)
            prev_sample = prev_sample + variance**0.5 * z
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def _clip(self, x0: torch.Tensor) -> torch.Tensor:
        """x̂_0 clamped to [-r, r] when clip_sample is on (images live in [-1, 1]: a prediction
        outside is certainly wrong, and clamping it keeps early, noisy steps from saturating)."""
        r = self.clip_sample_range
        return x0.clamp(-r, r) if self.clip_sample else x0

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The identity (diffusers' schedulers share this hook; DDPM does not rescale)."""
        return sample


# ----------------------------------------------------------------------------------------------
# DDIM
# ----------------------------------------------------------------------------------------------


class DDIMScheduler(DDPMScheduler):
    """DDIM: the same trained model, a non-Markovian reverse process that may skip steps.

    With eta = 0 the update is deterministic:

        x̂_0 = (x_t - √(1-ᾱ_t) ε_θ) / √ᾱ_t
        x_prev = √ᾱ_prev · x̂_0 + √(1-ᾱ_prev - σ_t²) · ε_θ + σ_t z,
        σ_t = η · √((1-ᾱ_prev)/(1-ᾱ_t)) · √(1 - ᾱ_t/ᾱ_prev)

    Matches ``diffusers.DDIMScheduler`` with the same ``clip_sample`` (leading spacing, ᾱ after
    the last step = 1: the final step returns x̂_0; set_alpha_to_one=False makes it ᾱ_0). Call
    set_timesteps(n) first; without it the steps are of stride 1 (DDIM over all T steps).
    """

    _only = {k: v for k, v in DDPMScheduler._only.items() if k != "variance_type"}
    _keys = DDPMScheduler._keys + ("set_alpha_to_one",)

    def __init__(self, *args, set_alpha_to_one: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        one = check_bool(set_alpha_to_one, "set_alpha_to_one")  # diffusers' set_alpha_to_one
        self.final_alpha_cumprod = torch.tensor(1.0) if one else self.alphas_cumprod[0]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ):
        """One DDIM step from `timestep` to the next of `timesteps` (eta in [0, 1])."""
        t = int(timestep)
        alpha_bar_t = self.alphas_cumprod[t]  # ᾱ_t
        alpha_bar_prev = self._alpha_bar_prev(self.previous_timestep(t))  # ᾱ_prev
        x0 = (sample - (1 - alpha_bar_t) ** 0.5 * model_output) / alpha_bar_t**0.5  # x̂_0
        x0 = self._clip(x0)  # the direction below keeps the model's ε, as diffusers does
        # σ_t² = η² (1-ᾱ_prev)/(1-ᾱ_t) (1 - ᾱ_t/ᾱ_prev)
        variance = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)
        std_dev_t = eta * variance**0.5
        direction = (1 - alpha_bar_prev - std_dev_t**2) ** 0.5 * model_output  # points to x_t
        prev_sample = alpha_bar_prev**0.5 * x0 + direction
        if eta > 0:  # + σ_t z, z ~ N(0, I)
            z = randn_tensor(sample.shape, generator, sample.device, sample.dtype)
            prev_sample = prev_sample + std_dev_t * z
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


# ----------------------------------------------------------------------------------------------
# The objective and the sampling loop, for any ε-predictor
# ----------------------------------------------------------------------------------------------


def diffusion_loss(
    model: Callable,
    scheduler: DDPMScheduler,
    x0: torch.Tensor,
    generator: torch.Generator | None = None,
    snr_gamma: float | None = None,
    **condition,
) -> torch.Tensor:
    """The simple DDPM objective: L = E_{x_0, t, ε} ‖ε - ε_θ(√ᾱ_t x_0 + √(1-ᾱ_t) ε, t)‖².

    ``model(x_t, t, **condition)`` predicts ε (a U-Net's condition: encoder_hidden_states and
    encoder_attention_mask). t and ε are drawn on the CPU from `generator`, in that order.
    snr_gamma=γ weights each example by min(SNR_t, γ) / SNR_t, SNR_t = ᾱ_t / (1-ᾱ_t): the
    Min-SNR weighting (Hang et al., 2023; diffusers' --snr_gamma), which stops the many
    nearly clean timesteps, where the noise is easy to find, from dominating the gradient.
    """
    if snr_gamma is not None:
        check_float(snr_gamma, "snr_gamma", 0, None, min_inclusive=False)
    B = x0.shape[0]
    t = torch.randint(0, scheduler.num_train_timesteps, (B,), generator=generator)  # t ~ U
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)  # ε ~ N(0, I)
    x_t = scheduler.add_noise(x0, noise, t)  # the closed form q(x_t | x_0)
    eps = model(x_t, t.to(x0.device), **condition)
    if snr_gamma is None:
        return F.mse_loss(eps.float(), noise)  # ‖ε - ε_θ‖²
    snr = scheduler.alphas_cumprod[t] / (1 - scheduler.alphas_cumprod[t])  # (B,)
    weight = (snr.clamp(max=snr_gamma) / snr).to(x0.device)  # min(SNR, γ) / SNR ≤ 1
    per_example = (eps.float() - noise).pow(2).mean(dim=(1, 2, 3))  # (B,)
    return (weight * per_example).mean()


@torch.no_grad()
def sample_loop(
    eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler,
    shape: tuple[int, ...],
    num_inference_steps: int | None = None,
    generator: torch.Generator | None = None,
    device=None,
    return_intermediates: int = 0,
    progress: bool = False,
):
    """Start from x_T ~ N(0, I) of `shape` and run the scheduler's reverse steps.

    eps_fn(x (B, ...), t (B,) long, or float for a flow) -> ε̂ (a flow's: v̂) of x's shape, or
    an output holding it as ``.sample`` (a diffusers UNet2DModel serves as it is).
    scheduler: anything with diffusers' ``set_timesteps`` / ``timesteps`` / ``step`` (ours or
    diffusers' own). num_inference_steps: None = the scheduler's current timesteps (all T of
    them for a fresh DDPMScheduler). return_intermediates=k > 0 also returns k+1 snapshots of
    x̂_0 evenly along the loop (a list of CPU tensors) for a denoising strip.
    """
    if not callable(eps_fn):
        raise TypeError("eps_fn must be callable as eps_fn(x, t) -> predicted noise")
    if not all(hasattr(scheduler, a) for a in ("set_timesteps", "timesteps", "step")):
        raise TypeError(f"scheduler must have set_timesteps, timesteps and step; got "
                        f"{type(scheduler).__name__}")  # fmt: skip
    if not isinstance(shape, (tuple, list)) or len(shape) < 2:
        raise TypeError(f"shape must be a tuple (B, C, H, W) of positive ints; got {shape!r}")
    shape = tuple(check_int(s, "shape", 1) for s in shape)
    if num_inference_steps is not None:
        scheduler.set_timesteps(num_inference_steps)
    device = torch.device(device) if device is not None else torch.device("cpu")
    x = randn_tensor(shape, generator, device)  # x_T ~ N(0, I)
    timesteps = scheduler.timesteps.tolist()  # read once: ints (DDPM), floats (flow: σ·T)
    keep = set(np.linspace(0, len(timesteps) - 1, return_intermediates + 1).round().astype(int))
    snapshots = []
    for i, t in enumerate(tqdm(timesteps, disable=not progress, leave=False, desc="sampling")):
        t_batch = torch.full((x.shape[0],), t, device=device)  # long for ints, float32 else
        eps = eps_fn(x, t_batch)
        eps = getattr(eps, "sample", eps).float()  # a diffusers model's output: ε̂ is .sample
        out = scheduler.step(eps, t, x, generator=generator)
        x = out.prev_sample
        if return_intermediates and i in keep:
            snapshots.append(out.pred_original_sample.cpu())
    return (x, snapshots) if return_intermediates else x


# ----------------------------------------------------------------------------------------------
# Diffusion as a stochastic differential equation (a 1-D illustration)
# ----------------------------------------------------------------------------------------------


def vp_sde_coefficients(x: torch.Tensor, t: float, beta_min: float = 0.1, beta_max: float = 20.0):
    """The variance-preserving SDE dx = f(x, t) dt + g(t) dw of Song et al. (2021), t in [0, 1].

        β(t) = β_min + t (β_max - β_min),   f(x, t) = -½ β(t) x,   g(t) = √β(t)

    (the continuous limit of DDPM's chain). Returns (drift f (like x), diffusion g (float)).
    """
    beta = beta_min + t * (beta_max - beta_min)
    return -0.5 * beta * x, math.sqrt(beta)


def vp_alpha_bar(t: float, beta_min: float = 0.1, beta_max: float = 20.0) -> float:
    """ᾱ(t) = exp(-∫₀ᵗ β(s) ds) of the VP SDE: x_t | x_0 ~ N(√ᾱ x_0, (1-ᾱ) I)."""
    return math.exp(-(beta_min * t + 0.5 * t * t * (beta_max - beta_min)))


def gaussian_mixture_score(
    x: torch.Tensor, means: torch.Tensor, std: float, alpha_bar: float
) -> torch.Tensor:
    """∇_x log p_t(x) for 1-D data p_0 = an even mixture of N(μ_k, std²) after noising to ᾱ.

    p_t is again a mixture, of N(√ᾱ μ_k, ᾱ std² + 1 - ᾱ): the exact score that a trained
    network only approximates (ε_θ = -√(1-ᾱ) · score).
    """
    mu = alpha_bar**0.5 * means  # (K,)
    var = alpha_bar * std**2 + (1 - alpha_bar)
    logp = -((x[..., None] - mu) ** 2) / (2 * var)  # (..., K), up to a constant
    w = torch.softmax(logp, dim=-1)  # posterior responsibility of each component
    return (w * (mu - x[..., None]) / var).sum(-1)  # Σ_k w_k (μ_k - x) / var


def reverse_sde_sample(
    score_fn: Callable[[torch.Tensor, float], torch.Tensor],
    n: int = 2000,
    num_steps: int = 500,
    beta_min: float = 0.1,
    beta_max: float = 20.0,
    generator: torch.Generator | None = None,
    return_path: bool = False,
):
    """Euler–Maruyama on the reverse-time SDE dx = [f(x,t) - g(t)² ∇log p_t(x)] dt + g(t) dw̄,
    from t = 1 (x ~ N(0, 1)) down to t = 0, for n 1-D particles. score_fn(x, t) -> score."""
    if not callable(score_fn):
        raise TypeError("score_fn must be callable as score_fn(x, t) -> the score ∇ log p_t(x)")
    n = check_int(n, "n", 1, 10_000_000)
    num_steps = check_int(num_steps, "num_steps", 1, 100_000)
    x = torch.randn(n, generator=generator)
    dt = 1.0 / num_steps
    path = [x.clone()]
    for i in range(num_steps, 0, -1):
        t = i * dt
        drift, g = vp_sde_coefficients(x, t, beta_min, beta_max)
        x = x - (drift - g**2 * score_fn(x, t)) * dt  # a step backwards in time
        x = x + g * math.sqrt(dt) * torch.randn(n, generator=generator)  # + g dw̄
        path.append(x.clone())
    return (x, torch.stack(path)) if return_path else x
