"""Flamingo: a frozen language model that looks at images through gated cross-attention.

Alayrac et al. (2022), "Flamingo: a Visual Language Model for Few-Shot Learning". Two new
pieces are trained between a frozen vision encoder and a frozen language model:

1. `PerceiverResampler`: any number N of visual features → a fixed number L of latents. L
   learned latent vectors attend to [features ; latents], so the LM always sees L "visual
   tokens", whether the image gave 16 patches or 1024 (or a video gave thousands).

2. `GatedCrossAttentionDense` ("GATED XATTN-DENSE"), inserted *before* the LM's blocks::

       x = x + tanh(α_xattn) · CrossAttention(LN(x), latents)     α_xattn = 0 at init
       x = x + tanh(α_dense) · FFW(LN(x))                          α_dense = 0 at init

   Since tanh(0) = 0, at initialisation every new layer is the identity and the model computes
   exactly what the frozen LM computed: training starts from the LM's knowledge and lets the
   image in gradually, as the gates open.

`Flamingo(lm)` freezes `lm` and wraps its decoder blocks in `FlamingoLayer`s, the way
open_flamingo does (``decoder_layers_attr_name``, ``condition_vis_x``): the LM's own forward
runs unchanged and each wrapped block first reads the image. The LM can be any module with a
Hugging Face-like interface (``lm(input_ids=..., attention_mask=..., labels=...)`` → ``.loss``,
``.logits``; ``get_input_embeddings()``) whose blocks take the hidden states first.

Simplification: one image per text, seen by every text token (open_flamingo also handles
interleaved images, where a token may look only at the image just before it).

Shape letters: B batch, N visual features, D vision width, L latents, T text tokens, C LM width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from minimodels.checks import check_finite, check_tensor
from minimodels.frozen import config_for, freeze
from minimodels.layers import MultiHeadAttention


def feed_forward(dim: int, mult: float) -> nn.Sequential:
    """FFW(x) = W₂ GELU(W₁ LN(x)) (the LayerNorm inside, as in open_flamingo)."""
    hidden = max(1, int(round(mult * dim)))
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
    )


# ----------------------------------------------------------------------------------------------
# 1. Perceiver Resampler
# ----------------------------------------------------------------------------------------------


class PerceiverResampler(nn.Module):
    """(B, N, D) visual features, any N → (B, L, D) latents, L = ``num_latents`` fixed.

    Each of ``depth`` layers::

        latents = latents + Attention(q = LN(latents), kv = [LN(features) ; LN(latents)])
        latents = latents + FFW(latents)
    """

    def __init__(
        self, dim: int, depth: int = 2, num_latents: int = 8, heads: int = 4, ff_mult: float = 2
    ):
        super().__init__()
        self.dim, self.num_latents = dim, num_latents
        self.latents = nn.Parameter(torch.randn(num_latents, dim))  # L learned queries
        self.layers = nn.ModuleList()
        for _ in range(depth):
            layer = nn.ModuleDict(
                {
                    "norm_media": nn.LayerNorm(dim),
                    "norm_latents": nn.LayerNorm(dim),
                    "attn": MultiHeadAttention(dim, heads),
                    "ff": feed_forward(dim, ff_mult),
                }
            )
            self.layers.append(layer)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        latents = self.latents.expand(B, -1, -1)  # (B, L, D)
        for layer in self.layers:
            media = layer["norm_media"](x)  # (B, N, D)
            q = layer["norm_latents"](latents)  # (B, L, D)
            kv = torch.cat([media, q], dim=1)  # (B, N+L, D): latents also see themselves
            latents = latents + layer["attn"](q, context=kv)  # (B, L, D)
            latents = latents + layer["ff"](latents)  # (B, L, D)
        return self.norm(latents)  # (B, L, D): L tokens, whatever N was


# ----------------------------------------------------------------------------------------------
# 2. Gated cross-attention, and the wrapper that puts it in front of a frozen LM block
# ----------------------------------------------------------------------------------------------


class GatedCrossAttentionDense(nn.Module):
    """Text tokens (B, T, C) read visual latents (B, L, D) through tanh-gated residuals.

        x = x + tanh(attn_gate) · CrossAttention(LN(x), media)
        x = x + tanh(ff_gate) · FFW(x)

    Both gates start at 0, so at initialisation the layer returns x unchanged (exactly).
    """

    def __init__(self, dim: int, dim_visual: int, heads: int = 4, ff_mult: float = 2):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.cross_attn = MultiHeadAttention(dim, heads, context_dim=dim_visual)
        self.attn_gate = nn.Parameter(torch.zeros(1))  # α_xattn = 0: tanh(0) = 0
        self.ff = feed_forward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.zeros(1))  # α_dense = 0

    def forward(self, x: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        y = self.cross_attn(self.norm(x), context=media)  # (B, T, C): each word reads the image
        x = x + self.attn_gate.tanh() * y  # y = x + tanh(α)·xattn(x)
        x = x + self.ff_gate.tanh() * self.ff(x)  # x + tanh(α_dense)·FFW(x)
        return x


class FlamingoLayer(nn.Module):
    """A frozen LM block with a `GatedCrossAttentionDense` in front (open_flamingo's name).

    ``condition_vis_x(media)`` stores the latents (B, L, D) for the next forward pass; with
    none stored the block runs exactly as before (text-only use of the LM).
    """

    def __init__(self, gated_cross_attn_layer: GatedCrossAttentionDense, decoder_layer):
        super().__init__()
        self.gated_cross_attn_layer = gated_cross_attn_layer
        self.decoder_layer = decoder_layer
        self.vis_x = None

    def condition_vis_x(self, vis_x: torch.Tensor | None) -> None:
        self.vis_x = vis_x

    def forward(self, x, *args, **kwargs):
        if self.vis_x is not None:
            x = self.gated_cross_attn_layer(x, self.vis_x)  # the image enters here
        return self.decoder_layer(x, *args, **kwargs)  # the frozen block, as it was


@dataclass
class FlamingoConfig:
    vision_dim: int = 64  # D: width of the frozen vision encoder's features
    lm_dim: int = 64  # C: width of the frozen LM
    num_latents: int = 8  # L: visual tokens after resampling
    resampler_depth: int = 1
    heads: int = 4
    ff_mult: float = 2.0
    cross_attn_every_n_layers: int = 1  # a gated layer before every n-th LM block


_LAYER_NAMES = ("blocks", "layers", "h", "transformer.h", "transformer.blocks", "model.layers")


def find_decoder_layers(lm: nn.Module, name: str | None = None) -> tuple[str, nn.ModuleList]:
    """The LM's list of decoder blocks: attribute `name` (dotted), or the first usual name."""
    candidates = [name] if name is not None else _LAYER_NAMES
    for cand in candidates:
        try:
            layers = lm.get_submodule(cand)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return cand, layers
    lists = [n for n, m in lm.named_modules() if isinstance(m, nn.ModuleList)]
    raise ValueError(
        f"decoder_layers_attr_name={name!r}: found no non-empty nn.ModuleList of decoder blocks "
        f"(tried {list(candidates)}); the LM's module lists are {lists}"
    )


class Flamingo(nn.Module):
    """A frozen LM with a Perceiver Resampler and gated cross-attention before its blocks.

    ``Flamingo(lm, config=None, decoder_layers_attr_name=None)`` freezes `lm` and wraps every
    ``config.cross_attn_every_n_layers``-th block in place. Trainable: ``perceiver`` and the
    gated layers (``gated_layers()``); the vision encoder stays outside (pass its features).

    ``forward(image_features, input_ids, attention_mask=None, labels=None)``:
    image_features (B, N, D) from a frozen encoder (e.g. CLIP's ``encode_image_features``),
    input_ids (B, T); returns the LM's output (``.loss``, ``.logits`` (B, T, V)).
    """

    def __init__(
        self,
        lm: nn.Module,
        config: FlamingoConfig | None = None,
        decoder_layers_attr_name: str | None = None,
    ):
        super().__init__()
        self.config = c = config_for(lm, config, FlamingoConfig)
        C = c.lm_dim
        self.lm = freeze(lm)  # every weight of the LM stays as it was
        self.decoder_layers_attr_name, blocks = find_decoder_layers(lm, decoder_layers_attr_name)
        ref = lm.get_input_embeddings().weight
        self.perceiver = PerceiverResampler(
            c.vision_dim, c.resampler_depth, c.num_latents, c.heads, c.ff_mult
        ).to(ref)
        for i in range(len(blocks)):
            if i % c.cross_attn_every_n_layers == 0:
                xattn = GatedCrossAttentionDense(C, c.vision_dim, c.heads, c.ff_mult).to(ref)
                blocks[i] = FlamingoLayer(xattn, blocks[i])

    def flamingo_layers(self) -> list[FlamingoLayer]:
        return [m for m in self.lm.modules() if isinstance(m, FlamingoLayer)]

    def gates(self) -> dict[str, float]:
        """tanh(α) of every gate, e.g. {"0.attn": 0.0, "0.ff": 0.0, ...}: how open each is."""
        out = {}
        for i, layer in enumerate(self.flamingo_layers()):
            g = layer.gated_cross_attn_layer
            out[f"{i}.attn"] = g.attn_gate.tanh().item()
            out[f"{i}.ff"] = g.ff_gate.tanh().item()
        return out

    def train(self, mode: bool = True):
        super().train(mode)
        for layer in self.flamingo_layers():
            layer.decoder_layer.eval()  # frozen blocks: no dropout
        return self

    def forward(self, image_features, input_ids, attention_mask=None, labels=None):
        D = self.config.vision_dim
        check_tensor(image_features, "image_features", 3, f"(B, N, {D})", floating=True)
        check_finite(image_features, "image_features")
        check_tensor(input_ids, "input_ids", 2, "(B, T)", floating=False)
        if image_features.shape[-1] != D or len(input_ids) != len(image_features):
            raise ValueError(
                f"image_features must be (B, N, {D}) and input_ids (B, T), one row per image; "
                f"got {tuple(image_features.shape)} and {tuple(input_ids.shape)}"
            )
        device = self.perceiver.latents.device
        media = self.perceiver(image_features.to(device))  # (B, L, D)
        layers = self.flamingo_layers()
        for layer in layers:
            layer.condition_vis_x(media)
        try:
            return self.lm(input_ids=input_ids.to(device), attention_mask=attention_mask,
                           labels=labels)  # fmt: skip
        finally:
            for layer in layers:
                layer.condition_vis_x(None)  # the LM is text-only again afterwards
