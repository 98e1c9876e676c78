"""The GPT's recipe: the ShapeWorld text it reads, its batches, a short training run, and the
shipped weights' figures and knowledge."""

import math

import numpy as np
import pytest

import minimodels
from minimodels import shapeworld as sw
from minimodels.data.captions import ITALIAN_SHAPES
from minimodels.gpt import GPT, TOKENIZER, GPTConfig
from minimodels.recipes.gpt import (
    encode_batch,
    evaluate_gpt,
    pretraining_texts,
    train_gpt,
    training_batch,
)

TINY = GPTConfig(n_embd=32, n_layer=1, n_head=4, n_positions=48)


@pytest.fixture(scope="module")
def shipped():
    return minimodels.pretrained("gpt")


def test_pretraining_texts_are_captions_or_questions_with_answers():
    scenes = sw.sample_scenes("test", 200, seed=1)
    texts = pretraining_texts(scenes, np.random.default_rng(0))
    assert len(texts) == 200 and all(t.startswith("<bos> ") and t.endswith(" <eos>") for t in texts)
    qa = sum(any(t == f"<bos> {q} {a} <eos>" for q, a in zip(s["questions"], s["answers"]))
             for t, s in zip(texts, scenes))  # fmt: skip
    italian = sum(" un " in t or " una " in t for t in texts)
    assert 0.3 < qa / 200 < 0.6 and 0.05 < italian / 200 < 0.3  # 45 % and 15 % on average
    for t in texts:
        assert "[UNK]" not in TOKENIZER.tokenize(t), t


def test_encode_batch_pads_on_the_right_without_a_loss():
    batch = encode_batch(["<bos> a red circle <eos>", "<bos> yes <eos>"])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 5)
    assert batch["labels"][1, 3:].tolist() == [-100, -100]
    assert batch["labels"][0].tolist() == batch["input_ids"][0].tolist()


def test_training_batches_are_fresh_and_repeatable():
    a, b = training_batch(3, batch_size=8), training_batch(3, batch_size=8)
    assert (a["input_ids"] == b["input_ids"]).all()
    assert (
        a["input_ids"].shape != training_batch(4, batch_size=8)["input_ids"].shape
        or not (a["input_ids"] == training_batch(4, batch_size=8)["input_ids"]).all()
    )


def test_tiny_training_run_lowers_the_loss():
    model, history = train_gpt(steps=40, batch_size=16, config=TINY, progress=False)
    assert isinstance(model, GPT) and not model.training
    assert history[0] > math.log(TINY.vocab_size) - 0.5  # a random model: about log V
    assert np.mean(history[-5:]) < history[0] - 1.0


def test_shipped_gpt_figures_and_knowledge(shipped):
    figures = evaluate_gpt(seed=0, n=100)
    assert figures == evaluate_gpt(seed=0, n=100, model=shipped)
    assert figures["test_perplexity"] == pytest.approx(math.exp(figures["test_loss"]), rel=1e-3)
    fresh = evaluate_gpt(seed=0, n=100, model=GPT(shipped.config))
    assert figures["test_loss"] < 0.5 * fresh["test_loss"]
    # Without an image it can only guess, but a guess of the right kind: a count is a number.
    ids = TOKENIZER(["<bos> how many shapes are there?"], add_special_tokens=False)["input_ids"]
    out = shipped.generate(ids, max_new_tokens=1)
    assert TOKENIZER.decode(out[0, -1:]) in sw.NUMBER_WORDS
    ids = TOKENIZER(["<bos> un piccolo"], add_special_tokens=False)["input_ids"]
    assert (
        TOKENIZER.decode(shipped.generate(ids, max_new_tokens=1)[0, -1:]) in ITALIAN_SHAPES.values()
    )
