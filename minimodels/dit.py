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

from minimodels.checks import check_device, check_float, check_ids, check_instance, check_tensor
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
    in_channels: int = 16  # input channels (train_latent_dit sets the VAE's latent channels)
    out_channels: int = 0  # 0: the same as in_channels (ε̂ has the input's shape)
    patch_size: int = 2  # 6×6 latents -> 3×3 = 9 tokens, one per ShapeWorld grid cell
    hidden_size: int = 96  # D
    num_layers: int = 4
    num_attention_heads: int = 4
    mlp_ratio: float = 2.0
    num_classes: int = 0  # class-label conditioning (0: none); label num_classes = "no class"
    cond_dim: int = 0  # width of a condition vector (0: none), e.g. 64 for a CLIP embedding
    frequency_embedding_size: int = 64  # width of the sinusoidal features of t (256 in DiT)

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
        self.config = c = check_instance(config or DiTConfig(), DiTConfig, "config")
        D, p = c.hidden_size, c.patch_size
        if c.sample_size % p or D % c.num_attention_heads:
            raise ValueError(
                f"sample_size must be divisible by patch_size and hidden_size by "
                f"num_attention_heads; got {c.sample_size}, {p}, {D}, {c.num_attention_heads}"
            )
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

    # ---- input checks (shapes, dtypes and devices: no values are read on a GPU) -------------

    def _check_sample(self, sample) -> None:
        c = self.config
        layout = f"(B, {c.in_channels}, {c.sample_size}, {c.sample_size})"
        check_tensor(sample, "sample", 4, layout, floating=True, device=self.device)
        if tuple(sample.shape[1:]) != (c.in_channels,) + (c.sample_size,) * 2:
            raise ValueError(f"sample must have shape {layout}; got {tuple(sample.shape)}")

    def _timesteps(self, timestep, B: int) -> torch.Tensor:
        """A number, or a tensor () / (1,) / (B,) -> (B,) on the model's device."""
        if isinstance(timestep, numbers.Real) and not isinstance(timestep, bool):
            check_float(timestep, "timestep", 0, 1e6)
            timestep = torch.tensor([timestep], device=self.device)
        layout = f"(B,) = ({B},)"
        t = check_tensor(timestep, "timestep", (0, 1), layout, model_device=self.device).reshape(-1)
        if t.shape[0] not in (1, B):
            raise ValueError(
                f"timestep must be a scalar or have shape (B,) = ({B},); got {tuple(t.shape)}"
            )
        return t.to(self.device).expand(B)

    def _check_conditions(self, B, class_labels, condition, drop_condition) -> None:
        c = self.config
        if drop_condition is not None:
            if not isinstance(drop_condition, torch.Tensor) or drop_condition.dtype != torch.bool:
                raise TypeError("drop_condition must be a bool tensor (B,), True = drop")
            check_device(drop_condition, "drop_condition", None)
            if tuple(drop_condition.shape) != (B,):
                raise ValueError(
                    f"drop_condition must have shape (B,) = ({B},); got "
                    f"{tuple(drop_condition.shape)}"
                )
        if class_labels is not None:
            if not c.num_classes:
                raise ValueError("class_labels given, but this model has num_classes=0")
            check_tensor(class_labels, "class_labels", 1, f"(B,) = ({B},)", floating=False)
            if tuple(class_labels.shape) != (B,):
                raise ValueError(
                    f"class_labels must have shape (B,) = ({B},); got {tuple(class_labels.shape)}"
                )
            check_ids(class_labels[None], "class_labels", c.num_classes + 1)  # num_classes: ∅
        if condition is not None:
            if not c.cond_dim:
                raise ValueError("condition given, but this model has cond_dim=0 (no condition)")
            layout = f"(B, cond_dim) = ({B}, {c.cond_dim})"
            check_tensor(condition, "condition", 2, layout, floating=True)
            if tuple(condition.shape) != (B, c.cond_dim):
                raise ValueError(
                    f"condition must have shape {layout}; got {tuple(condition.shape)}"
                )

    def _condition_embedding(self, B, class_labels, condition, drop_condition):
        """e(class) + e(condition), with the null embeddings e(∅) where absent or dropped."""
        c = self.config
        D = c.hidden_size
        emb = torch.zeros(B, D, device=self.device)
        if drop_condition is not None:
            drop_condition = drop_condition.to(self.device)
        if c.num_classes:
            if class_labels is None:
                labels = torch.full((B,), c.num_classes, device=self.device)  # null class
            else:
                labels = class_labels.to(self.device).long()
                if drop_condition is not None:
                    labels = labels.masked_fill(drop_condition, c.num_classes)
            emb = emb + self.class_embed(labels)  # (B, D)
        if c.cond_dim:
            null = self.null_condition.expand(B, D)
            if condition is None:
                emb = emb + null
            else:
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
        t = self._timesteps(timestep, B)  # (B,)
        self._check_conditions(B, class_labels, condition, drop_condition)
        x = self.pos_embed(sample.to(self.device))  # patchify, E, + E_pos: (B, N, D)
        # sinusoidal features as diffusers' DiT computes them ([cos, sin], frequency shift 1)
        freq = timestep_embedding(t, cfg.frequency_embedding_size, downscale_freq_shift=1)
        c = self.time_embed.mlp(freq.to(self.proj_out.weight.dtype))  # e(t): (B, D)
        c = c + self._condition_embedding(B, class_labels, condition, drop_condition)  # (B, D)
        for block in self.blocks:
            x = block(x, c)  # (B, N, D)
        shift, scale = self.adaLN_out(c).chunk(2, dim=-1)  # β, γ: (B, D) each
        x = self.proj_out(modulate(self.norm_out(x), shift, scale))  # (B, N, p·p·C_out)
        return unpatchify(x, cfg.patch_size, cfg.sample_size)  # ε̂: (B, C_out, H, W)
