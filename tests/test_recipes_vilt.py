"""ViLT's recipe: its loss on ViLBERT's batches, training, and the evaluation on the pairs that
ViLBERT's evaluation uses (so the two are comparable)."""

import numpy as np
import pytest
import tiny
import torch

from minimodels.recipes.vilbert import evaluate_vilbert, load_vilbert, training_batch
from minimodels.recipes.vilt import evaluate_vilt, load_vilt, train_vilt, vilt_training_loss
from minimodels.vilt import ViLT


def test_vilt_training_loss_is_alignment_plus_masked_words():
    torch.manual_seed(0)
    m = ViLT(tiny.VILT).eval()
    batch = training_batch(0, batch_size=8, seed=0)
    loss = vilt_training_loss(m, batch)
    assert torch.isfinite(loss)
    out = m(batch["input_ids"], batch["images"], attention_mask=batch["attention_mask"])
    itm = torch.nn.functional.cross_entropy(out.itm_logits, batch["itm_labels"])
    assert loss.item() > itm.item()  # the masked-word loss is added (and positive)


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


def test_evaluate_vilt_scores_the_pairs_evaluate_vilbert_uses(shipped_vilt):
    """Same seed, same n: ViLT's itm_acc_hard is the single-stream figure of ViLBERT's."""
    vilbert_figures = evaluate_vilbert(seed=2, n=40, model=load_vilbert("cpu"),
                                       vilt_model=shipped_vilt)  # fmt: skip
    vilt_figures = evaluate_vilt(seed=2, n=40, model=shipped_vilt)
    assert vilt_figures["itm_acc_hard"] == vilbert_figures["itm_acc_hard_single_stream"]
