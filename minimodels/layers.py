"""Shared transformer building blocks: attention, the transformer block, patch and time embeddings.

Every model in `minimodels` (CLIP, ViLBERT, DALL-E, the diffusion U-Net and DiT, LLaVA, ...) is
built from the few pieces in this file, so it is worth reading once from top to bottom:

1. `MultiHeadAttention`  -- self-attention and cross-attention, with padding and causal masks.
2. `TransformerBlock`    -- pre-norm block: attention, optional cross-attention, MLP.
3. `patchify` / `PatchEmbedding` -- a ViT's image-to-token step.
4. `timestep_embedding` / `TimestepEmbedding` -- sinusoidal features of a diffusion time step.

Shape letters used in the comments:
    B  batch size              T  number of query tokens    S  number of key/value tokens
    C  embedding width (dim)   nh number of heads           hs head size = C // nh

MASK CONVENTION (used everywhere in minimodels): a mask is a bool tensor and
**True means "this position may be attended to" (keep)**, exactly like the `attn_mask` of
`torch.nn.functional.scaled_dot_product_attention` and like a tokenizer's `attention_mask`
(1 = real token). `torch.nn.MultiheadAttention` uses the OPPOSITE meaning for its bool masks
(True = "mask this out"); convert with `~mask` when moving between the two.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "MultiHeadAttention",
    "TransformerBlock",
    "patchify",
    "unpatchify",
    "PatchEmbedding",
    "timestep_embedding",
    "TimestepEmbedding",
]


# ----------------------------------------------------------------------------------------------
# 1. Multi-head attention
# ----------------------------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention, usable as self- or cross-attention.

        Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V,   with Q = x W_q,  K = c W_k,  V = c W_v

    * Self-attention: ``attn(x)`` -- queries, keys and values all come from ``x``.
    * Cross-attention: ``attn(x, context=c)`` -- queries come from ``x`` (B, T, dim), keys and
      values from ``c`` (B, S, context_dim); S and context_dim may differ from T and dim
      (e.g. caption words attending to image patches).

    Args:
        dim: width of ``x`` and of the output.
        num_heads: number of heads; ``dim`` must be divisible by it (head size = dim // num_heads).
        context_dim: width of ``context`` for cross-attention (default: ``dim``).
        dropout: dropout on the attention weights and on the output (only in ``train()`` mode).
        bias: whether the four projections have a bias.

    Masks -- READ THIS: every mask is a **bool** tensor where **True = "may be attended to"**
    (keep), the same as ``F.scaled_dot_product_attention`` and a tokenizer's attention_mask.

        * ``key_padding_mask`` (B, S): False at padding keys.
        * ``attn_mask`` (T, S) or (B, T, S): False where query t must not look at key s.
        * ``is_causal=True``: query t sees keys 0..t only (lower-triangular, top-left aligned).

      All given masks are combined with AND. ``torch.nn.MultiheadAttention`` uses the
      OPPOSITE convention for its bool ``key_padding_mask``/``attn_mask`` (True = masked out)::

          ids_mask = torch.tensor([[1, 1, 1, 0]]).bool()       # last token is padding
          ours(x, key_padding_mask=ids_mask)                   # True = keep
          theirs(x, x, x, key_padding_mask=~ids_mask)          # True = ignore

      A query whose every key is masked out attends to nothing: its weights are all 0 and its
      output is ``out_proj`` applied to a zero vector (i.e. the output bias) -- never NaN.

    Returns ``out`` (B, T, dim), or ``(out, weights)`` with weights (B, num_heads, T, S) when
    ``return_attention=True`` (weights are before dropout, for plotting).

    KV cache (self-attention while generating): pass ``kv_cache=[]`` with the first tokens,
    then the same list with each next token(s). The list keeps ``[K, V]`` (B, nh, P, hs) of
    the P positions seen so far; new queries attend to those keys and to the new ones, so a
    step costs one token's work instead of re-running the whole prefix. With ``is_causal``
    the new token t sits at position P + t and sees keys 0..P + t.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        context_dim: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
    ):
        super().__init__()
        assert dim % num_heads == 0, f"dim={dim} must be divisible by num_heads={num_heads}"
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.context_dim = dim if context_dim is None else context_dim
        self.dropout = float(dropout)

        self.q_proj = nn.Linear(dim, dim, bias=bias)  # W_q
        self.k_proj = nn.Linear(self.context_dim, dim, bias=bias)  # W_k
        self.v_proj = nn.Linear(self.context_dim, dim, bias=bias)  # W_v
        self.out_proj = nn.Linear(dim, dim, bias=bias)  # W_o: mixes the heads back together
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, context_dim={self.context_dim}"

    def _keep_mask(self, B, T, S, device, key_padding_mask, attn_mask, is_causal, offset=0):
        """AND of all masks as one bool tensor broadcastable to (B, nh, T, S), or None."""
        keep = None
        if key_padding_mask is not None:
            keep = key_padding_mask.to(device)[:, None, None, :]  # (B, 1, 1, S)
        if attn_mask is not None:
            m = attn_mask.to(device)
            m = m[None, None] if m.ndim == 2 else m[:, None]  # (1 or B, 1, T, S)
            keep = m if keep is None else keep & m
        if is_causal:  # key s ≤ query t; the queries start at position `offset` (a KV cache)
            causal = torch.ones(T, S, dtype=torch.bool, device=device).tril(offset)
            causal = causal[None, None]  # (1, 1, T, S)
            keep = causal if keep is None else keep & causal
        return keep

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        return_attention: bool = False,
        kv_cache: list | None = None,
    ):
        if context is None:
            context = x  # self-attention
        B, T, C = x.shape
        S = context.shape[1]
        nh, hs = self.num_heads, self.head_dim

        # Project, then split the width C into nh heads of size hs.
        q = self.q_proj(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(context).view(B, S, nh, hs).transpose(1, 2)  # (B, nh, S, hs)
        v = self.v_proj(context).view(B, S, nh, hs).transpose(1, 2)  # (B, nh, S, hs)
        P = 0  # positions already in the KV cache
        if kv_cache is not None:  # keys and values of the P earlier positions, then these
            if kv_cache:
                P = kv_cache[0].shape[2]
                k, v = torch.cat([kv_cache[0], k], 2), torch.cat([kv_cache[1], v], 2)
            kv_cache[:] = [k, v]  # (B, nh, P + T, hs)
            S = P + T

        only_causal = is_causal and key_padding_mask is None and attn_mask is None and P == 0
        keep = self._keep_mask(B, T, S, x.device, key_padding_mask, attn_mask, is_causal, P)
        row_ok = None
        if keep is not None and not only_causal:
            # A query row with no key left would be softmax over all -inf = NaN. Let such rows
            # attend everywhere (harmless), then zero them afterwards with `row_ok`.
            row_ok = keep.any(dim=-1, keepdim=True)  # (·, 1, T, 1)
            keep = keep | ~row_ok

        dropout_p = self.dropout if self.training else 0.0
        if not return_attention:
            # Fast path: PyTorch's fused kernel computes the same softmax(QKᵀ/√d_k) V.
            if only_causal:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout_p)
            weights = None
        else:
            # Readable path, which also gives us the weights to plot.
            scores = q @ k.transpose(-2, -1) / math.sqrt(hs)  # QKᵀ/√d_k: (B, nh, T, S)
            if keep is not None:
                scores = scores.masked_fill(~keep, float("-inf"))  # masked keys get weight 0
            weights = scores.softmax(dim=-1)  # each row sums to 1 over the keys
            if row_ok is not None:
                weights = weights * row_ok  # rows with nothing to attend to: all zeros
            y = self.attn_dropout(weights) @ v  # (B, nh, T, S) @ (B, nh, S, hs) -> (B, nh, T, hs)
        if row_ok is not None:
            y = y * row_ok  # (B, nh, T, hs): zero output for fully masked query rows

        y = y.transpose(1, 2).reshape(B, T, C)  # concatenate the heads: (B, T, C)
        out = self.resid_dropout(self.out_proj(y))  # (B, T, C)
        return (out, weights) if return_attention else out


# ----------------------------------------------------------------------------------------------
# 2. Transformer block
# ----------------------------------------------------------------------------------------------


class QuickGELU(nn.Module):
    """QuickGELU(h) = h σ(1.702 h), OpenAI CLIP's sigmoid approximation of GELU."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * torch.sigmoid(1.702 * h)


# The MLP's non-linearity in a TransformerBlock, by name (Φ: the standard normal CDF):
#   "gelu":       GELU(h) = h Φ(h)                                     (exact, erf)
#   "gelu_tanh":  GELU(h) ≈ ½ h (1 + tanh(√(2/π) (h + 0.044715 h³)))   (GPT-2's "gelu_new")
#   "quick_gelu": GELU(h) ≈ h σ(1.702 h)                               (OpenAI CLIP's)
ACTIVATIONS = {
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "quick_gelu": lambda: QuickGELU(),
}


class TransformerBlock(nn.Module):
    """Pre-norm transformer block (as in GPT-2 and ViT)::

        x = x + SelfAttention(LN(x))
        x = x + CrossAttention(LN(x), context)      # only if cross_attention=True
        x = x + MLP(LN(x)),     MLP(h) = W₂ GELU(W₁ h)

    Args:
        dim: token width. num_heads: attention heads (``dim`` divisible by it).
        mlp_ratio: hidden width of the MLP is ``mlp_ratio * dim``.
        dropout: dropout in attention and MLP.
        cross_attention: add a cross-attention sub-layer (queries from x, keys/values from
            ``context``), as in a text-conditioned diffusion U-Net or a decoder.
        context_dim: width of ``context`` (default ``dim``); only with ``cross_attention=True``.
        activation: the MLP's non-linearity, a key of `ACTIVATIONS` (default ``"gelu"``).
        eps: the LayerNorms' ε, LN(x) = (x − mean) / √(var + ε) · γ + β (PyTorch's 1e-5).

    ``forward(x, context=None, *, key_padding_mask=None, attn_mask=None, is_causal=False,
    context_padding_mask=None, return_attention=False)``:
    ``key_padding_mask`` (B, T), ``attn_mask`` and ``is_causal`` apply to self-attention,
    ``context_padding_mask`` (B, S) to cross-attention; all bool, True = keep (see
    `MultiHeadAttention`). With ``return_attention=True`` it returns ``(x, attn)`` where
    ``attn`` is a dict ``{"self": (B, nh, T, T)}`` plus ``"cross": (B, nh, T, S)`` if present.
    ``kv_cache`` goes to the self-attention (see `MultiHeadAttention`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        cross_attention: bool = False,
        context_dim: int | None = None,
        activation: str = "gelu",
        eps: float = 1e-5,
    ):
        super().__init__()
        hidden = max(1, int(round(mlp_ratio * dim)))
        self.dim = dim
        self.cross_attention = cross_attention

        self.ln_1 = nn.LayerNorm(dim, eps=eps)
        self.attn = MultiHeadAttention(dim, num_heads, dropout=dropout)
        if cross_attention:
            self.ln_cross = nn.LayerNorm(dim, eps=eps)
            self.cross_attn = MultiHeadAttention(dim, num_heads, context_dim, dropout=dropout)
        self.ln_2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),  # W₁: (B, T, C) -> (B, T, mlp_ratio·C)
            ACTIVATIONS[activation](),
            nn.Linear(hidden, dim),  # W₂: back to (B, T, C)
            nn.Dropout(dropout),
        )

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        context_padding_mask: torch.Tensor | None = None,
        return_attention: bool = False,
        kv_cache: list | None = None,
    ):
        weights = {}
        h = self.attn(
            self.ln_1(x),
            key_padding_mask=key_padding_mask,
            attn_mask=attn_mask,
            is_causal=is_causal,
            return_attention=return_attention,
            kv_cache=kv_cache,
        )
        if return_attention:
            h, weights["self"] = h
        x = x + h  # x = x + SelfAttention(LN(x))
        if self.cross_attention:
            h = self.cross_attn(
                self.ln_cross(x),
                context,
                key_padding_mask=context_padding_mask,
                return_attention=return_attention,
            )
            if return_attention:
                h, weights["cross"] = h
            x = x + h  # x = x + CrossAttention(LN(x), context)
        x = x + self.mlp(self.ln_2(x))  # x = x + MLP(LN(x))
        return (x, weights) if return_attention else x


# ----------------------------------------------------------------------------------------------
# 3. Patches: the ViT's image-to-token step
# ----------------------------------------------------------------------------------------------


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping ``patch_size × patch_size`` patches and flatten each.

    ``images`` (B, C, H, W) -> (B, N, p·p·C) with N = (H/p)·(W/p). Patches are in row-major
    order (left to right, then top to bottom); each row reshapes back to a (p, p, C) image
    patch with ``row.view(p, p, C)``.
    """
    B, C, H, W = images.shape
    p = patch_size
    x = images.reshape(B, C, H // p, p, W // p, p)  # (B, C, gh, p, gw, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, p, p, C)
    return x.reshape(B, (H // p) * (W // p), p * p * C)  # (B, N, p·p·C)


def unpatchify(patches: torch.Tensor, patch_size: int, image_size: int | tuple[int, int]):
    """Inverse of `patchify`: (B, N, p·p·C) -> (B, C, H, W)."""
    H, W = (image_size, image_size) if isinstance(image_size, int) else image_size
    p = patch_size
    B, N, D = patches.shape
    C = D // (p * p)
    x = patches.reshape(B, H // p, W // p, p, p, C)  # (B, gh, gw, p, p, C)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, W)  # (B, C, H, W)


class PatchEmbedding(nn.Module):
    """ViT patch embedding: image -> sequence of tokens (B, N[+1], dim).

        z₀ = [x_cls ; x_p¹ E ; x_p² E ; … ; x_pᴺ E] + E_pos

    The linear map E on flattened patches is implemented as a Conv2d whose kernel and stride
    equal the patch size (the same maths, faster). A learned [CLS] token is prepended when
    ``cls_token=True``; learned position embeddings (one per token) are added. ``bias=False``
    leaves out the conv's bias (as OpenAI's CLIP does).
    """

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,
        in_channels: int = 3,
        dim: int = 64,
        cls_token: bool = True,
        bias: bool = True,
    ):
        super().__init__()
        self.image_size = image_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.dim = dim
        self.grid_size = image_size // patch_size  # patches per side
        self.num_patches = self.grid_size**2  # N

        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size, bias=bias)  # E
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None  # x_cls
        num_tokens = self.num_patches + (1 if cls_token else 0)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))  # E_pos
        nn.init.normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        B = images.shape[0]
        x = self.proj(images)  # (B, dim, gh, gw): one dim-vector per patch
        x = x.flatten(2).transpose(1, 2)  # (B, N, dim), patches in row-major order
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # (B, 1+N, dim)
        return x + self.pos_embed  # + E_pos


# ----------------------------------------------------------------------------------------------
# 4. Sinusoidal time-step embedding (diffusion models)
# ----------------------------------------------------------------------------------------------


def timestep_embedding(
    timesteps: torch.Tensor,
    dim: int,
    max_period: float = 10000,
    flip_sin_to_cos: bool = True,
    downscale_freq_shift: float = 0,
    scale: float = 1.0,
) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) time steps, as in the Transformer and DDPM.

        ω_i = max_period^(−i / (dim/2 − downscale_freq_shift)),   i = 0 … dim/2 − 1
        emb(t) = [cos(scale·t·ω), sin(scale·t·ω)]   (flip_sin_to_cos=True; else [sin, cos])

    ``timesteps`` (N,) -> (N, dim) float32; an odd ``dim`` gets one zero column at the end.
    Gives the same numbers as diffusers' ``get_timestep_embedding`` called with the same
    arguments (note diffusers' own defaults are flip_sin_to_cos=False, downscale_freq_shift=1).
    """
    half_dim = dim // 2

    # ω_i = exp(−ln(max_period) · i / (half_dim − shift))
    exponent = -math.log(max_period) * torch.arange(
        0, half_dim, dtype=torch.float32, device=timesteps.device
    )
    exponent = exponent / (half_dim - downscale_freq_shift)
    omega = torch.exp(exponent)  # (half_dim,)
    angles = timesteps[:, None].float() * omega[None, :]  # t·ω: (N, half_dim)
    angles = scale * angles
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)  # [sin, cos]: (N, 2·half)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half_dim:], emb[:, :half_dim]], dim=-1)  # [cos, sin]
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))  # (N, dim)
    return emb


class TimestepEmbedding(nn.Module):
    """Sinusoidal time-step features followed by a small MLP (as in the DDPM U-Net)::

        e(t) = W₂ SiLU(W₁ sinusoid(t))      (N,) -> (N, out_dim)

    ``dim`` is the width of the sinusoidal features; ``out_dim`` defaults to ``4 * dim``.
    """

    def __init__(self, dim: int, out_dim: int | None = None, max_period: float = 10000):
        super().__init__()
        out_dim = 4 * dim if out_dim is None else out_dim
        self.dim = dim
        self.out_dim = out_dim
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(timesteps, self.dim, max_period=self.max_period)  # (N, dim)
        emb = emb.to(self.mlp[0].weight.dtype)
        return self.mlp(emb)  # (N, out_dim)
