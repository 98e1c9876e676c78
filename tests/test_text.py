"""Tests for minimodels.text: the word-level tokenizer over the ShapeWorld vocabulary."""

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minimodels import shapeworld as sw
from minimodels.text import SPECIAL_TOKENS, Tokenizer, split_words


@pytest.fixture(scope="module")
def shapeworld_texts():
    texts = []
    for sc in sw.sample_scenes("train", 150, seed=0) + sw.sample_scenes("heldout", 50, seed=0):
        texts += [sc["caption"], *sc["questions"], *sc["answers"]]
        texts += [sw.describe(sc, t) for t in range(sw.NUM_TEMPLATES)]
        texts += [e for e, _ in sw.referring_expressions(sc)]
    return texts


# ------------------------------------------------------------------------------------------
# Vocabulary and special tokens
# ------------------------------------------------------------------------------------------


def test_special_tokens(tok):
    ids = [tok.vocab[t] for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS)
    assert tok.vocab["[PAD]"] == tok.pad_token_id == 0
    named = {
        "[UNK]": tok.unk_token_id,
        "[CLS]": tok.cls_token_id,
        "[SEP]": tok.sep_token_id,
        "[MASK]": tok.mask_token_id,
        "<bos>": tok.bos_token_id,
        "<eos>": tok.eos_token_id,
        "<image>": tok.image_token_id,
        "<soi>": tok.soi_token_id,
    }
    for t, i in named.items():
        assert tok.vocab[t] == i
        assert tok.convert_ids_to_tokens([i]) == [t]
    assert tok.special_ids == frozenset(ids)


def test_vocab_size(tok):
    words = sw.vocabulary()
    assert len(set(words)) == len(words)
    assert len(tok) == tok.vocab_size == len(SPECIAL_TOKENS) + len(words)
    assert sorted(tok.vocab.values()) == list(range(len(tok)))
    for w in words:
        assert tok.tokenize(w) == [w]
        assert tok.convert_ids_to_tokens(tok.convert_tokens_to_ids([w])) == [w]
    assert "vocab_size" in repr(tok)


def test_custom_words():
    t = Tokenizer(["hello", "world", "hello"], model_max_length=8)
    assert len(t) == len(SPECIAL_TOKENS) + 2
    assert t.tokenize("Hello there, world") == ["hello", "[UNK]", "[UNK]", "world"]
    with pytest.raises(ValueError, match="words"):
        Tokenizer(["ok", ""])
    with pytest.raises(ValueError, match="model_max_length"):
        Tokenizer(model_max_length=1)


# ------------------------------------------------------------------------------------------
# Single texts
# ------------------------------------------------------------------------------------------


def test_split_words():
    assert split_words("Is the Red circle above the <image>?") == [
        "is",
        "the",
        "red",
        "circle",
        "above",
        "the",
        "<image>",
        "?",
    ]
    assert split_words("there are two shapes: a [MASK], and") == [
        "there",
        "are",
        "two",
        "shapes",
        ":",
        "a",
        "[MASK]",
        ",",
        "and",
    ]
    with pytest.raises(TypeError, match="text"):
        split_words(None)


def test_encode_adds_cls_and_sep(tok):
    ids = tok.encode("a red circle")
    assert ids == [
        tok.cls_token_id,
        tok.vocab["a"],
        tok.vocab["red"],
        tok.vocab["circle"],
        tok.sep_token_id,
    ]
    assert tok.encode("a red circle", add_special_tokens=False) == ids[1:-1]
    assert tok.decode(ids, skip_special_tokens=False) == "[CLS] a red circle [SEP]"


def test_round_trip_shapeworld_text(tok, shapeworld_texts):
    assert any("?" in t for t in shapeworld_texts)
    assert any(":" in t for t in shapeworld_texts)
    assert any("," in t for t in shapeworld_texts)
    for text in shapeworld_texts:
        ids = tok.encode(text)
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids) == text
        assert tok.decode(torch.tensor(ids)) == text
        assert tok.decode(np.array(ids)) == text


def test_unknown_words_become_unk(tok):
    assert tok.tokenize("a magenta hexagon!") == ["a", "[UNK]", "[UNK]", "[UNK]"]
    ids = tok.encode("a magenta hexagon!")
    assert ids[1:-1] == [tok.vocab["a"]] + [tok.unk_token_id] * 3
    assert tok.decode(ids) == "a"  # [UNK] is a special token, skipped
    assert tok.decode(ids, skip_special_tokens=False) == "[CLS] a [UNK] [UNK] [UNK] [SEP]"
    assert tok.encode("") == [tok.cls_token_id, tok.sep_token_id]


def test_special_tokens_written_in_text(tok):
    ids = tok.encode("<image> what color is the [MASK]?", add_special_tokens=False)
    assert ids[0] == tok.image_token_id
    assert ids[-2] == tok.mask_token_id
    assert ids[-1] == tok.vocab["?"]
    assert tok.encode("<bos> a red circle <eos>", add_special_tokens=False) == [
        tok.bos_token_id,
        tok.vocab["a"],
        tok.vocab["red"],
        tok.vocab["circle"],
        tok.eos_token_id,
    ]
    # Look-alikes are not special tokens.
    assert tok.image_token_id not in tok.encode("<IMAGE> <foo> [mask]")
    assert tok.mask_token_id not in tok.encode("<IMAGE> <foo> [mask]")


def test_truncation(tok):
    text = "a small red circle on the left and a large blue square at the top"
    full = tok.encode(text)
    assert len(full) == 17
    for max_length in (1, 2, 5, 16, 17, 40):
        ids = tok.encode(text, max_length=max_length)
        assert len(ids) == min(max_length, len(full))
        assert ids[-1] == tok.sep_token_id
        if max_length >= 2:
            assert ids[:-1] == full[: len(ids) - 1]
    assert tok.encode(text, add_special_tokens=False, max_length=3) == full[1:4]
    with pytest.raises(ValueError, match="truncation"):
        tok.encode(text, max_length=5, truncation=False)
    assert tok.encode(text, max_length=17, truncation=False) == full
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="max_length"):
            tok.encode(text, max_length=bad)


def test_convert_ids_to_tokens_checks_range(tok):
    n = len(tok)
    assert tok.convert_ids_to_tokens([0, n - 1])[0] == "[PAD]"
    for bad in (n, -1, 10**6):
        with pytest.raises(ValueError, match=re.escape(f"[0, {n})")):
            tok.convert_ids_to_tokens([bad])
        with pytest.raises(ValueError, match=re.escape(f"[0, {n})")):
            tok.decode(torch.tensor([tok.cls_token_id, bad]))
    with pytest.raises(TypeError, match="ids"):
        tok.convert_ids_to_tokens([1.0])
    with pytest.raises(TypeError, match="ids"):
        tok.convert_ids_to_tokens([True])
    with pytest.raises(TypeError, match="ids"):
        tok.decode("a red circle")
    with pytest.raises(ValueError, match="1-d"):
        tok.decode(torch.zeros(2, 3, dtype=torch.long))


# ------------------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------------------


def test_batch_padding(tok):
    texts = ["a red circle", "a blue square on the left", "yes"]
    out = tok(texts)
    ids, mask = out["input_ids"], out["attention_mask"]
    lengths = [len(tok.encode(t)) for t in texts]
    assert ids.dtype == torch.long and mask.dtype == torch.long
    assert ids.shape == mask.shape == (3, max(lengths))
    for row, m, n, text in zip(ids, mask, lengths, texts):
        assert m.tolist() == [1] * n + [0] * (ids.shape[1] - n)
        assert row[:n].tolist() == tok.encode(text)
        assert (row[n:] == tok.pad_token_id).all()
    assert tok.batch_decode(ids) == texts
    assert torch.equal(tok(texts, padding="longest")["input_ids"], ids)

    fixed = tok(texts, padding="max_length", max_length=12)
    assert fixed["input_ids"].shape == (3, 12)
    assert fixed["attention_mask"].sum(1).tolist() == lengths
    assert tok.batch_decode(fixed["input_ids"]) == texts
    assert tok(texts, padding="max_length")["input_ids"].shape == (3, tok.model_max_length)

    single = tok("a red circle")
    assert single["input_ids"].shape == (1, 5)
    assert single["attention_mask"].tolist() == [[1] * 5]


def test_batch_without_padding_and_lists(tok):
    texts = ["a red circle", "yes"]
    out = tok(texts, padding=False, return_tensors=None)
    assert out["input_ids"] == [tok.encode(t) for t in texts]
    assert out["attention_mask"] == [[1] * 5, [1] * 3]
    assert tok.batch_decode(out["input_ids"]) == texts
    same = tok(["yes", "no"], padding=False)
    assert same["input_ids"].shape == (2, 3)
    with pytest.raises(ValueError, match="padding"):
        tok(texts, padding=False)
    with pytest.raises(ValueError, match="padding"):
        tok(texts, padding="longestt")
    with pytest.raises(ValueError, match="return_tensors"):
        tok(texts, return_tensors="np")
    with pytest.raises(ValueError, match="texts"):
        tok([])
    with pytest.raises(TypeError, match="texts"):
        tok(["ok", 3])


def test_batch_truncation(tok):
    texts = ["a small red circle on the left and a large blue square at the top", "no"]
    out = tok(texts, max_length=6)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == (2, 6)
    assert ids[0, -1].item() == tok.sep_token_id
    assert mask[0].tolist() == [1] * 6
    assert mask[1].tolist() == [1, 1, 1, 0, 0, 0]
    assert tok.batch_decode(ids) == ["a small red circle", "no"]
    with pytest.raises(ValueError, match="truncation"):
        tok(texts, max_length=6, truncation=False)
    # Every row fits model_max_length by default.
    long = " ".join(["red"] * 200)
    assert tok([long])["input_ids"].shape == (1, tok.model_max_length)


def test_batch_decode(tok):
    texts = ["is there a red circle?", "there are two shapes: a red circle and a blue square"]
    ids = tok(texts)["input_ids"]
    assert tok.batch_decode(ids) == texts
    assert tok.batch_decode(ids.numpy()) == texts
    raw = tok.batch_decode(ids, skip_special_tokens=False)
    assert raw[0].startswith("[CLS] is there") and raw[0].endswith("[PAD]")
    with pytest.raises(ValueError, match="2-d"):
        tok.batch_decode(ids[0])


# ------------------------------------------------------------------------------------------
# Properties
# ------------------------------------------------------------------------------------------


TOK = Tokenizer()


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=60))
def test_any_text_tokenizes(text):
    tok = TOK
    tokens = tok.tokenize(text)
    assert all(t in tok.vocab for t in tokens)
    assert len(tokens) == len(split_words(text))
    ids = tok.encode(text)
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert all(0 <= i < len(tok) for i in ids)
    # Decoding without skipping specials and re-encoding gives the same ids.
    again = tok.encode(tok.decode(ids, skip_special_tokens=False), add_special_tokens=False)
    assert again == ids
    batch = tok([text, "a red circle"], max_length=8)
    assert batch["input_ids"].shape[1] <= 8


@settings(max_examples=40, deadline=None)
@given(words=st.lists(st.from_regex(r"[b-hj-z]{9,12}", fullmatch=True), min_size=1, max_size=6))
def test_unknown_words_map_to_unk(words):
    tok = TOK
    assert all(w not in tok.vocab for w in words)  # no ShapeWorld word is 9+ letters of these
    assert tok.tokenize(" ".join(words)) == ["[UNK]"] * len(words)


@settings(max_examples=40, deadline=None)
@given(words=st.lists(st.sampled_from(sw.vocabulary()), min_size=1, max_size=20))
def test_vocabulary_sequences_round_trip(words):
    tok = TOK
    ids = tok.encode(" ".join(words))
    assert tok.convert_ids_to_tokens(ids[1:-1]) == words
    assert tok.encode(tok.decode(ids)) == ids
