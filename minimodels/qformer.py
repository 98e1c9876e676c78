"""A small BLIP-2 Q-Former: learned queries between a frozen image encoder and a frozen LM.

Li et al. (2023), "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image Encoders
and Large Language Models". Q learned query vectors read the frozen encoder's features through
cross-attention; whatever the image size, the LM receives Q vectors, projected to its width and
put in front of the text as a soft visual prompt::

    z = query_tokens                                  (B, Q, H)   learned, shared by all images
    for each layer:
        z = z + SelfAttention(LN(z))                  queries talk to each other
        z = z + CrossAttention(LN(z), LN(image))      queries read the frozen image features
        z = z + MLP(LN(z))
    prefix = language_projection(LN(z))               (B, Q, C)   the LM's width
    LM([prefix ; text])                               the frozen LM answers

Only the Q-Former and the projection train. The names follow transformers'
``Blip2QFormerModel`` / ``Blip2ForConditionalGeneration`` (``query_tokens``,
``num_query_tokens``, ``language_projection``, ``encoder_hidden_size``).

Simplifications: BLIP-2 first pre-trains the Q-Former with three losses on image-text pairs
(contrastive, matching, grounded generation, sharing layers with a text transformer) and puts
cross-attention in every other layer; here it is trained directly through the frozen LM (BLIP-2's
second stage), with cross-attention in every layer.

Shape letters: B batch, N image features, D encoder width, Q queries, H Q-Former width,
T text tokens, C LM width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from minimodels.checks import check_finite, check_instance, check_tensor
from minimodels.frozen import config_for, freeze, prefix_forward
from minimodels.layers import TransformerBlock


@dataclass
class QFormerConfig:
    encoder_hidden_size: int = 64  # D: width of the frozen image features
    hidden_size: int = 64  # H
    num_query_tokens: int = 8  # Q
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    mlp_ratio: float = 2.0
    lm_dim: int = 96  # C: width of the LM (the output of language_projection)


class QFormer(nn.Module):
    """Learned queries that read frozen image features: (B, N, D) → (B, Q, H)."""

    def __init__(self, config: QFormerConfig | None = None):
        super().__init__()
        c = QFormerConfig() if config is None else check_instance(config, QFormerConfig, "config")
        self.config = c
        self.query_tokens = nn.Parameter(torch.randn(1, c.num_query_tokens, c.hidden_size) * 0.02)
        self.layernorm_image = nn.LayerNorm(c.encoder_hidden_size)
        self.layers = nn.ModuleList(
            TransformerBlock(
                c.hidden_size,
                c.num_attention_heads,
                c.mlp_ratio,
                cross_attention=True,
                context_dim=c.encoder_hidden_size,
            )  # fmt: skip
            for _ in range(c.num_hidden_layers)
        )
        self.layernorm = nn.LayerNorm(c.hidden_size)

    def forward(
        self, image_embeds: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """image_embeds (B, N, D) → query outputs (B, Q, H).

        With ``return_attention=True`` also returns each layer's cross-attention weights
        (B, heads, Q, N): which image features each query read.
        """
        D = self.config.encoder_hidden_size
        check_tensor(image_embeds, "image_embeds", 3, f"(B, N, {D})", floating=True)
        check_finite(image_embeds, "image_embeds")
        if image_embeds.shape[-1] != D:
            raise ValueError(f"image_embeds must have width {D} (encoder_hidden_size) in its last "
                             f"dimension; got shape {tuple(image_embeds.shape)}")  # fmt: skip
        image = self.layernorm_image(image_embeds.to(self.query_tokens.device))  # (B, N, D)
        z = self.query_tokens.expand(len(image), -1, -1)  # (B, Q, H): the same Q for every image
        maps = []
        for layer in self.layers:
            # self-attention among queries, cross-attention to the image, MLP (all residual)
            out = layer(z, context=image, return_attention=return_attention)
            if return_attention:
                out, weights = out
                maps.append(weights["cross"])  # (B, heads, Q, N)
            z = out
        z = self.layernorm(z)  # (B, Q, H)
        return (z, maps) if return_attention else z


class Blip2(nn.Module):
    """Frozen image features → `QFormer` → ``language_projection`` → frozen causal LM.

    ``Blip2(lm, config=None)`` freezes `lm`. ``forward(image_features, input_ids,
    attention_mask=None, labels=None)`` returns the LM's output; its logits are (B, Q+T, V)
    (text position t at index Q + t). ``visual_prefix(image_features)`` gives the (B, Q, C)
    soft prompt alone.
    """

    def __init__(self, lm: nn.Module, config: QFormerConfig | None = None):
        super().__init__()
        self.config = config = config_for(lm, config, QFormerConfig)
        C = config.lm_dim
        self.lm = freeze(lm)
        ref = lm.get_input_embeddings().weight
        self.qformer = QFormer(config).to(ref)
        self.language_projection = nn.Linear(config.hidden_size, C).to(ref)  # H → C

    @property
    def num_query_tokens(self) -> int:
        return self.config.num_query_tokens

    def train(self, mode: bool = True):
        super().train(mode)
        self.lm.eval()  # frozen: no dropout
        return self

    def visual_prefix(self, image_features: torch.Tensor) -> torch.Tensor:
        """(B, N, D) frozen features → (B, Q, C) vectors in the LM's input space."""
        D = self.config.encoder_hidden_size
        check_tensor(image_features, "image_features", 3, f"(B, N, {D})", floating=True)
        check_finite(image_features, "image_features")
        if image_features.shape[-1] != D:
            raise ValueError(
                f"image_features must be (B, N, {D}); got {tuple(image_features.shape)}"
            )
        return self.language_projection(self.qformer(image_features))  # (B, Q, C)

    def forward(self, image_features, input_ids, attention_mask=None, labels=None):
        prefix = self.visual_prefix(image_features)  # (B, Q, C)
        return prefix_forward(self.lm, prefix, input_ids, attention_mask, labels)
