"""A small U-Net that predicts the noise ε in x_t, optionally conditioned on text.

Ronneberger et al. (2015) for the U shape; Ho et al. (2020) for its use as a DDPM denoiser;
Rombach et al. (2022) for cross-attention to a frozen text encoder; Ho & Salimans (2022) for
classifier-free guidance. Names follow diffusers' ``UNet2DModel`` / ``UNet2DConditionModel``::

    unet = UNet2DModel(UNetConfig())
    eps = unet(x_t, t)                                     # (B, 3, H, W), (B,) -> (B, 3, H, W)
    eps = unet(x_t, t, encoder_hidden_states=text, encoder_attention_mask=mask)  # text model

The shape, for block_out_channels = (c₀, c₁, c₂) and an H×H input::

    x (3, H)  ─conv_in─► (c₀, H) ─Res─► skip₀ ─down─► (c₁, H/2) ─Res[+Attn]─► skip₁ ─down─►
              (c₂, H/4) ─Res, Attn, Res─►  ─up─► cat skip₁ ─Res[+Attn]─► (c₁, H/2) ─up─►
              cat skip₀ ─Res─► (c₀, H) ─conv_out─► ε̂ (3, H)

Channels double on the way down and halve on the way up; the skips carry fine detail across;
every residual block adds the time-step embedding e(t), so every block knows the noise level.

The model only predicts noise: sampling (with classifier-free guidance or autoguidance) is in
`minimodels.pipelines` (`TextToImagePipeline`, `DDPMPipeline`), the objective is
`minimodels.diffusion.diffusion_loss`, and training is in `minimodels.recipes.ddpm`.
Shape letters: B batch, C channels, H = W image side, L text tokens, D text width.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimodels.checks import check_device, check_instance, check_int, check_tensor
from minimodels.layers import MultiHeadAttention, TimestepEmbedding


@dataclass
class UNetConfig:
    sample_size: int = 20  # H = W; divisible by 2^(levels-1)
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (16, 32, 64)  # c_0, c_1, ... : doubling downwards
    norm_num_groups: int = 8
    cross_attention_dim: int | None = None  # D of the text features; None = unconditional
    attention_head_dim: int = 16
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    cond_dropout: float = 0.15  # share of training examples whose prompt becomes "" (CFG)

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)  # a JSON list -> a tuple


# ----------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------


class ResnetBlock2D(nn.Module):
    """h = conv(SiLU(GN(x))) + W e(t);  out = conv(SiLU(GN(h))) + skip(x).   (B, C_in, H, H) ->
    (B, C_out, H, H). The time embedding is added as a per-channel shift in every block."""

    def __init__(self, c_in: int, c_out: int, temb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, H)
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]  # + W e(t), per channel
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class AttentionBlock2D(nn.Module):
    """Self-attention over the H·W positions, then (with text) cross-attention to the tokens:

    h ← h + SelfAttn(LN(h));   h ← h + CrossAttn(LN(h), text)   (queries from the image,
    keys and values from the text features: each pixel reads what the prompt says)."""

    def __init__(self, channels: int, head_dim: int, context_dim: int | None):
        super().__init__()
        heads = channels // head_dim
        self.norm1 = nn.LayerNorm(channels)
        self.attn1 = MultiHeadAttention(channels, heads)
        self.norm2 = nn.LayerNorm(channels) if context_dim else None
        self.attn2 = MultiHeadAttention(channels, heads, context_dim) if context_dim else None

    def forward(self, x: torch.Tensor, context=None, context_mask=None) -> torch.Tensor:
        B, C, H, W = x.shape
        h = x.flatten(2).transpose(1, 2)  # (B, H·W, C): one token per pixel
        h = h + self.attn1(self.norm1(h))
        if self.attn2 is not None and context is not None:
            h = h + self.attn2(self.norm2(h), context, key_padding_mask=context_mask)
        return h.transpose(1, 2).reshape(B, C, H, W)


# ----------------------------------------------------------------------------------------------
# The U-Net
# ----------------------------------------------------------------------------------------------


class UNet2DModel(nn.Module):
    """ε_θ(x_t, t[, text]): (B, C, H, W), (B,) [, (B, L, D)] -> (B, C, H, W)."""

    config_class = UNetConfig

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = c = check_instance(config or UNetConfig(), UNetConfig, "config")
        ch, g, ctx = c.block_out_channels, c.norm_num_groups, c.cross_attention_dim
        factor = 2 ** (len(ch) - 1)  # one halving per level below the first
        if len(ch) < 2 or c.sample_size % factor:
            raise ValueError(
                f"sample_size must be divisible by {factor} (one halving per level "
                f"of {ch}); got {c.sample_size}"
            )
        if any(k % g for k in ch) or any(k % c.attention_head_dim for k in ch[1:]):
            raise ValueError(
                f"block_out_channels {ch} must be divisible by norm_num_groups={g} "
                f"(and from level 1 by attention_head_dim={c.attention_head_dim})"
            )
        temb_dim = 4 * ch[0]
        self.time_embedding = TimestepEmbedding(ch[0], temb_dim)  # e(t): (B,) -> (B, 4c₀)
        self.conv_in = nn.Conv2d(c.in_channels, ch[0], 3, padding=1)

        # Down path: level i works at H / 2^i with ch[i] channels; attention below level 0.
        self.down_blocks = nn.ModuleList()
        self.down_attn = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for i in range(len(ch) - 1):
            self.down_blocks.append(ResnetBlock2D(ch[i], ch[i], temb_dim, g))
            self.down_attn.append(
                AttentionBlock2D(ch[i], c.attention_head_dim, ctx) if i > 0 else nn.Identity()
            )
            self.downsamplers.append(nn.Conv2d(ch[i], ch[i + 1], 3, stride=2, padding=1))
        # Bottleneck at the lowest resolution.
        self.mid_block1 = ResnetBlock2D(ch[-1], ch[-1], temb_dim, g)
        self.mid_attn = AttentionBlock2D(ch[-1], c.attention_head_dim, ctx)
        self.mid_block2 = ResnetBlock2D(ch[-1], ch[-1], temb_dim, g)
        # Up path: upsample, concatenate the skip of the same level, halve the channels.
        self.upsamplers = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        for i in reversed(range(len(ch) - 1)):
            self.upsamplers.append(nn.Conv2d(ch[i + 1], ch[i], 3, padding=1))
            self.up_blocks.append(ResnetBlock2D(2 * ch[i], ch[i], temb_dim, g))
            self.up_attn.append(
                AttentionBlock2D(ch[i], c.attention_head_dim, ctx) if i > 0 else nn.Identity()
            )
        self.conv_norm_out = nn.GroupNorm(g, ch[0])
        self.conv_out = nn.Conv2d(ch[0], c.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # predicts ε̂ = 0 at the start
        nn.init.zeros_(self.conv_out.bias)

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def _timesteps(self, timestep, B: int) -> torch.Tensor:
        """An int, or an integer tensor (B,) or of one element -> (B,) on the model's device."""
        T = self.config.num_train_timesteps
        if isinstance(timestep, numbers.Integral) and not isinstance(timestep, bool):
            t = check_int(timestep, "timestep", 0, T - 1)
            timestep = torch.full((B,), t, device=self.device)  # made where the model is
        check_tensor(timestep, "timestep", (0, 1), f"(B={B},) in [0, {T - 1}]",
                     model_device=self.device)  # fmt: skip
        if timestep.numel() not in (1, B):
            raise ValueError(f"timestep must have B={B} entries or 1; got {timestep.numel()}")
        return timestep.reshape(-1).to(self.device).expand(B)

    def _check_text(self, encoder_hidden_states, encoder_attention_mask, B: int) -> None:
        D = self.config.cross_attention_dim
        if D is None:
            raise ValueError(
                "this U-Net is unconditional (cross_attention_dim=None); got encoder_hidden_states"
            )
        layout = f"(B={B}, L, {D})"
        ehs = check_tensor(
            encoder_hidden_states, "encoder_hidden_states", 3, layout, True, self.device
        )
        if ehs.shape[0] != B or ehs.shape[2] != D:
            raise ValueError(
                f"encoder_hidden_states must have shape {layout}; got {tuple(ehs.shape)}"
            )
        mask = encoder_attention_mask
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.shape != ehs.shape[:2]):
            raise ValueError(
                f"encoder_attention_mask must have shape {tuple(ehs.shape[:2])}; "
                f"got {getattr(mask, 'shape', mask)}"
            )
        if mask is not None:
            check_device(mask, "encoder_attention_mask", self.device)

    def forward(
        self,
        sample: torch.Tensor,
        timestep,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ε̂ (B, C, H, W). timestep: an int or (B,); encoder_hidden_states: text features
        (B, L, D) for a text model; encoder_attention_mask: bool (B, L), True at real tokens."""
        c = self.config
        layout = f"(B, {c.in_channels}, {c.sample_size}, {c.sample_size})"
        check_tensor(sample, "sample", 4, layout, floating=True, device=self.device)
        if sample.shape[1:] != (c.in_channels, c.sample_size, c.sample_size):
            raise ValueError(f"sample must have shape {layout}; got {tuple(sample.shape)}")
        t = self._timesteps(timestep, sample.shape[0])
        if encoder_hidden_states is not None:
            self._check_text(encoder_hidden_states, encoder_attention_mask, sample.shape[0])
        ctx = encoder_hidden_states
        mask = None if encoder_attention_mask is None else encoder_attention_mask.bool()
        temb = self.time_embedding(t)  # e(t): (B, 4c₀)
        h = self.conv_in(sample)  # (B, c₀, H, H)
        skips = []
        for block, attn, down in zip(self.down_blocks, self.down_attn, self.downsamplers):
            h = block(h, temb)  # (B, c_i, H/2^i, ·)
            if isinstance(attn, AttentionBlock2D):
                h = attn(h, ctx, mask)
            skips.append(h)
            h = down(h)  # (B, c_{i+1}, H/2^{i+1}, ·): half the side, twice the channels
        h = self.mid_block1(h, temb)
        h = self.mid_attn(h, ctx, mask)
        h = self.mid_block2(h, temb)  # (B, c_last, H/2^last, ·)
        for up, block, attn in zip(self.upsamplers, self.up_blocks, self.up_attn):
            h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))  # twice the side, c_i
            h = block(torch.cat([h, skips.pop()], dim=1), temb)  # skip joins: 2c_i -> c_i
            if isinstance(attn, AttentionBlock2D):
                h = attn(h, ctx, mask)
        return self.conv_out(F.silu(self.conv_norm_out(h)))  # (B, C, H, H)
