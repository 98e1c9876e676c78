"""ViLT's recipe: its two training passes over ViLBERT's scenes, training, and the evaluation on
the pairs that ViLBERT's evaluation uses (so the two are comparable)."""

import numpy as np
import pytest
import tiny
import torch
import torch.nn.functional as F

from minimodels.recipes.vilbert import evaluate_vilbert, load_vilbert, training_batch
from minimodels.recipes.vilt import (
    COLOUR_IDS,
    SHAPE_IDS,
    evaluate_vilt,
    load_vilt,
    mask_attribute_words,
    train_vilt,
    vilt_training_batch,
    vilt_training_loss,
)
from minimodels.vilbert import IGNORE_INDEX
from minimodels.vilt import ViLT


def test_mask_attribute_words_masks_one_kind_of_attribute_per_caption(tok):
    caps = ["a red circle above a blue square", "there is a small green cross at the top"] * 200
    t = tok(caps)
    gen = torch.Generator().manual_seed(0)
    ids, labels = mask_attribute_words(t["input_ids"], t["attention_mask"], gen, 1.0, p=0.1)
    masked = ids == tok.mask_token_id
    assert torch.equal(masked, labels != IGNORE_INDEX)  # a label exactly where a word is masked
    assert torch.equal(labels[masked], t["input_ids"][masked])  # the label is the hidden word
    assert torch.equal(ids[~masked], t["input_ids"][~masked])
    special = torch.isin(t["input_ids"], torch.tensor(sorted(tok.special_ids)))
    assert not masked[special].any()  # [CLS], [SEP], [PAD] never
    colours, shapes = torch.isin(t["input_ids"], COLOUR_IDS), torch.isin(t["input_ids"], SHAPE_IDS)
    all_colours = (masked | ~colours).all(1)  # (B,) every colour word of the caption masked
    all_shapes = (masked | ~shapes).all(1)
    none_colours, none_shapes = ~(masked & colours).any(1), ~(masked & shapes).any(1)
    # p_attribute = 1: either all colour words (and no shape word) or the reverse
    assert ((all_colours & none_shapes) ^ (all_shapes & none_colours)).all()
    assert 0.35 < (all_colours & none_shapes).float().mean() < 0.65  # each kind about half
    rate_other = masked[~colours & ~shapes & ~special].float().mean()
    assert abs(rate_other - 0.1) < 0.03, rate_other


def test_training_batch_has_an_unmasked_alignment_pass_and_a_masked_true_caption_pass(tok):
    b = vilt_training_batch(3, batch_size=16, seed=0)
    itm, mlm = b["itm"], b["mlm"]
    reference = training_batch(3, 16, 0)  # ViLBERT's batch of the same step: the same scenes
    assert torch.equal(itm["images"], reference["images"])
    assert torch.equal(mlm["images"], reference["images"])
    assert torch.equal(itm["itm_labels"], reference["itm_labels"])  # same negatives
    assert not (itm["input_ids"] == tok.mask_token_id).any()  # alignment reads whole captions
    assert mlm["itm_labels"].all()  # masked words only in true captions
    assert ((mlm["mlm_labels"] != IGNORE_INDEX).sum() > 0) and (
        (mlm["input_ids"] == tok.mask_token_id) == (mlm["mlm_labels"] != IGNORE_INDEX)
    ).all()
    again = vilt_training_batch(3, batch_size=16, seed=0)
    assert torch.equal(again["mlm"]["input_ids"], mlm["input_ids"])  # deterministic


def test_vilt_training_loss_is_alignment_plus_masked_words():
    torch.manual_seed(0)
    m = ViLT(tiny.VILT).eval()
    batch = vilt_training_batch(0, batch_size=8, seed=0)
    b = batch["itm"]
    itm = F.cross_entropy(m(b["input_ids"], b["images"], attention_mask=b["attention_mask"])
                          .itm_logits, b["itm_labels"])  # fmt: skip
    b = batch["mlm"]
    logits = m(b["input_ids"], b["images"], attention_mask=b["attention_mask"]).mlm_logits
    mlm = F.cross_entropy(logits.flatten(0, 1), b["mlm_labels"].flatten(), ignore_index=-100)
    torch.testing.assert_close(vilt_training_loss(m, batch), itm + mlm)


def test_tiny_training_run_decreases_the_loss():
    model, history = train_vilt(steps=30, batch_size=16, config=tiny.VILT, progress=False,
                                device="cpu")  # fmt: skip
    assert len(history) == 30 and not model.training
    assert np.mean(history[-5:]) < np.mean(history[:5]), history


@pytest.fixture(scope="module")
def shipped_vilt():
    return load_vilt(device="cpu")


def test_evaluate_vilt_is_deterministic_and_sane(shipped_vilt):
    m = evaluate_vilt(seed=3, n=60, model=shipped_vilt)
    assert evaluate_vilt(seed=3, n=60, model=shipped_vilt) == m
    assert m["n_params"] == sum(p.numel() for p in shipped_vilt.parameters())
    for key in ("itm_acc_random", "itm_acc_hard", "itm_binary_acc_hard", "mlm_acc"):
        assert 0.0 <= m[key] <= 1.0, m
    assert evaluate_vilt(seed=4, n=60, model=shipped_vilt) != m  # another seed, other pairs


def test_shipped_vilt_reads_the_image(shipped_vilt):
    """It aligns (well above chance on hard negatives) and its masked words come from the
    image: shown another scene's image, it guesses far worse."""
    m = evaluate_vilt(seed=5, n=200, model=shipped_vilt)
    assert m["itm_acc_random"] > 0.9 and m["itm_acc_hard"] > 0.75, m
    assert m["mlm_acc"] > m["mlm_acc_wrong_image"] + 0.3, m


def test_evaluate_vilt_scores_the_pairs_evaluate_vilbert_uses(shipped_vilt):
    """Same seed, same n: ViLT's itm_acc_hard is the single-stream figure of ViLBERT's."""
    vilbert_figures = evaluate_vilbert(seed=2, n=40, model=load_vilbert("cpu"),
                                       vilt_model=shipped_vilt)  # fmt: skip
    vilt_figures = evaluate_vilt(seed=2, n=40, model=shipped_vilt)
    assert vilt_figures["itm_acc_hard"] == vilbert_figures["itm_acc_hard_single_stream"]
