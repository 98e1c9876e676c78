"""minimodels.metrics: the Fréchet distance, the judge's verdicts on real and noise images, and
the diversity of what it reads."""

import math

import pytest
import torch

from minimodels import shapeworld as sw
from minimodels.data.shapeworld import sample_single_objects
from minimodels.metrics import (
    attribute_diversity,
    fid_toy,
    frechet_distance,
    prompt_faithfulness,
    valid_shape_rate,
    valid_shapes,
)


def test_frechet_distance_of_gaussians():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 3, generator=g)
    b = torch.randn(20000, 3, generator=g) * 2 + torch.tensor([1.0, 0.0, 0.0])
    # N(0, I) vs N(μ, 4I): ‖μ‖² + Tr(I + 4I - 2·2I) = 1 + 3
    assert abs(frechet_distance(a, b) - 4.0) < 0.15
    assert frechet_distance(a, a) < 1e-6
    with pytest.raises(ValueError, match="same width"):
        frechet_distance(a, b[:, :2])


def test_judge_metrics_on_real_and_noise_images():
    scenes = sample_single_objects("test", 64, seed=5, image_size=20)
    real = sw.render(scenes, 20)
    targets = [(s["objects"][0]["color"], s["objects"][0]["shape"]) for s in scenes]
    noise = torch.rand(64, 3, 20, 20, generator=torch.manual_seed(0))
    assert valid_shape_rate(real) >= 0.9
    assert valid_shape_rate(noise) < 0.1
    assert prompt_faithfulness(real, targets) >= 0.9
    wrong = [("red", "circle") if t != ("red", "circle") else ("blue", "cross") for t in targets]
    assert prompt_faithfulness(real, wrong) < 0.1
    other = sw.render(sample_single_objects("test", 64, seed=6, image_size=20), 20)
    assert fid_toy(real, other) * 10 < fid_toy(real, noise)


def test_valid_shapes_gives_the_verdict_and_the_shape_read_per_image():
    scenes = sample_single_objects("test", 64, seed=5, image_size=32)
    real = sw.render(scenes, 32)  # at the judge's own size it reads every shape
    noise = torch.rand(8, 3, 32, 32, generator=torch.manual_seed(0))
    ok, names = valid_shapes(real)
    assert ok.dtype == torch.bool and ok.shape == (64,) and ok.all()
    assert names == [s["objects"][0]["shape"] for s in scenes]
    ok_noise, _ = valid_shapes(noise)
    assert not ok_noise.any()
    assert valid_shape_rate(noise) == float(ok_noise.float().mean()) == 0.0
    with pytest.raises(ValueError, match="threshold"):
        valid_shapes(real, threshold=1.5)
    with pytest.raises(ValueError, match="max_objects"):
        valid_shapes(real, max_objects=0)


def test_attribute_diversity_is_one_for_an_even_set_and_zero_for_a_collapsed_one():
    scenes = sample_single_objects("test", 64, seed=5, image_size=32)
    real = sw.render(scenes, 32)  # the judge reads every object at its own size
    pairs = {(s["objects"][0]["color"], s["objects"][0]["shape"]) for s in scenes}
    even = attribute_diversity(real)
    assert set(even) == {"color_entropy", "shape_entropy", "position_entropy", "distinct_pairs"}
    assert even["distinct_pairs"] == len(pairs)
    assert all(0.9 < even[k] <= 1 for k in ("color_entropy", "shape_entropy", "position_entropy"))
    collapsed = attribute_diversity(real[[0] * 16])
    assert collapsed == {"color_entropy": 0.0, "shape_entropy": 0.0, "position_entropy": 0.0,
                         "distinct_pairs": 1}  # fmt: skip
    # two images, half and half: H = log 2, over log 6 colours, log 5 shapes, log 9 positions
    a, b = next((i, j) for i in range(64) for j in range(64)
                if all(scenes[i]["objects"][0][k] != scenes[j]["objects"][0][k]
                       for k in ("color", "shape", "position")))  # fmt: skip
    half = attribute_diversity(real[[a, b] * 4])
    assert half["color_entropy"] == pytest.approx(math.log(2) / math.log(6))
    assert half["shape_entropy"] == pytest.approx(math.log(2) / math.log(5))
    assert half["position_entropy"] == pytest.approx(math.log(2) / math.log(9))
    assert half["distinct_pairs"] == 2
