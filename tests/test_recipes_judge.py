"""The judge's recipe: its training targets and batches, and the shipped judge's accuracy."""

import pytest
import torch

import minimodels
from minimodels import shapeworld as sw
from minimodels.judge import COLOR_CLASSES, Judge
from minimodels.recipes.judge import judge_accuracy, targets, training_batch


@pytest.fixture(scope="module")
def judge():
    return minimodels.pretrained("judge", device="cpu")


def test_shipped_judge_reads_test_images(judge):
    metrics = judge_accuracy(judge, seed=77, n=400)
    assert metrics["accuracy_color"] >= 0.99, metrics
    assert metrics["accuracy_shape"] >= 0.99, metrics
    assert metrics["accuracy_count"] >= 0.99, metrics


def test_judge_reads_heldout_compositions(judge):
    metrics = judge_accuracy(judge, seed=5, n=300, split="heldout")
    assert min(metrics.values()) >= 0.97, metrics


def test_untrained_judge_is_not_accurate():
    # The accuracy test above is meaningful: a random judge fails it.
    torch.manual_seed(0)
    metrics = judge_accuracy(Judge(), seed=77, n=100)
    assert metrics["accuracy_shape"] < 0.5


def test_targets_encode_scenes():
    scene = sw.make_scene(
        [{"shape": "cross", "color": "cyan", "size": "small", "position": "bottom right"}]
    )
    t = targets([scene])
    assert t["count"].tolist() == [1]
    assert t["color"][0, 8] == COLOR_CLASSES.index("cyan")
    assert (t["color"][0, :8] == 0).all()


def test_training_batch_mixes_crowded_and_empty_images_in_range():
    x, tgt = training_batch(3, batch_size=64, seed=0)
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    counts = tgt["count"]
    assert (counts == 0).sum() == 64 // 32  # the empty images at the end
    assert (counts >= 4).sum() >= 64 // 8  # the crowded scenes
    again, _ = training_batch(3, batch_size=64, seed=0)
    assert torch.equal(x, again)
