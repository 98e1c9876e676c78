"""A word-level tokenizer over the ShapeWorld vocabulary.

Real models split text into *subwords* (BPE, WordPiece, SentencePiece) so that any string can
be encoded with a fixed vocabulary. ShapeWorld text uses about eighty words, so one id per word
keeps every example readable; words outside the vocabulary become [UNK] (never an exception).

The call signature mirrors Hugging Face tokenizers::

    tok = Tokenizer()
    batch = tok(["a red circle", "a blue square on the left"], padding=True,
                return_tensors="pt")
    batch["input_ids"]        # (B, L) LongTensor: [CLS] a red circle [SEP] [PAD] ...
    batch["attention_mask"]   # (B, L) 1 for real tokens, 0 for padding
    tok.decode(batch["input_ids"][0])   # 'a red circle'
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from minimodels.checks import check_int
from minimodels.data.captions import italian_words
from minimodels.data.instructions import INSTRUCTION_WORDS
from minimodels.data.world import vocabulary

SPECIAL_TOKENS: tuple[str, ...] = (
    "[PAD]",  # 0: padding (attention_mask = 0 there)
    "[UNK]",  # unknown word
    "[CLS]",  # start of an encoder input; its output summarises the sequence (BERT, ViLBERT)
    "[SEP]",  # end of an encoder input / separator between segments
    "[MASK]",  # the word to predict in masked language modelling
    "<bos>",  # beginning of a decoder (GPT-style) sequence
    "<eos>",  # end of generated text
    "<image>",  # placeholder filled with projected image features (LLaVA)
    "<soi>",  # start of image tokens (DALL-E's stream: text, <soi>, image codes)
)

# The language models' vocabulary (GPT, LLaVA): ShapeWorld's words, the instruction words,
# then Italian (the second caption language).
LM_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(vocabulary() + list(INSTRUCTION_WORDS) + italian_words())
)

_WORD_RE = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Lower-case a text and split it into words and punctuation marks.

    Special tokens written in the text (e.g. "<image>" or "[MASK]") are kept whole.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str; got {type(text).__name__}")
    words = []
    for part in re.split(r"(\[[A-Z]+\]|<[a-z]+>)", text):
        if part in SPECIAL_TOKENS:
            words.append(part)
        else:
            words.extend(_WORD_RE.findall(part.lower()))
    return words


class Tokenizer:
    """Word-level tokenizer: special tokens first, then `words` (default: ShapeWorld's)."""

    def __init__(self, words: Sequence[str] | None = None, model_max_length: int = 64):
        if words is not None and (isinstance(words, str) or not isinstance(words, Sequence)):
            raise TypeError(f"words must be a list of strings or None; got {words!r}")
        words = list(vocabulary() if words is None else words)
        if any(not isinstance(w, str) or not w for w in words):
            raise ValueError("words must be non-empty strings")
        if (
            isinstance(model_max_length, bool)
            or not isinstance(model_max_length, int)
            or not 2 <= model_max_length <= 1_000_000
        ):
            raise ValueError(
                f"model_max_length must be an int in [2, 1000000]; got {model_max_length!r}"
            )
        self.vocab: dict[str, int] = {}
        for w in list(SPECIAL_TOKENS) + words:
            self.vocab.setdefault(w, len(self.vocab))
        self.ids_to_tokens = {i: w for w, i in self.vocab.items()}
        self.model_max_length = model_max_length
        self.pad_token_id = self.vocab["[PAD]"]
        self.unk_token_id = self.vocab["[UNK]"]
        self.cls_token_id = self.vocab["[CLS]"]
        self.sep_token_id = self.vocab["[SEP]"]
        self.mask_token_id = self.vocab["[MASK]"]
        self.bos_token_id = self.vocab["<bos>"]
        self.eos_token_id = self.vocab["<eos>"]
        self.image_token_id = self.vocab["<image>"]
        self.soi_token_id = self.vocab["<soi>"]
        self.special_ids = frozenset(self.vocab[t] for t in SPECIAL_TOKENS)

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={len(self)}, model_max_length={self.model_max_length})"

    # ---- single texts ---------------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """Words of `text`, unknown ones replaced by [UNK]."""
        return [w if w in self.vocab else "[UNK]" for w in split_words(text)]

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.vocab.get(t, self.unk_token_id) for t in tokens]

    def convert_ids_to_tokens(self, ids) -> list[str]:
        ids = self._as_id_list(ids)
        return [self.ids_to_tokens[i] for i in ids]

    def encode(
        self,
        text: str,
        add_special_tokens: bool = True,
        max_length: int | None = None,
        truncation: bool = True,
    ) -> list[int]:
        """Ids of `text`: [CLS] words [SEP] (with add_special_tokens), cut to max_length."""
        ids = self.convert_tokens_to_ids(self.tokenize(text))
        if add_special_tokens:
            ids = [self.cls_token_id] + ids + [self.sep_token_id]
        if max_length is not None:
            if not isinstance(max_length, int) or max_length < 1:
                raise ValueError(f"max_length must be a positive int; got {max_length!r}")
            if len(ids) > max_length:
                if not truncation:
                    raise ValueError(
                        f"text has {len(ids)} tokens, more than max_length={max_length}; "
                        "pass truncation=True to cut it"
                    )
                ids = (
                    ids[: max_length - 1] + [self.sep_token_id]
                    if add_special_tokens
                    else (ids[:max_length])
                )
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of `ids` (a list, a 1-d tensor or array). Punctuation is re-attached."""
        tokens = self.convert_ids_to_tokens(ids)
        if skip_special_tokens:
            tokens = [t for t in tokens if t not in SPECIAL_TOKENS]
        text = " ".join(tokens)
        return re.sub(r" ([,.:?])", r"\1", text)

    def _as_id_list(self, ids) -> list[int]:
        if hasattr(ids, "tolist"):
            if getattr(ids, "ndim", 1) != 1:
                raise ValueError(f"ids must be 1-d; got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        if not isinstance(ids, (list, tuple)):
            raise TypeError(f"ids must be a list of ints or a 1-d tensor; got {type(ids).__name__}")
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f"ids must be ints; got {type(i).__name__} {i!r}")
            if not 0 <= i < len(self):
                raise ValueError(f"token id must be in [0, {len(self)}); got {i}")
            out.append(i)
        return out

    # ---- batches ----------------------------------------------------------------------------

    def __call__(
        self,
        texts,
        padding: bool | str = True,
        truncation: bool = True,
        max_length: int | None = None,
        add_special_tokens: bool = True,
        return_tensors: str | None = "pt",
    ):
        """Encode a text or a list of texts into {"input_ids", "attention_mask"}.

        padding: True / "longest" pads to the longest text, "max_length" pads to max_length
        (default model_max_length), False leaves lists of different lengths (then
        return_tensors must be None). attention_mask is 1 for real tokens, 0 for [PAD].
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence) or len(texts) == 0:
            raise ValueError("texts must be a string or a non-empty list of strings")
        if any(not isinstance(t, str) for t in texts):
            raise TypeError("texts must all be strings")
        if padding not in (True, False, "longest", "max_length", "do_not_pad"):
            raise ValueError(
                "padding must be True, False, 'longest', 'max_length' or 'do_not_pad'; "
                f"got {padding!r}"
            )
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be None or 'pt'; got {return_tensors!r}")
        if max_length is not None:
            check_int(max_length, "max_length", 1, 1_000_000)
        limit = max_length if max_length is not None else self.model_max_length
        ids = [self.encode(t, add_special_tokens, limit, truncation) for t in texts]
        if padding in (True, "longest", "max_length"):
            target = limit if padding == "max_length" else max(len(x) for x in ids)
            mask = [[1] * len(x) + [0] * (target - len(x)) for x in ids]
            ids = [x + [self.pad_token_id] * (target - len(x)) for x in ids]
        else:
            mask = [[1] * len(x) for x in ids]
            if return_tensors is not None and len({len(x) for x in ids}) > 1:
                raise ValueError("texts of different lengths need padding=True for tensors")
        if return_tensors == "pt":  # on the CPU, whatever torch's default device (as HF's)
            return {
                "input_ids": torch.tensor(ids, dtype=torch.long, device="cpu"),
                "attention_mask": torch.tensor(mask, dtype=torch.long, device="cpu"),
            }
        return {"input_ids": ids, "attention_mask": mask}

    def batch_decode(self, batch, skip_special_tokens: bool = True) -> list[str]:
        if hasattr(batch, "ndim") and batch.ndim != 2:
            raise ValueError(f"batch must be 2-d (B, L); got shape {tuple(batch.shape)}")
        return [self.decode(row, skip_special_tokens) for row in batch]
