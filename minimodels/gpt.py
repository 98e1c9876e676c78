"""A tiny GPT: the decoder-only language model that LLaVA (notebook 07) and the frozen-LM
models of notebook 08 build on.

Radford et al. (2018/2019): a stack of causal (masked) self-attention blocks trained to predict
the next token,

    p(w_1 … w_T) = ∏_t p(w_t | w_<t),      loss = −(1/T) Σ_t log p(w_t | w_<t)

The shipped GPT is pre-trained on ShapeWorld *text only* (captions in English and Italian,
questions with their answers; see minimodels/recipes/gpt.py), so it is the "pre-trained LLM"
that a vision-language model starts from: it knows the words and the grammar of the world, but
has never seen an image.

The public names mirror Hugging Face transformers' causal LMs::

    import minimodels
    from minimodels.gpt import TOKENIZER
    lm = minimodels.pretrained("gpt")
    batch = TOKENIZER(["<bos> a red circle"], add_special_tokens=False)
    out = lm(**batch, labels=batch["input_ids"])    # out.loss, out.logits (B, T, V)
    lm.get_input_embeddings()                       # nn.Embedding(V, C): ids -> vectors
    lm(inputs_embeds=...)                           # skip the embedding (LLaVA splices here)
    lm.generate(batch["input_ids"], max_new_tokens=8)

`GPT.from_hf(GPT2LMHeadModel)` loads transformers' GPT-2 weights into this class (the same
architecture: `HF_GPT2_MODULES` shows which of our modules is which of theirs).

Vocabulary: `TOKENIZER = text.Tokenizer(words=LM_WORDS)`. ShapeWorld's words come first (so
their ids equal those of the shared `text.Tokenizer()` that CLIP uses), then the words that
instructions, task prefixes and the Italian captions need. CLIP's tokenizer is left unchanged.

Shape letters: B batch, T tokens, C width (n_embd), V vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimodels.checks import (
    check_bool,
    check_device,
    check_finite,
    check_float,
    check_ids,
    check_instance,
    check_int,
    check_tensor,
)
from minimodels.layers import TransformerBlock
from minimodels.text import LM_WORDS, Tokenizer

TOKENIZER = Tokenizer(words=LM_WORDS, model_max_length=128)
IGNORE_INDEX = -100  # label of positions that carry no loss (as in Hugging Face)


@dataclass
class GPTConfig:
    vocab_size: int = TOKENIZER.vocab_size  # V
    n_positions: int = 128  # the longest sequence (text + image tokens in LLaVA)
    n_embd: int = 96  # C
    n_layer: int = 3
    n_head: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    activation: str = "gelu"  # the MLP's: "gelu" (exact) or "gelu_tanh" (GPT-2's "gelu_new")
    layer_norm_epsilon: float = 1e-5  # ε in LN(x) = (x − μ) / √(σ² + ε) · γ + β


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
    loss = F.cross_entropy(shift_logits.float(), shift_labels, ignore_index=IGNORE_INDEX)
    # S empty: nothing to learn from, a zero that keeps the graph (instead of 0 / 0 = NaN)
    return torch.where((shift_labels != IGNORE_INDEX).any(), loss, shift_logits.sum() * 0.0)


class GPT(nn.Module):
    """Decoder-only transformer: token + position embeddings, causal blocks, tied LM head."""

    config_class = GPTConfig

    def __init__(self, config: GPTConfig | None = None):
        super().__init__()
        c = GPTConfig() if config is None else check_instance(config, GPTConfig, "config")
        self.config = c
        if c.n_embd % c.n_head:
            raise ValueError(f"n_embd={c.n_embd} must be divisible by n_head={c.n_head}")
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)  # token embedding E: (V, C)
        self.wpe = nn.Embedding(c.n_positions, c.n_embd)  # position embedding: (T_max, C)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.n_embd, c.n_head, c.mlp_ratio, c.dropout, activation=c.activation)
            for _ in range(c.n_layer)
        )
        self.ln_f = nn.LayerNorm(c.n_embd)
        # The LM head is tied to the token embedding (GPT-2): logits = h Eᵀ, no extra matrix.
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = c.layer_norm_epsilon
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    @classmethod
    def from_hf(cls, model) -> GPT:
        """A transformers `GPT2LMHeadModel` (read through its `config` and `state_dict()`) ->
        our GPT with the same weights, on the CPU in float32, in the model's train/eval mode.

        Same logits as transformers' (to float rounding), with two caveats. Positions: ours
        count the real tokens of `attention_mask`; transformers' forward numbers 0 … T−1
        unless given `position_ids` (its `generate` counts real tokens, as ours does), so
        left-padded rows agree once transformers gets position_ids = cumsum(mask) − 1.
        Tokens: generate's eos_token_id and pad_token_id default to *our* TOKENIZER's; pass
        GPT-2's (model.config.eos_token_id, and a pad id) instead.
        """
        hf = getattr(model, "config", None)
        state = model.state_dict() if callable(getattr(model, "state_dict", None)) else {}
        # a GPT2Model (no LM head) has the same config, but no "transformer." in its keys
        if getattr(hf, "model_type", None) != "gpt2" or "transformer.wte.weight" not in state:
            raise TypeError(f"model must be a transformers GPT2LMHeadModel (GPT-2 with its LM "
                            f"head); got {type(model).__name__}")  # fmt: skip
        act = hf.activation_function
        needed = dict(scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
                      reorder_and_upcast_attn=False, add_cross_attention=False)  # fmt: skip
        bad = [f"{k}={getattr(hf, k)!r}" for k, v in needed.items() if getattr(hf, k, v) != v]
        if act not in HF_ACTIVATIONS:
            bad.append(f"activation_function={act!r} (supported: {', '.join(HF_ACTIVATIONS)})")
        head = state.get("lm_head.weight", state["transformer.wte.weight"])
        if not torch.equal(head, state["transformer.wte.weight"]):
            bad.append("an lm_head not tied to wte (tie_word_embeddings=False)")
        if bad:
            raise ValueError(f"GPT.from_hf does not support {'; '.join(bad)}")
        n_inner = hf.n_inner or 4 * hf.n_embd  # the MLP's hidden width (None -> 4C)
        # dropout: ours has one rate and none on the embeddings; GPT-2's resid_pdrop stands in
        config = GPTConfig(vocab_size=hf.vocab_size, n_positions=hf.n_positions,
                           n_embd=hf.n_embd, n_layer=hf.n_layer, n_head=hf.n_head,
                           mlp_ratio=n_inner / hf.n_embd, dropout=hf.resid_pdrop,
                           activation=HF_ACTIVATIONS[act],
                           layer_norm_epsilon=hf.layer_norm_epsilon)  # fmt: skip
        ours = cls(config)
        ours.load_state_dict(state_dict_from_hf(state, hf.n_layer))  # strict: every key filled
        return ours.train(model.training)

    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding table (V, C): what LLaVA's projector must speak to."""
        return self.wte

    def _embed(self, input_ids, inputs_embeds) -> torch.Tensor:
        """The checked input of forward / generate -> embeddings (B, T, C) on the model."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids (B, T) and inputs_embeds (B, T, C)")
        if input_ids is not None:
            ids = check_ids(input_ids, "input_ids", self.config.vocab_size, None, self.device)
            return self.wte(ids.to(self.device))  # E[w]: (B, T, C)
        check_tensor(inputs_embeds, "inputs_embeds", 3, "(B, T, C)", floating=True,
                     model_device=self.device)  # fmt: skip
        check_finite(inputs_embeds, "inputs_embeds")
        if inputs_embeds.shape[-1] != self.config.n_embd:
            raise ValueError(f"inputs_embeds must have shape (B, T, n_embd={self.config.n_embd}); "
                             f"got {tuple(inputs_embeds.shape)}")  # fmt: skip
        return inputs_embeds.to(self.device)

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
        x = self._embed(input_ids, inputs_embeds)  # (B, T, C)
        B, T, _ = x.shape
        if T > self.config.n_positions:
            raise ValueError(f"the input has T={T} tokens, more than n_positions="
                             f"{self.config.n_positions}")  # fmt: skip
        if labels is not None:
            check_tensor(labels, "labels", 2, "(B, T), −100 = ignore", floating=False,
                         model_device=self.device)  # fmt: skip
            if labels.shape != (B, T):
                raise ValueError(f"labels must have the shape of input_ids (B, T) = {(B, T)}; "
                                 f"got {tuple(labels.shape)}")  # fmt: skip
            labels = labels.long()
            ignored = labels.masked_fill(labels == IGNORE_INDEX, 0)
            check_ids(ignored, "labels", self.config.vocab_size, None, self.device)
        keep, padded = self._keep(attention_mask, B, T)
        logits = self._decode(x, keep, padded)  # (B, T, V)
        if labels is None:
            return CausalLMOutput(loss=None, logits=logits)
        return CausalLMOutput(causal_lm_loss(logits, labels.to(self.device)), logits)

    def _keep(self, attention_mask, B: int, T: int) -> tuple[torch.Tensor, bool]:
        """attention_mask -> (keep (B, T) bool on the model, whether any position is padding).

        An all-ones mask is no mask: attention then takes PyTorch's fused causal kernel. The
        mask is read on the CPU only (as the tokenizer makes it); on a GPU it counts as padded.
        """
        if attention_mask is None:
            return torch.ones(B, T, dtype=torch.bool, device=self.device), False
        check_instance(attention_mask, torch.Tensor, "attention_mask")
        check_device(attention_mask, "attention_mask", None, self.device)
        if attention_mask.shape != (B, T):
            raise ValueError(f"attention_mask must have the shape {(B, T)} of input_ids (or "
                             f"inputs_embeds); got {tuple(attention_mask.shape)}")  # fmt: skip
        padded = attention_mask.device.type != "cpu" or not bool(attention_mask.all())
        return attention_mask.to(self.device).bool(), padded  # True = real token

    def _decode(self, x: torch.Tensor, keep: torch.Tensor, padded: bool, caches=None):
        """Embeddings x (B, T, C) of the last T positions -> logits (B, T, V).

        keep (B, P + T): True at the real tokens of every position so far; padded: whether any
        is False. caches: None, or one list per block holding the keys and values of the P
        earlier positions (see layers.MultiHeadAttention's kv_cache), extended in place.
        """
        T = x.shape[1]
        position_ids = (keep.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]  # 0, 1, … per row
        x = x + self.wpe(position_ids)  # h₀ = E[w] + P[t]
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
        after eos_token_id and is then filled with pad_token_id; the output ends at the step
        where the last row stopped.

        Returns (B, T + new) with input_ids, as transformers does; with inputs_embeds only
        the new tokens (B, new).
        """
        check_int(max_new_tokens, "max_new_tokens", 1, 10_000)
        check_bool(do_sample, "do_sample")
        check_float(temperature, "temperature", 0.0, min_inclusive=False)
        top_k = None if top_k is None else check_int(top_k, "top_k", 1)
        seed = None if seed is None else check_int(seed, "seed", 0)
        eos_token_id = None if eos_token_id is None else check_int(eos_token_id, "eos_token_id")
        check_int(pad_token_id, "pad_token_id")
        embeds = self._embed(input_ids, inputs_embeds)  # (B, T, C)
        B, T = embeds.shape[:2]
        if T + max_new_tokens > self.config.n_positions:
            raise ValueError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                             f"n_positions={self.config.n_positions}")  # fmt: skip
        keep, padded = self._keep(attention_mask, B, T)
        generator = None
        if do_sample and seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        was_training = self.training
        self.eval()
        new = []
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        caches = [[] for _ in self.blocks]  # per block: [K, V] of the positions so far
        for _ in range(max_new_tokens):
            logits = self._decode(embeds, keep, padded, caches)[:, -1]  # (B, V)
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
            keep = torch.cat([keep, torch.ones(B, 1, dtype=torch.bool, device=self.device)], 1)
        self.train(was_training)
        out = torch.stack(new, dim=1)  # (B, max_new_tokens)
        if eos_token_id is not None and bool(done.all()):  # one read, after the loop
            out = out[:, : int((out == eos_token_id).long().argmax(1).max()) + 1]
        return out if input_ids is None else torch.cat([input_ids.to(self.device).long(), out], 1)


# ---------------------------------------------------------------------------------------------
# Loading transformers' GPT-2 (GPT.from_hf): the same network under other names
# ---------------------------------------------------------------------------------------------

# transformers GPT-2 module -> ours ({i}: the block). ᵀ: a Conv1D, which stores its weight
# (in, out) and computes x W + b; ours are nn.Linear, weight (out, in): x Wᵀ + b.
HF_GPT2_MODULES = {
    "transformer.wte": "wte",  # token embedding E: (V, C)
    "transformer.wpe": "wpe",  # position embedding P: (T_max, C)
    "transformer.h.{i}.ln_1": "blocks.{i}.ln_1",
    # ᵀ, W_q W_k W_v packed side by side: (C, 3C), bias (3C,)
    "transformer.h.{i}.attn.c_attn": (
        "blocks.{i}.attn.q_proj", "blocks.{i}.attn.k_proj", "blocks.{i}.attn.v_proj"),
    "transformer.h.{i}.attn.c_proj": "blocks.{i}.attn.out_proj",  # ᵀ W_o: (C, C)
    "transformer.h.{i}.ln_2": "blocks.{i}.ln_2",
    "transformer.h.{i}.mlp.c_fc": "blocks.{i}.mlp.0",  # ᵀ W₁: (C, 4C)
    "transformer.h.{i}.mlp.c_proj": "blocks.{i}.mlp.2",  # ᵀ W₂: (4C, C)
    "transformer.ln_f": "ln_f",
    "lm_head": "wte",  # tied: logits = h Eᵀ (the same matrix, checked in from_hf)
}  # fmt: skip
# transformers' activation_function -> our GPTConfig.activation
HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def state_dict_from_hf(state: dict, n_layer: int) -> dict[str, torch.Tensor]:
    """A GPT2LMHeadModel's state_dict -> ours, renamed by HF_GPT2_MODULES; Conv1D weights
    are transposed and c_attn is cut into q, k, v. Other keys (buffers) are left out."""
    ours = {}
    for hf_name, our_names in HF_GPT2_MODULES.items():
        our_names = our_names if isinstance(our_names, tuple) else (our_names,)
        for i in range(n_layer) if "{i}" in hf_name else [0]:
            for param in ("weight", "bias"):
                w = state.get(f"{hf_name.format(i=i)}.{param}")
                if w is None:  # embeddings, lm_head: no bias
                    continue
                if hf_name.rsplit(".", 1)[-1].startswith("c_") and param == "weight":
                    w = w.t()  # Conv1D (in, out) -> nn.Linear (out, in)
                for name, part in zip(our_names, w.chunk(len(our_names), dim=0)):  # q, k, v
                    ours[f"{name.format(i=i)}.{param}"] = part.float()
    return ours
