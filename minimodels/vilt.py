"""ViLT from scratch: one transformer over words and image patches, no detector.

Kim et al. (2021), "ViLT: Vision-and-Language Transformer Without Convolution or Region
Supervision". ViLBERT (`minimodels.vilbert`) needs object boxes from a detector and keeps two
streams joined by co-attention. ViLT drops both: image patches are embedded linearly as in a
ViT, text tokens as in BERT, a *modality embedding* tells the two apart, and a single stream
of ordinary self-attention layers mixes them from the first layer on::

    z = [ [CLS] w₁ … w_L [SEP] ; p₁ … p_N ] + positions + modality(0 for words, 1 for patches)
    z → TransformerBlock × layers → h_CLS → pooler → alignment head (aligned or not)

Training (``minimodels/recipes/vilt.py``) uses ViLBERT's scenes and captions: alignment with
random and hard negatives, and masked language modelling on true captions.

Shape letters: B batch, L words, N patches, T = L + N tokens, D width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from minimodels.checks import check_images, check_instance
from minimodels.clip import text_inputs
from minimodels.layers import PatchEmbedding, TransformerBlock
from minimodels.text import Tokenizer

_TOKENIZER = Tokenizer()


@dataclass
class ViLTConfig:
    image_size: int = 32
    patch_size: int = 4
    in_channels: int = 3
    vocab_size: int = _TOKENIZER.vocab_size
    context_length: int = 40
    width: int = 64
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0


@dataclass
class ViLTOutput:
    hidden: torch.Tensor  # (B, L + N, D): words first, then patches
    pooled: torch.Tensor  # (B, D): tanh(W h_CLS)
    itm_logits: torch.Tensor  # (B, 2): [not aligned, aligned]
    mlm_logits: torch.Tensor  # (B, L, vocab)
    attentions: list[torch.Tensor] | None = None  # per layer (B, nh, T, T)

    def itm_score(self) -> torch.Tensor:
        """(B,) log-odds that the text describes the image."""
        return self.itm_logits[:, 1] - self.itm_logits[:, 0]


class ViLT(nn.Module):
    """Single-stream fusion encoder over [words ; patches] with modality embeddings."""

    config_class = ViLTConfig

    def __init__(self, config: ViLTConfig | None = None):
        super().__init__()
        c = ViLTConfig() if config is None else check_instance(config, ViLTConfig, "config")
        for size, by in (("image_size", "patch_size"), ("width", "heads")):  # structural
            if getattr(c, size) % getattr(c, by):
                raise ValueError(
                    f"{size}={getattr(c, size)} must be divisible by {by}={getattr(c, by)}"
                )
        self.config = c
        self.pad_token_id = _TOKENIZER.pad_token_id
        self.token_embedding = nn.Embedding(c.vocab_size, c.width)
        self.position_embedding = nn.Parameter(torch.zeros(c.context_length, c.width))
        self.patch_embed = PatchEmbedding(
            c.image_size, c.patch_size, c.in_channels, c.width, cls_token=False
        )  # x_p E + E_pos, (B, N, D)
        self.modality_embedding = nn.Embedding(2, c.width)  # 0: text, 1: image
        self.blocks = nn.ModuleList(
            TransformerBlock(c.width, c.heads, c.mlp_ratio) for _ in range(c.layers)
        )
        self.ln_final = nn.LayerNorm(c.width)
        self.pooler = nn.Linear(c.width, c.width)
        self.itm_head = nn.Linear(c.width, 2)
        self.mlm_head = nn.Linear(c.width, c.vocab_size)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)
        nn.init.normal_(self.modality_embedding.weight, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.position_embedding.device

    def forward(self, tokens, images, *, attention_mask=None, output_attentions: bool = False):
        """tokens: input_ids (B, L) or the Tokenizer's dict; images uint8 (B, 3, H, W) or float
        in [0, 1]. Returns a `ViLTOutput`."""
        c = self.config
        ids, text_mask = text_inputs(tokens, attention_mask, c.vocab_size, c.context_length,
                                     self.pad_token_id)  # fmt: skip
        x = check_images(images, "images", c.image_size, c.in_channels).to(self.device)
        ids, text_mask = ids.to(self.device), text_mask.to(self.device)  # (B, L) each
        B, L = ids.shape
        if x.shape[0] != B:
            raise ValueError(
                f"tokens and images must have the same batch size; got {B} and {x.shape[0]}"
            )
        words = self.token_embedding(ids) + self.position_embedding[:L]  # (B, L, D)
        words = words + self.modality_embedding.weight[0]  # + modality "text"
        patches = self.patch_embed(x) + self.modality_embedding.weight[1]  # (B, N, D) + "image"
        z = torch.cat([words, patches], dim=1)  # one sequence: (B, L + N, D)
        keep = torch.cat(
            [text_mask, torch.ones(B, patches.shape[1], dtype=torch.bool, device=self.device)],
            dim=1,
        )  # (B, L + N): padding words are ignored, every patch is kept
        attentions = [] if output_attentions else None
        for block in self.blocks:
            if output_attentions:
                z, w = block(z, key_padding_mask=keep, return_attention=True)
                attentions.append(w["self"])
            else:
                z = block(z, key_padding_mask=keep)
        z = self.ln_final(z)
        pooled = torch.tanh(self.pooler(z[:, 0]))  # from [CLS], the first word
        return ViLTOutput(
            hidden=z,
            pooled=pooled,
            itm_logits=self.itm_head(pooled),
            mlm_logits=self.mlm_head(z[:, :L]),
            attentions=attentions,
        )
