"""A small Diffusion Transformer (DiT): a ViT that predicts the noise ε of a diffusion model.

Peebles & Xie (2023), "Scalable Diffusion Models with Transformers". Where a U-Net mixes
neighbouring pixels with convolutions, a DiT cuts its (latent) input into patches, lets every
patch attend to every other, and maps each token back to a patch of the prediction::

    x_t (B, C, H, W) --patchify + E + E_pos--> tokens (B, N, D)          N = (H/p)·(W/p)
    c = e(t) + e(condition)                                              (B, D)
    N × DiT block:  adaLN-Zero, modulated by c                            (B, N, D)
    final layer:    adaLN, Linear D -> p·p·C                              (B, N, p·p·C)
    unpatchify                                                          -> ε̂ (B, C, H, W)

The time step and the condition never enter as tokens. They set, for every block, a shift β,
a scale γ and a gate α per channel (adaptive layer norm):

    adaLN(h, c)     = LN(h) · (1 + γ(c)) + β(c)         (LN without its own affine weights)
    h ← h + α₁(c) · Attention(adaLN₁(h, c))
    h ← h + α₂(c) · MLP(adaLN₂(h, c))

"-Zero": the linear map c -> (β, γ, α) starts at zero, so every block starts as the identity
(α = 0) and the final layer starts by predicting ε̂ = 0. The paper found this the best of its
conditioning designs (better than in-context tokens or cross-attention) at the lowest cost.

Names follow diffusers' ``DiTTransformer2DModel``: ``sample_size``, ``patch_size``,
``in_channels``, ``num_layers``, ``num_attention_heads``, ``class_labels``. Two differences:
``forward`` returns the tensor ε̂ (no output dataclass, no learned variance), and besides class
labels it takes a ``condition`` vector (for example a CLIP text embedding), projected by a
small MLP and added to the time embedding as class embeddings are.

For classifier-free guidance a model is trained with the condition dropped for some examples
(``drop_condition``); a dropped condition is replaced by a learned "null" embedding, which is
also what ``condition=None`` / ``class_labels=None`` give at sampling time.

Shape letters: B batch, C channels, H×W input grid, p patch size, N tokens, D hidden size.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
import torch.nn as nn

from minimodels.checks import check_device, check_finite
from minimodels.layers import (
    MultiHeadAttention,
    PatchEmbedding,
    TimestepEmbedding,
    timestep_embedding,
    unpatchify,
)

__all__ = ["DiTConfig", "DiTTransformer2DModel", "DiTBlock", "modulate"]


@dataclass
class DiTConfig:
    sample_size: int = 6  # H = W of the input grid (the 6×6 latents of minimodels.latent)
    in_channels: int = 16  # the latent channels of minimodels.latent
    out_channels: int = 0  # 0: the same as in_channels (ε̂ has the input's shape)
    patch_size: int = 2  # 6×6 latents -> 3×3 = 9 tokens, one per ShapeWorld grid cell
    hidden_size: int = 96  # D
    num_layers: int = 4
    num_attention_heads: int = 4
    mlp_ratio: float = 2.0
    num_classes: int = 0  # class-label conditioning (0: none); label num_classes = "no class"
    cond_dim: int = 0  # width of a condition vector (0: none), e.g. 64 for a CLIP embedding
    frequency_embedding_size: int = 64  # width of the sinusoidal features of t (256 in DiT)

    def __post_init__(self):
        for name in (
            "sample_size", "in_channels", "patch_size", "hidden_size", "num_layers",
            "num_attention_heads", "frequency_embedding_size",
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        for name in ("out_channels", "num_classes", "cond_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int (0 = off); got {value!r}")
        if self.sample_size % self.patch_size:
            raise ValueError(
                f"sample_size must be divisible by patch_size; got sample_size="
                f"{self.sample_size}, patch_size={self.patch_size}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size must be divisible by num_attention_heads; got "
                f"{self.hidden_size} and {self.num_attention_heads}"
            )
        if not isinstance(self.mlp_ratio, (int, float)) or self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be a positive number; got {self.mlp_ratio!r}")

    @property
    def num_patches(self) -> int:
        return (self.sample_size // self.patch_size) ** 2

    @property
    def output_channels(self) -> int:
        return self.out_channels or self.in_channels


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN's affine step on normalised tokens: x · (1 + γ) + β.

    x (B, N, D); shift β and scale γ (B, D), one value per example and channel, shared by all
    N tokens. With γ = β = 0 it returns x unchanged.
    """
    return x * (1 + scale[:, None, :]) + shift[:, None, :]  # (B, N, D)


class DiTBlock(nn.Module):
    """A transformer block whose two layer norms are modulated by c (adaLN-Zero)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 2.0):
        super().__init__()
        D = hidden_size
        # LN without learned weights: the affine part comes from c instead.
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-5)
        self.attn = MultiHeadAttention(D, num_heads)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-5)
        hidden = int(round(D * mlp_ratio))
        self.mlp = nn.Sequential(
            nn.Linear(D, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, D)
        )
        # c -> (β₁, γ₁, α₁, β₂, γ₂, α₂), zero at the start: the block is the identity.
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))
        nn.init.zeros_(self.adaLN_modulation[1].weight)
        nn.init.zeros_(self.adaLN_modulation[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # x (B, N, D), c (B, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))  # h+α₁·Attn
        x = x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))  # h+α₂·MLP
        return x  # (B, N, D)


class DiTTransformer2DModel(nn.Module):
    """ε-prediction network: ``model(sample, timestep, class_labels=None, condition=None)``.

    sample: float (B, C, H, W) -- x_t, the noisy (latent) image.
    timestep: int or float tensor (B,) or a scalar (used for the whole batch), in 0 … T−1.
    class_labels: long (B,) in 0 … num_classes (num_classes itself = "no class"); only for a
        model built with num_classes > 0. None = unconditional.
    condition: float (B, cond_dim), e.g. a CLIP text embedding; only with cond_dim > 0.
        None = unconditional (the learned null embedding).
    drop_condition: bool (B,), True where the condition is replaced by the null embedding
        (classifier-free guidance training). Applies to class labels and condition alike.
    Returns ε̂ of shape (B, out_channels, H, W).
    """

    config_class = DiTConfig

    def __init__(self, config: DiTConfig | None = None):
        super().__init__()
        self.config = c = config if config is not None else DiTConfig()
        if not isinstance(c, DiTConfig):
            raise TypeError(f"config must be a DiTConfig; got {type(c).__name__}")
        D, p = c.hidden_size, c.patch_size
        # patchify + E + E_pos (learned positions; the paper uses fixed 2-D sine-cosine ones)
        self.pos_embed = PatchEmbedding(c.sample_size, p, c.in_channels, D, cls_token=False)
        self.time_embed = TimestepEmbedding(c.frequency_embedding_size, D)  # e(t) = MLP(sin…)
        if c.num_classes:
            # one extra row, index num_classes: the null class of classifier-free guidance
            self.class_embed = nn.Embedding(c.num_classes + 1, D)
            nn.init.normal_(self.class_embed.weight, std=0.02)
        if c.cond_dim:
            self.cond_embed = nn.Sequential(nn.Linear(c.cond_dim, D), nn.SiLU(), nn.Linear(D, D))
            self.null_condition = nn.Parameter(torch.zeros(D))  # e(∅) for a dropped condition
        self.blocks = nn.ModuleList(
            DiTBlock(D, c.num_attention_heads, c.mlp_ratio) for _ in range(c.num_layers)
        )
        # final layer: adaLN (shift, scale only), then one linear map per token to a patch
        self.norm_out = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.adaLN_out = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))
        self.proj_out = nn.Linear(D, p * p * c.output_channels)
        for layer in (self.adaLN_out[1], self.proj_out):  # "-Zero": ε̂ = 0 at the start
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def device(self) -> torch.device:
        return self.proj_out.weight.device

    # ---- input checks ------------------------------------------------------------------------

    def _check_sample(self, sample) -> None:
        c = self.config
        expected = f"(B, {c.in_channels}, {c.sample_size}, {c.sample_size})"
        if not isinstance(sample, torch.Tensor):
            raise TypeError(
                f"sample must be a float tensor {expected}; got {type(sample).__name__}"
            )
        if not sample.is_floating_point():
            raise TypeError(f"sample must be a float tensor {expected}; got dtype {sample.dtype}")
        if sample.ndim != 4 or tuple(sample.shape[1:]) != (c.in_channels,) + (c.sample_size,) * 2:
            raise ValueError(f"sample must have shape {expected}; got {tuple(sample.shape)}")
        if sample.shape[0] == 0:
            raise ValueError("sample is an empty batch (B = 0)")
        check_device(sample, "sample", self.device)
        check_finite(sample, "sample")
        if sample.abs().max() > 1e4:
            raise ValueError(
                "sample holds values beyond ±1e4; a diffusion sample is noise of scale ~1 "
                f"(max |sample| = {sample.abs().max().item():.3g})"
            )

    def _timesteps(self, timestep, B: int) -> torch.Tensor:
        if isinstance(timestep, numbers.Number) and not isinstance(timestep, bool):
            if not (isinstance(timestep, numbers.Real) and 0 <= timestep < 1e6):
                raise ValueError(f"timestep must be a number in [0, 1e6); got {timestep!r}")
            timestep = torch.tensor([timestep])
        if not isinstance(timestep, torch.Tensor):
            raise TypeError(
                f"timestep must be a number or a tensor of shape (B,) = ({B},); "
                f"got {type(timestep).__name__}"
            )
        if timestep.dtype == torch.bool or timestep.is_complex():
            raise TypeError(f"timestep must be int or float; got dtype {timestep.dtype}")
        check_device(timestep, "timestep", None)
        t = timestep.reshape(-1) if timestep.ndim == 0 else timestep
        if t.ndim != 1 or t.shape[0] not in (1, B):
            raise ValueError(
                f"timestep must be a scalar or have shape (B,) = ({B},); got {tuple(t.shape)}"
            )
        if not torch.isfinite(t.float()).all() or (t < 0).any():
            raise ValueError(f"timestep must be finite and >= 0; got {t.tolist()[:8]}")
        return t.to(self.device).expand(B)

    def _condition_embedding(self, B, class_labels, condition, drop_condition):
        c = self.config
        D = c.hidden_size
        emb = torch.zeros(B, D, device=self.device)
        if drop_condition is not None:
            if not isinstance(drop_condition, torch.Tensor) or drop_condition.dtype != torch.bool:
                raise TypeError("drop_condition must be a bool tensor (B,), True = drop")
            if tuple(drop_condition.shape) != (B,):
                raise ValueError(
                    f"drop_condition must have shape (B,) = ({B},); "
                    f"got {tuple(drop_condition.shape)}"
                )
            drop_condition = drop_condition.to(self.device)
        if class_labels is not None and not c.num_classes:
            raise ValueError("class_labels given, but this model has num_classes=0")
        if condition is not None and not c.cond_dim:
            raise ValueError("condition given, but this model has cond_dim=0 (no condition)")
        if c.num_classes:
            if class_labels is None:
                labels = torch.full((B,), c.num_classes, device=self.device)  # null class
            else:
                if not isinstance(class_labels, torch.Tensor) or class_labels.is_floating_point():
                    raise TypeError("class_labels must be an integer tensor (B,)")
                if tuple(class_labels.shape) != (B,):
                    raise ValueError(
                        f"class_labels must have shape (B,) = ({B},); "
                        f"got {tuple(class_labels.shape)}"
                    )
                if (class_labels < 0).any() or (class_labels > c.num_classes).any():
                    raise ValueError(
                        f"class_labels must lie in 0 … {c.num_classes} ({c.num_classes} = no "
                        f"class); got values {class_labels.min().item()} … "
                        f"{class_labels.max().item()}"
                    )
                labels = class_labels.to(self.device).long()
                if drop_condition is not None:
                    labels = labels.masked_fill(drop_condition, c.num_classes)
            emb = emb + self.class_embed(labels)  # (B, D)
        if c.cond_dim:
            null = self.null_condition.expand(B, D)
            if condition is None:
                emb = emb + null
            else:
                expected = f"(B, cond_dim) = ({B}, {c.cond_dim})"
                if not isinstance(condition, torch.Tensor) or not condition.is_floating_point():
                    raise TypeError(f"condition must be a float tensor {expected}")
                if tuple(condition.shape) != (B, c.cond_dim):
                    raise ValueError(
                        f"condition must have shape {expected}; got {tuple(condition.shape)}"
                    )
                e = self.cond_embed(condition.to(self.device, self.proj_out.weight.dtype))
                if drop_condition is not None:
                    e = torch.where(drop_condition[:, None], null, e)  # e(∅) where dropped
                emb = emb + e
        return emb

    # ---- forward -----------------------------------------------------------------------------

    def forward(
        self,
        sample: torch.Tensor,
        timestep,
        class_labels: torch.Tensor | None = None,
        condition: torch.Tensor | None = None,
        drop_condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self._check_sample(sample)
        cfg = self.config
        B = sample.shape[0]
        x = self.pos_embed(sample.to(self.device))  # patchify, E, + E_pos: (B, N, D)
        t = self._timesteps(timestep, B)  # (B,)
        # sinusoidal features as diffusers' DiT computes them ([cos, sin], frequency shift 1)
        freq = timestep_embedding(t, cfg.frequency_embedding_size, downscale_freq_shift=1)
        c = self.time_embed.mlp(freq.to(self.proj_out.weight.dtype))  # e(t): (B, D)
        c = c + self._condition_embedding(B, class_labels, condition, drop_condition)  # (B, D)
        for block in self.blocks:
            x = block(x, c)  # (B, N, D)
        shift, scale = self.adaLN_out(c).chunk(2, dim=-1)  # β, γ: (B, D) each
        x = self.proj_out(modulate(self.norm_out(x), shift, scale))  # (B, N, p·p·C_out)
        return unpatchify(x, cfg.patch_size, cfg.sample_size)  # ε̂: (B, C_out, H, W)
