"""The judge model: reading images back into scenes, the images it accepts."""

import numpy as np
import pytest
import torch

import minimodels
from minimodels import shapeworld as sw
from minimodels.judge import COLOR_CLASSES, Judge, prepare_images


@pytest.fixture(scope="module")
def judge():
    return minimodels.pretrained("judge", device="cpu")


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
    with pytest.raises(TypeError, match="uint8"):
        prepare_images(torch.zeros(1, 3, 32, 32, dtype=torch.int32))
    with pytest.raises(ValueError, match="empty"):
        prepare_images(torch.zeros(0, 3, 32, 32))
    with pytest.raises(TypeError, match="torch.Tensor"):
        prepare_images([[1, 2, 3]])


def test_read_refuses_an_image_without_pixels():
    # found by test_hostile's random tensors under older versions: min() of an empty tensor
    with pytest.raises(ValueError, match="no pixels"):
        Judge().read(torch.zeros(0, 0, 3))
