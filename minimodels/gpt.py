"""A tiny GPT: the decoder-only language model that LLaVA (notebook 07) and the frozen-LM
models of notebook 08 build on.

Radford et al. (2018/2019): a stack of causal (masked) self-attention blocks trained to predict
the next token,

    p(w_1 … w_T) = ∏_t p(w_t | w_<t),      loss = −(1/T) Σ_t log p(w_t | w_<t)

Here it is pre-trained on ShapeWorld *text only* (captions in English and Italian, questions
with their answers), so it is the "pre-trained LLM" that a vision-language model starts from:
it knows the words and the grammar of the world, but has never seen an image.

The public names mirror Hugging Face transformers' causal LMs::

    from minimodels import gpt
    lm = gpt.load_pretrained()                      # or minimodels.pretrained("gpt")
    tok = gpt.TOKENIZER                             # the LM's own vocabulary (see below)
    batch = tok(["<bos> a red circle"], add_special_tokens=False)
    out = lm(**batch, labels=batch["input_ids"])    # out.loss, out.logits (B, T, V)
    lm.get_input_embeddings()                       # nn.Embedding(V, C): ids -> vectors
    lm(inputs_embeds=...)                           # skip the embedding (LLaVA splices here)
    lm.generate(batch["input_ids"], max_new_tokens=8)

Vocabulary: `TOKENIZER = text.Tokenizer(words=LM_WORDS)`. ShapeWorld's words come first (so
their ids equal those of the shared `text.Tokenizer()` that CLIP uses), then the words that
instructions, task prefixes and the Italian captions need. CLIP's tokenizer is left unchanged.

Shape letters: B batch, T tokens, C width (n_embd), V vocabulary size.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from minimodels import shapeworld as sw
from minimodels.checks import check_device
from minimodels.data.captions import italian_caption
from minimodels.layers import TransformerBlock
from minimodels.text import LM_WORDS, Tokenizer

# ----------------------------------------------------------------------------------------------
# The LM's vocabulary: ShapeWorld's words, then instruction words, then Italian
# ----------------------------------------------------------------------------------------------

TOKENIZER = Tokenizer(words=LM_WORDS, model_max_length=128)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


@dataclass
class GPTConfig:
    vocab_size: int = TOKENIZER.vocab_size  # V
    n_positions: int = 128  # the longest sequence (text + image tokens in LLaVA)
    n_embd: int = 96  # C
    n_layer: int = 3
    n_head: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd must be divisible by n_head; got n_embd={self.n_embd}, "
                f"n_head={self.n_head}"
            )


@dataclass
class CausalLMOutput:
    """What `GPT.forward` returns (the fields of transformers' CausalLMOutput)."""

    loss: torch.Tensor | None  # mean cross-entropy over positions whose label is not −100
    logits: torch.Tensor  # (B, T, V): scores of the next token at every position


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token loss as in transformers: position t predicts labels[t+1]; −100 is ignored.

    loss = −(1/|S|) Σ_{t∈S} log softmax(logits_t)[labels_{t+1}],  S = {t : labels_{t+1} ≠ −100}
    """
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])  # (B·(T−1), V)
    shift_labels = labels[:, 1:].reshape(-1)  # (B·(T−1),)
    if not (shift_labels != -100).any():
        return shift_logits.sum() * 0.0  # nothing to learn from: a zero that keeps the graph
    return F.cross_entropy(shift_logits.float(), shift_labels, ignore_index=-100)


def _check_ids(x, name: str, vocab_size: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a LongTensor (B, T); got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have shape (B, T) with B, T ≥ 1; got {tuple(x.shape)}")
    if x.dtype.is_floating_point or x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must hold integer token ids; got dtype {x.dtype}")
    check_device(x, name, None)
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi >= vocab_size:
        raise ValueError(
            f"{name} must lie in [0, vocab_size={vocab_size}); got ids in [{lo}, {hi}] "
            "(encoded with another tokenizer? use gpt.TOKENIZER)"
        )
    return x.long()


class GPT(nn.Module):
    """Decoder-only transformer: token + position embeddings, causal blocks, tied LM head."""

    config_class = GPTConfig

    def __init__(self, config: GPTConfig | None = None):
        super().__init__()
        self.config = c = config if config is not None else GPTConfig()
        if not isinstance(c, GPTConfig):
            raise TypeError(f"config must be a GPTConfig; got {type(c).__name__}")
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)  # token embedding E: (V, C)
        self.wpe = nn.Embedding(c.n_positions, c.n_embd)  # position embedding: (T_max, C)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.n_embd, c.n_head, c.mlp_ratio, c.dropout) for _ in range(c.n_layer)
        )
        self.ln_f = nn.LayerNorm(c.n_embd)
        # The LM head is tied to the token embedding (GPT-2): logits = h Eᵀ, no extra matrix.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding table (V, C): what LLaVA's projector must speak to."""
        return self.wte

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        """input_ids (B, T) or inputs_embeds (B, T, C), not both.

        attention_mask (B, T): 1 at real tokens, 0 at padding (left or right). Positions count
        real tokens only, so a left-padded prompt gets the same positions as an unpadded one.
        labels (B, T): usually the input ids, −100 where no loss is wanted; shifted inside.
        """
        c = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids (B, T) and inputs_embeds (B, T, C)")
        if input_ids is not None:
            ids = _check_ids(input_ids, "input_ids", c.vocab_size).to(self.device)
            x = self.wte(ids)  # (B, T, C)
        else:
            if not isinstance(inputs_embeds, torch.Tensor) or not inputs_embeds.is_floating_point():
                raise TypeError("inputs_embeds must be a float tensor (B, T, C)")
            if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != c.n_embd:
                raise ValueError(
                    f"inputs_embeds must have shape (B, T, n_embd={c.n_embd}); got "
                    f"{tuple(inputs_embeds.shape)}"
                )
            x = inputs_embeds.to(self.device)
        B, T, _ = x.shape
        if T > c.n_positions:
            raise ValueError(f"sequence has T={T} tokens, more than n_positions={c.n_positions}")
        if attention_mask is None:
            keep = torch.ones(B, T, dtype=torch.bool, device=self.device)
        else:
            if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (
                B,
                T,
            ):
                got = getattr(attention_mask, "shape", type(attention_mask).__name__)
                raise ValueError(f"attention_mask must have shape {(B, T)}; got {got}")
            keep = attention_mask.to(self.device).bool()  # (B, T) True = real token
        logits = self._decode(x, keep)  # (B, T, V)
        loss = None
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (B, T):
                got = getattr(labels, "shape", type(labels).__name__)
                raise ValueError(
                    f"labels must have the shape of input_ids {(B, T)} (−100 = ignore); got {got}"
                )
            check_device(labels, "labels", None)
            if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
                raise TypeError(f"labels must hold integer token ids; got {labels.dtype}")
            if ((labels < 0) & (labels != -100)).any() or (labels >= self.config.vocab_size).any():
                raise ValueError(
                    f"labels must be token ids in [0, {self.config.vocab_size}) or -100 (ignore)"
                )
            loss = causal_lm_loss(logits, labels.to(self.device).long())
        return CausalLMOutput(loss=loss, logits=logits)

    def _decode(self, x: torch.Tensor, keep: torch.Tensor, caches: list | None = None):
        """Embeddings x (B, T, C) of the last T positions -> logits (B, T, V).

        keep (B, P + T): True at the real tokens of every position so far. caches: None, or
        one list per block holding the keys and values of the P earlier positions (see
        layers.MultiHeadAttention's kv_cache), extended in place.
        """
        T = x.shape[1]
        position_ids = (keep.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]  # 0, 1, … per row
        x = x + self.wpe(position_ids)  # h₀ = E[w] + P[t]
        padded = not bool(keep.all())
        for i, block in enumerate(self.blocks):
            # causal: token t sees tokens ≤ t; padding keys are hidden as well
            x = block(x, key_padding_mask=keep if padded else None, is_causal=True,
                      kv_cache=None if caches is None else caches[i])  # fmt: skip
        return F.linear(self.ln_f(x), self.wte.weight)  # logits = LN(h) Eᵀ: (B, T, V)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        eos_token_id: int | None = TOKENIZER.eos_token_id,
        pad_token_id: int = TOKENIZER.pad_token_id,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Continue a batch of prompts token by token, with a KV cache: the prompt is run
        once, then each step feeds only the newest token.

        Greedy (argmax) by default; do_sample=True draws from softmax(logits / temperature),
        restricted to the top_k tokens if given; `seed` makes sampling repeatable. Prompts of
        different lengths must be LEFT-padded (attention_mask 0 at the padding). A row stops
        after eos_token_id and is then filled with pad_token_id.

        Returns (B, T + new) with input_ids, as transformers does; with inputs_embeds only
        the new tokens (B, new).
        """
        _check_generation_args(max_new_tokens, do_sample, temperature, top_k, seed)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids (B, T) and inputs_embeds (B, T, C)")
        if input_ids is not None:
            ids = _check_ids(input_ids, "input_ids", self.config.vocab_size).to(self.device)
            embeds = self.wte(ids)
        else:
            embeds = inputs_embeds.to(self.device)
            if embeds.ndim != 3:
                raise ValueError(f"inputs_embeds must be (B, T, C); got {tuple(embeds.shape)}")
        B, T = embeds.shape[:2]
        if T + max_new_tokens > self.config.n_positions:
            raise ValueError(
                f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                f"n_positions={self.config.n_positions}"
            )
        mask = (
            torch.ones(B, T, dtype=torch.long, device=self.device)
            if attention_mask is None
            else attention_mask.to(self.device).long()
        )
        if tuple(mask.shape) != (B, T):
            raise ValueError(f"attention_mask must have shape {(B, T)}; got {tuple(mask.shape)}")
        generator = None
        if do_sample and seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        was_training = self.training
        self.eval()
        new = []
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        caches = [[] for _ in self.blocks]  # per block: [K, V] of the positions so far
        for _ in range(max_new_tokens):
            logits = self._decode(embeds, mask.bool(), caches)[:, -1]  # (B, V)
            if do_sample:
                logits = logits / temperature  # softmax(z / τ)
                if top_k is not None:
                    kth = logits.topk(min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = logits.float().softmax(-1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
            else:
                nxt = logits.argmax(-1)  # (B,)
            nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
            new.append(nxt)
            if eos_token_id is not None:
                done = done | (nxt == eos_token_id)
            embeds = self.wte(nxt)[:, None]  # (B, 1, C): the cache holds the rest
            mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=mask.device)], 1)
            if done.all():
                break
        self.train(was_training)
        out = torch.stack(new, dim=1)  # (B, new)
        return out if input_ids is None else torch.cat([ids, out], dim=1)


def _check_generation_args(max_new_tokens, do_sample, temperature, top_k, seed) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral):
        raise TypeError(f"max_new_tokens must be an int ≥ 1; got {max_new_tokens!r}")
    if not 1 <= max_new_tokens <= 10_000:
        raise ValueError(f"max_new_tokens must be in [1, 10000]; got {max_new_tokens}")
    if not isinstance(do_sample, bool):
        raise TypeError(f"do_sample must be a bool; got {do_sample!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a positive number; got {temperature!r}")
    if not 0 < temperature < float("inf"):
        raise ValueError(f"temperature must be a finite number > 0; got {temperature}")
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1
    ):
        raise ValueError(f"top_k must be None or an int ≥ 1; got {top_k!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be None or a non-negative int; got {seed!r}")


# ----------------------------------------------------------------------------------------------
# Pre-training on ShapeWorld text
# ----------------------------------------------------------------------------------------------


def pretraining_texts(scenes: Sequence[dict], rng: np.random.Generator) -> list[str]:
    """One plain-text document per scene: a caption (any English template, or the Italian
    one), or one of its questions followed by the answer. No image is involved."""
    texts = []
    for s in scenes:
        kind = rng.random()
        if kind < 0.4:
            text = sw.describe(s, rng=rng)
        elif kind < 0.55:
            text = italian_caption(s)
        else:
            i = int(rng.integers(len(s["questions"])))
            text = f"{s['questions'][i]} {s['answers'][i]}"
        texts.append(f"<bos> {text} <eos>")
    return texts


def encode_batch(texts: Sequence[str]) -> dict:
    """Right-padded ids with labels = ids and −100 at the padding."""
    batch = TOKENIZER(list(texts), add_special_tokens=False, padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return {**batch, "labels": labels}


def training_batch(step: int, batch_size: int = 64, seed: int = 0) -> dict:
    """Fresh ShapeWorld text for step `step` (scene seeds apart from evaluation seeds)."""
    stream = 2_000_000 * (seed + 1) + step
    scenes = sw.sample_scenes("train", batch_size, seed=stream)
    return encode_batch(pretraining_texts(scenes, np.random.default_rng([seed, step, 11])))


def lm_training_loss(model: GPT, batch: dict) -> torch.Tensor:
    return model(**batch).loss


def train_gpt(
    steps: int = 1200,
    batch_size: int = 64,
    seed: int = 0,
    lr: float = 3e-3,
    config: GPTConfig | None = None,
    progress: bool = True,
    device=None,
) -> tuple[GPT, list[float]]:
    """Pre-train a GPT on ShapeWorld text from scratch; returns (model in eval mode, losses)."""
    from minimodels.train import fit, get_device, seed_everything

    seed_everything(seed)
    model = GPT(config or GPTConfig()).to(get_device(device))
    history = fit(
        model, lm_training_loss, lambda step: training_batch(step, batch_size, seed),
        steps=steps, lr=lr, warmup=min(50, steps // 2), cosine=True, weight_decay=0.01,
        progress=progress, desc="gpt",
    )  # fmt: skip
    model.eval()
    return model, history


@torch.no_grad()
def evaluate_gpt(model: GPT, seed: int = 0, n: int = 500) -> dict:
    """Next-token loss and perplexity on fresh `test` scenes' text."""
    model.eval()
    scenes = sw.sample_scenes("test", n, seed=seed)
    batch = encode_batch(pretraining_texts(scenes, np.random.default_rng([seed, 5])))
    loss = model(**batch).loss.item()
    return {"test_loss": round(loss, 4), "test_perplexity": round(float(np.exp(loss)), 3)}


def load_pretrained(device=None) -> GPT:
    """The shipped GPT (minimodels/weights/gpt.safetensors), made by `pretrain gpt`."""
    from minimodels.checkpoint import load_model, weights_path

    return load_model(GPT, weights_path("gpt"), device=device)
