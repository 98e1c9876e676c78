"""DALL-E's prior (stage 2): a GPT-style transformer that writes image codes after a caption.

Stage 1, the discrete VAE (`minimodels.dvae`), turns an image into an h×w grid of codes in
[0, K). The prior reads text and image codes as one stream

    [text tokens, padded to text_length] <soi> [h·w image codes in raster order]

and learns it by next-token prediction, p(y, z) = ∏_t p(s_t | s_<t), with cross-entropy on the
image codes plus a small weight on the text tokens (DALL-E weighted text 1/8, image 7/8).

Generating an image is sampling the h·w codes one at a time after the prompt and <soi>, then
decoding them with the dVAE. That loop is `minimodels.pipelines.DALLEPipeline`, called like a
diffusers pipeline:

    pipe = minimodels.pretrained("dalle")                        # a DALLEPipeline(prior, dvae)
    images = pipe(["a red circle"], num_images_per_prompt=8,
                  generator=torch.Generator().manual_seed(0))    # (8, 3, 32, 32) in [0, 1]
    best = pipe.rerank(images, "a red circle", minimodels.pretrained("clip"))

Training and evaluation are in `minimodels/recipes/dalle.py` (``python -m minimodels.pretrain
dvae``, then ``... pretrain dalle``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimodels.checks import check_ids, check_tensor

# Stage 1 is importable from here as well, as it was when both stages shared this file.
from minimodels.dvae import DVAE, QUANTIZERS, DVAEConfig, gumbel_softmax, nearest_code  # noqa: F401
from minimodels.layers import TransformerBlock
from minimodels.text import Tokenizer

_TOKENIZER = Tokenizer()


@dataclass
class DALLEConfig:
    text_vocab_size: int = _TOKENIZER.vocab_size
    text_length: int = 16  # text is padded (or cut) to this many tokens
    codebook_size: int = 128  # K: image tokens are text_vocab_size + code
    grid: int = 8  # h = w
    dim: int = 128
    layers: int = 3
    heads: int = 4
    mlp_ratio: float = 3.0
    text_loss_weight: float = 1 / 8  # DALL-E weighted text 1/8 and image 7/8

    @property
    def seq_len(self) -> int:
        return self.text_length + 1 + self.grid**2  # text, <soi>, image codes


class DALLEPrior(nn.Module):
    """A causal transformer over [text (text_length), <soi>, image codes (grid²)].

    One vocabulary holds both: ids < text_vocab_size are the Tokenizer's, id text_vocab_size + j
    is image code j. ``forward(tokens)`` (B, T) -> logits (B, T, V) predicting token t + 1.
    """

    config_class = DALLEConfig

    def __init__(self, config: DALLEConfig | None = None):
        super().__init__()
        self.config = c = config or DALLEConfig()
        if c.dim % c.heads:
            raise ValueError(
                f"config.dim must be divisible by config.heads; got {c.dim}, {c.heads}"
            )
        self.vocab_size = c.text_vocab_size + c.codebook_size
        self.token_embedding = nn.Embedding(self.vocab_size, c.dim)
        self.position_embedding = nn.Parameter(torch.randn(c.seq_len, c.dim) * 0.02)
        self.blocks = nn.ModuleList(
            [TransformerBlock(c.dim, c.heads, mlp_ratio=c.mlp_ratio) for _ in range(c.layers)]
        )
        self.ln_f = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, self.vocab_size, bias=False)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) of the stream, T ≤ seq_len -> logits (B, T, V) of the next token."""
        tokens = check_ids(tokens, "tokens", self.vocab_size, self.config.seq_len, self.device)
        T = tokens.shape[1]
        x = self.token_embedding(tokens.to(self.device)) + self.position_embedding[:T]  # (B,T,C)
        for block in self.blocks:
            x = block(x, is_causal=True)  # position t sees 0..t only
        return self.head(self.ln_f(x))  # (B, T, V)

    def forward_cached(self, tokens: torch.Tensor, cache: list) -> torch.Tensor:
        """`forward` for the next tokens only, given the keys and values of the earlier ones.

        tokens (B, t) sit at positions P..P+t−1, where P is how many tokens `cache` already
        holds (start with ``cache = []``); their keys and values are appended to `cache`. The
        logits (B, t, V) equal those of ``forward`` on the whole sequence, at a fraction of
        the cost: sampling 256 codes one by one re-reads the cache instead of re-running every
        earlier position at every step (the KV cache of every autoregressive sampler).
        """
        P = cache[0][0].shape[2] if cache else 0
        T = tokens.shape[1]
        if P + T > self.config.seq_len:
            raise ValueError(
                f"the cache holds {P} positions; {T} more exceed {self.config.seq_len}"
            )
        if not cache:
            cache.extend([] for _ in self.blocks)  # one [K, V] per layer
        x = self.token_embedding(tokens.to(self.device)) + self.position_embedding[P : P + T]
        for block, layer_cache in zip(self.blocks, cache):
            x = block(x, is_causal=True, kv_cache=layer_cache)  # position P + t sees 0..P + t
        return self.head(self.ln_f(x))  # (B, T, V)

    def text_tokens(self, prompts) -> torch.Tensor:
        """Prompts -> (B, text_length) ids: [CLS] words [SEP] [PAD]..., cut to text_length."""
        batch = _TOKENIZER(prompts, padding="max_length", max_length=self.config.text_length)
        return batch["input_ids"]

    def sequence(self, prompts, codes: torch.Tensor) -> torch.Tensor:
        """The training stream (B, seq_len): text, <soi>, codes + text_vocab_size."""
        check_tensor(codes, "codes", layout="(B, h, w)", floating=False, nonempty=False)
        text = self.text_tokens(prompts)  # (B, L)
        if len(codes) != len(text):
            raise ValueError(f"codes must hold one grid per prompt ({len(text)}); got {len(codes)}")
        soi = torch.full((len(text), 1), _TOKENIZER.soi_token_id, dtype=torch.long)
        image = codes.reshape(len(codes), -1).long().cpu() + self.config.text_vocab_size  # (B, h·w)
        return torch.cat([text, soi, image], 1)

    def loss(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy: image positions weighted 1, text (non-padding) `text_loss_weight`."""
        c = self.config
        tokens = tokens.to(self.device)
        logits = self(tokens[:, :-1])  # (B, T-1, V): predicts tokens[:, 1:]
        target = tokens[:, 1:]
        ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # (B, T-1)
        L = c.text_length
        text_ce, text_mask = ce[:, : L - 1], target[:, : L - 1] != _TOKENIZER.pad_token_id
        image_ce = ce[:, L:]  # targets are the grid² image codes
        text_loss = (text_ce * text_mask).sum() / text_mask.sum().clamp_min(1)
        image_loss = image_ce.mean()
        return {
            "loss": image_loss + c.text_loss_weight * text_loss,  # −log p(z | y) + w · −log p(y)
            "image": image_loss,
            "text": text_loss,
        }
