"""The shipped judge, `pretrained`, `evaluate` and the viz helpers."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import minimodels
from minimodels import shapeworld as sw
from minimodels import viz
from minimodels.judge import COLOR_CLASSES, Judge, prepare_images, targets


@pytest.fixture(scope="module")
def judge():
    return minimodels.pretrained("judge", device="cpu")


def test_shipped_judge_reads_test_images(judge):
    from minimodels.judge import evaluate_judge

    metrics = evaluate_judge(judge, seed=77, n=400)
    assert metrics["accuracy_color"] >= 0.99, metrics
    assert metrics["accuracy_shape"] >= 0.99, metrics
    assert metrics["accuracy_count"] >= 0.99, metrics


def test_judge_reads_heldout_compositions(judge):
    from minimodels.judge import evaluate_judge

    metrics = evaluate_judge(judge, seed=5, n=300, split="heldout")
    assert min(metrics.values()) >= 0.97, metrics


def test_read_returns_scenes(judge):
    images, scenes = sw.generate("test", 20, seed=3)
    readings = judge.read(images)
    assert len(readings) == 20
    correct = 0
    for truth, got in zip(scenes, readings):
        want = {(o["position"], o["color"], o["shape"], o["size"]) for o in truth["objects"]}
        have = {(o["position"], o["color"], o["shape"], o["size"]) for o in got["objects"]}
        correct += want == have and got["count"] == len(truth["objects"])
    assert correct >= 18
    # An empty background holds nothing.
    empty = np.broadcast_to(np.array(sw.BACKGROUND, np.uint8), (1, 32, 32, 3)).copy()
    assert judge.read(empty)[0]["objects"] == []


def test_judge_accepts_layouts_sizes_and_floats(judge):
    images, _ = sw.generate("test", 4, seed=1)
    a = judge(images)["color"]  # numpy (B, H, W, 3) uint8
    b = judge(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)["color"]
    assert torch.allclose(a, b, atol=1e-5)
    big, _ = sw.generate("test", 4, seed=1, image_size=64)
    assert judge(big)["color"].shape == (4, 9, len(COLOR_CLASSES))


def test_prepare_images_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        prepare_images(torch.full((1, 3, 32, 32), -1.0))
    with pytest.raises(ValueError, match="3 channels"):
        prepare_images(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="NaN"):
        prepare_images(torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(TypeError, match="uint8 or float"):
        prepare_images(torch.zeros(1, 3, 32, 32, dtype=torch.int32))
    with pytest.raises(ValueError, match="empty"):
        prepare_images(torch.zeros(0, 3, 32, 32))
    with pytest.raises(TypeError, match="tensor or numpy"):
        prepare_images([[1, 2, 3]])


def test_targets_encode_scenes():
    scene = sw.make_scene(
        [{"shape": "cross", "color": "cyan", "size": "small", "position": "bottom right"}]
    )
    t = targets([scene])
    assert t["count"].tolist() == [1]
    assert t["color"][0, 8] == COLOR_CLASSES.index("cyan")
    assert (t["color"][0, :8] == 0).all()


def test_pretrained_rejects_unknown_names():
    assert "judge" in minimodels.available_models()
    with pytest.raises(ValueError, match="unknown model name"):
        minimodels.pretrained("gpt5")
    with pytest.raises(TypeError, match="name"):
        minimodels.pretrained(3)


def test_evaluate_cli_prints_identical_json_for_one_seed():
    cmd = [sys.executable, "-m", "minimodels.evaluate", "judge", "--seed", "4", "--n", "200"]
    first = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    second = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert first == second
    metrics = json.loads(first)
    assert set(metrics) == {"accuracy_color", "accuracy_shape", "accuracy_count"}
    assert all(0.95 <= v <= 1 for v in metrics.values())
    bad = subprocess.run(cmd[:4] + ["--n", "0"], capture_output=True, text=True)
    assert bad.returncode != 0 and "n must be a positive int" in bad.stderr


def test_untrained_judge_is_not_accurate():
    # The accuracy test above is meaningful: a random judge fails it.
    from minimodels.judge import evaluate_judge

    torch.manual_seed(0)
    metrics = evaluate_judge(Judge(), seed=77, n=100)
    assert metrics["accuracy_shape"] < 0.5


def test_viz_functions_return_figures():
    import matplotlib

    matplotlib.use("Agg")
    images, scenes = sw.generate("train", 5, seed=0)
    fig = viz.show_images(images, [s["caption"] for s in scenes], ncols=3)
    assert len(fig.axes) == 6
    fig = viz.show_images(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert len(fig.axes) == 5
    assert viz.heatmap(torch.eye(3), list("abc"), list("xyz")).axes
    assert viz.loss_curve([3.0, 2.0, 1.0]).axes
    with pytest.raises(ValueError, match="captions"):
        viz.show_images(images, ["one caption"])
    with pytest.raises(ValueError, match="2-d"):
        viz.heatmap(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        viz.show_images(np.full((1, 8, 8, 3), np.nan))
