"""The skewed ShapeWorld sampler, the skew measurement, and a model that learns the skew."""

import pytest
import torch

from minimodels import bias
from minimodels import shapeworld as sw


def _pairs(scenes):
    return [(s["objects"][0]["color"], s["objects"][0]["shape"]) for s in scenes]


def test_sampler_frequencies():
    skewed = _pairs(bias.skewed_scenes(3000, seed=0, p=0.9))
    red = [s for c, s in skewed if c == "red"]
    assert 400 < len(red) < 600  # a sixth of the objects are red, like every colour
    assert 0.85 < red.count("circle") / len(red) < 0.95
    green = [s for c, s in skewed if c == "green"]
    assert 0.12 < green.count("circle") / len(green) < 0.28  # other colours: uniform shapes
    balanced = _pairs(bias.skewed_scenes(3000, seed=0, p=None))
    red = [s for c, s in balanced if c == "red"]
    assert 0.12 < red.count("circle") / len(red) < 0.28
    assert ("red", "triangle") in balanced  # held-out pairs of the course's splits occur here
    assert _pairs(bias.skewed_scenes(50, seed=3)) == _pairs(bias.skewed_scenes(50, seed=3))


def test_other_pair_and_data_shapes():
    x, shapes, colors = bias.skewed_data(600, seed=1, p=1.0, color="blue", shape="cross")
    assert x.shape == (600, 3, 16, 16) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    blue = colors == bias.COLOR_NAMES.index("blue")
    assert (shapes[blue] == sw.SHAPES.index("cross")).all()


def test_measure_skew_on_known_predictions():
    red, green = bias.COLOR_NAMES.index("red"), bias.COLOR_NAMES.index("green")
    circle, square = sw.SHAPES.index("circle"), sw.SHAPES.index("square")
    shapes = torch.tensor([square, square, square, square, circle])
    colors = torch.tensor([red, red, green, green, red])
    preds = torch.tensor([circle, square, square, square, circle])
    out = bias.measure_skew(preds, shapes, colors)
    assert out["color_rate"] == 0.5 and out["other_rate"] == 0.0 and out["skew"] == 0.5
    assert out["accuracy"] == pytest.approx(0.8)
    assert out["color_accuracy"] == pytest.approx(2 / 3)


def test_a_skewed_training_set_gives_a_skewed_reader():
    x_test, s_test, c_test = bias.skewed_data(1500, seed=11, p=None)
    skews = {}
    for p in (0.95, None):
        x, s, _ = bias.skewed_data(2000, seed=0, p=p)
        model = bias.train_shape_classifier(x, s, steps=300, seed=0, device="cpu")
        skews[p] = bias.measure_skew(bias.predict(model, x_test), s_test, c_test)
    assert skews[0.95]["skew"] > 0.3, skews  # red squares, triangles... read as circles
    assert abs(skews[None]["skew"]) < 0.1, skews
    assert skews[None]["accuracy"] > 0.5  # and the balanced model does read shapes


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"n": 0}, ValueError, "n must be"),
        ({"n": 2.0}, TypeError, "n must be an int"),
        ({"n": 5, "p": 1.5}, ValueError, "p must be"),
        ({"n": 5, "p": True}, ValueError, "p must be"),
        ({"n": 5, "color": "pink"}, ValueError, "color must be"),
        ({"n": 5, "shape": "star"}, ValueError, "shape must be"),
        ({"n": 5, "seed": -1}, ValueError, "seed must be"),
    ],
)
def test_sampler_checks(kwargs, err, match):
    with pytest.raises(err, match=match):
        bias.skewed_scenes(**kwargs)


def test_other_checks():
    x, s, c = bias.skewed_data(10, seed=0)
    with pytest.raises(TypeError, match="images"):
        bias.train_shape_classifier(x.numpy(), s)
    with pytest.raises(ValueError, match="shapes must have shape"):
        bias.train_shape_classifier(x, s[:5])
    with pytest.raises(ValueError, match="steps"):
        bias.train_shape_classifier(x, s, steps=0)
    with pytest.raises(ValueError, match="lr"):
        bias.train_shape_classifier(x, s, lr=-1.0)
    with pytest.raises(TypeError, match="model"):
        bias.predict("model", x)
    with pytest.raises(ValueError, match="colors must hold"):
        bias.measure_skew(s, s, torch.full_like(c, 9))
    with pytest.raises(ValueError, match="need objects"):
        bias.measure_skew(s[:1], s[:1], c[:1])
