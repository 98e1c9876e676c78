"""An image captioner: CLIP's image tower with a small causal text decoder that cross-attends to
the patch tokens, trained to predict the caption word by word.

The other way to learn from image-text pairs (VirTex, Desai & Johnson 2021; SimVLM; CoCa's
captioning half): instead of telling a caption apart from the batch's other captions, as CLIP
does, predict every word of it given the image,

    loss = −(1/|S|) Σ_{t∈S} log p(w_{t+1} | w_≤t, image)          (causal_lm_loss)

Zero-shot classification reads the model as a likelihood: the class c whose prompt is most
probable given the image, argmax_c log p("a {c}" | image) (`score_captions`).

The image tower has CLIP's layout and parameter names (``patch_embed``, ``ln_pre``,
``vision_blocks``, ``ln_post``), so a captioner and a CLIP of the same widths read images
with the same network. The decoder is GPT-like: token + position embeddings, pre-norm blocks
with causal self-attention and cross-attention to the image tokens, and a head tied to the
token embedding.

    from minimodels.captioner import Captioner, CaptionerConfig
    model = Captioner(CaptionerConfig())
    out = model(images, **model.encode_captions(["a red circle"] * len(images)))  # .loss
    scores = model.score_captions(images, ["a red circle", "a blue cross"])  # (B, 2)

Shape letters: B images, C captions, N patches, T tokens, D width, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimodels.checks import check_images, check_instance, check_int, check_strings
from minimodels.gpt import IGNORE_INDEX, CausalLMOutput, causal_lm_loss
from minimodels.layers import PatchEmbedding, TransformerBlock
from minimodels.text import Tokenizer

TOKENIZER = Tokenizer()


@dataclass
class CaptionerConfig:
    # image encoder: the same ViT as CLIPConfig's (same names, same defaults)
    image_size: int = 32
    patch_size: int = 4
    in_channels: int = 3
    vision_width: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    # text decoder: causal self-attention, cross-attention to the image tokens
    vocab_size: int = TOKENIZER.vocab_size
    context_length: int = 40  # <bos> + the longest ShapeWorld caption (30 words) + <eos>
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0


class Captioner(nn.Module):
    """ViT image tower + causal decoder cross-attending to its tokens; predicts captions."""

    config_class = CaptionerConfig

    def __init__(self, config: CaptionerConfig | None = None):
        super().__init__()
        c = CaptionerConfig() if config is None else check_instance(config, CaptionerConfig,
                                                                    "config")  # fmt: skip
        pairs = (("image_size", "patch_size"), ("vision_width", "vision_heads"),
                 ("text_width", "text_heads"))  # fmt: skip
        for size, by in pairs:
            if getattr(c, size) % getattr(c, by):
                raise ValueError(
                    f"{size}={getattr(c, size)} must be divisible by {by}={getattr(c, by)}"
                )
        self.config = c

        # Image encoder, as in CLIP: z₀ = [x_cls; x_p E] + E_pos, L pre-norm blocks, LN.
        self.patch_embed = PatchEmbedding(c.image_size, c.patch_size, c.in_channels,
                                          c.vision_width)  # fmt: skip
        self.ln_pre = nn.LayerNorm(c.vision_width)
        self.vision_blocks = nn.ModuleList(
            TransformerBlock(c.vision_width, c.vision_heads, c.mlp_ratio, c.dropout)
            for _ in range(c.vision_layers)
        )
        self.ln_post = nn.LayerNorm(c.vision_width)

        # Text decoder: h₀ = W_e[w] + P; blocks: causal self-attention, cross-attention to the
        # 1+N image tokens, MLP; logits = LN(h) W_eᵀ (the head shares the embedding's weights).
        self.token_embedding = nn.Embedding(c.vocab_size, c.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(c.context_length, c.text_width))
        decoder_block = dict(cross_attention=True, context_dim=c.vision_width)
        self.text_blocks = nn.ModuleList(
            TransformerBlock(c.text_width, c.text_heads, c.mlp_ratio, c.dropout, **decoder_block)
            for _ in range(c.text_layers)
        )
        self.ln_final = nn.LayerNorm(c.text_width)
        self.lm_head = nn.Linear(c.text_width, c.vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight  # tied: W_eᵀ
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)

    @property
    def device(self) -> torch.device:
        return self.positional_embedding.device

    def encode_image_tokens(self, images) -> torch.Tensor:
        """images uint8 (B, 3, H, W) or float in [0, 1] -> image tokens (B, 1+N, D)."""
        c = self.config
        x = check_images(images, "images", c.image_size, c.in_channels).to(self.device)
        x = self.ln_pre(self.patch_embed(x))  # (B, 1+N, D)
        for block in self.vision_blocks:
            x = block(x)
        return self.ln_post(x)  # what the decoder cross-attends to

    def decode(self, image_tokens, input_ids, attention_mask=None) -> torch.Tensor:
        """Next-token logits (B, T, V) given image tokens (B, 1+N, D) and ids (B, T)."""
        T = input_ids.shape[1]
        if T > self.config.context_length:
            raise ValueError(f"input_ids has {T} tokens; at most {self.config.context_length}")
        keep = None if attention_mask is None else attention_mask.bool().to(self.device)
        x = self.token_embedding(input_ids.to(self.device)) + self.positional_embedding[:T]
        for block in self.text_blocks:  # token t sees tokens 0..t and every image token
            x = block(x, image_tokens, key_padding_mask=keep, is_causal=True)
        return self.lm_head(self.ln_final(x))  # (B, T, V)

    def forward(self, images, input_ids, attention_mask=None, labels=None) -> CausalLMOutput:
        """-> CausalLMOutput(loss, logits (B, T, V)). labels: ids with −100 where no loss is
        taken (default: input_ids with −100 at padding); position t predicts labels[t+1]."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
            raise ValueError("input_ids must be a (B, T) tensor; see encode_captions")
        image_tokens = self.encode_image_tokens(images)  # (B, 1+N, D)
        if len(image_tokens) != len(input_ids):
            raise ValueError(f"{len(image_tokens)} images but {len(input_ids)} captions")
        logits = self.decode(image_tokens, input_ids, attention_mask)  # (B, T, V)
        if labels is None:
            labels = input_ids if attention_mask is None else input_ids.masked_fill(
                attention_mask == 0, IGNORE_INDEX)  # fmt: skip
        return CausalLMOutput(causal_lm_loss(logits, labels.to(logits.device)), logits)

    @staticmethod
    def encode_captions(captions: Sequence[str]) -> dict:
        """Ids of "<bos> caption <eos>", right-padded: {"input_ids", "attention_mask"} (B, T)."""
        captions = check_strings(captions, "captions")
        return TOKENIZER([f"<bos> {c} <eos>" for c in captions], add_special_tokens=False)

    @torch.no_grad()
    def score_captions(self, images, captions: Sequence[str], batch_size: int = 64):
        """log p(caption | image) of every image with every caption: (B, C), summed over the
        words and <eos> of each caption. argmax over C is zero-shot classification."""
        batch_size = check_int(batch_size, "batch_size", 1)
        tokens = self.encode_captions(captions)
        ids = tokens["input_ids"].to(self.device)  # (C, T)
        mask = tokens["attention_mask"].to(self.device)
        C = len(ids)
        images = check_images(images, "images", self.config.image_size, self.config.in_channels)
        rows = []
        for s in range(0, len(images), batch_size):
            ctx = self.encode_image_tokens(images[s : s + batch_size])  # (b, 1+N, D)
            b = len(ctx)
            logits = self.decode(ctx.repeat_interleave(C, 0), ids.repeat(b, 1), mask.repeat(b, 1))
            logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (b·C, T−1, V)
            # log p(w_{t+1} | w_≤t, image), kept where w_{t+1} is a word or <eos>, not padding
            tok_logp = logp.gather(-1, ids.repeat(b, 1)[:, 1:, None])[..., 0]
            rows.append((tok_logp * mask.repeat(b, 1)[:, 1:]).sum(dim=1).view(b, C))
        return torch.cat(rows)  # (B, C)
