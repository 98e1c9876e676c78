"""Bias from a skewed training set: a ShapeWorld sampler where one colour almost always comes
with one shape, a tiny shape classifier, and a measurement of the skew in its predictions.

    from minimodels import bias
    x, shapes, colors = bias.skewed_data(4000, seed=0, p=0.95)     # red is 95 % circles
    model = bias.train_shape_classifier(x, shapes, steps=600)
    xt, st, ct = bias.skewed_data(3000, seed=1, p=None)            # balanced test set
    bias.measure_skew(bias.predict(model, xt), st, ct)             # red non-circles read as circles

Each image holds one object (one colour, one shape, one size, one of the 9 cells). In the
skewed set the object is `color` with probability 1/6 like every colour, but a `color` object
is `shape` with probability p (and one of the other shapes, uniformly, otherwise); other
colours take the five shapes uniformly. p = 1/5 (or None) is the balanced world. All 30
colour-shape pairs occur, including the pairs the course's `heldout` split keeps aside.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from minimodels import shapeworld as sw
from minimodels.train import get_device

COLOR_NAMES: tuple[str, ...] = tuple(sw.COLORS)


def _check_int(value, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}; got {value}")
    return int(value)


def _check_pair(color, shape) -> None:
    if color not in COLOR_NAMES:
        raise ValueError(f"color must be one of {list(COLOR_NAMES)}; got {color!r}")
    if shape not in sw.SHAPES:
        raise ValueError(f"shape must be one of {list(sw.SHAPES)}; got {shape!r}")


def skewed_scenes(
    n: int,
    seed: int = 0,
    p: float | None = 0.95,
    color: str = "red",
    shape: str = "circle",
    image_size: int = 16,
) -> list[dict]:
    """`n` one-object scenes in which P(shape | color) = p; p=None gives the balanced world."""
    n = _check_int(n, "n", 1, 200_000)
    seed = _check_int(seed, "seed", 0, 2**63 - 1)
    _check_pair(color, shape)
    if p is not None:
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1] or None; got {p!r}")
    rng = np.random.default_rng(seed)
    others = [s for s in sw.SHAPES if s != shape]
    scenes = []
    for _ in range(n):
        c = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
        if c == color and p is not None:
            s = shape if rng.random() < p else others[int(rng.integers(len(others)))]
        else:
            s = sw.SHAPES[int(rng.integers(len(sw.SHAPES)))]
        spec = {
            "shape": s,
            "color": c,
            "size": sw.SIZES[int(rng.integers(len(sw.SIZES)))],
            "position": sw.POSITIONS[int(rng.integers(len(sw.POSITIONS)))],
        }
        scenes.append(sw.make_scene([spec], image_size=image_size))
    return scenes


def skewed_data(n: int, seed: int = 0, p: float | None = 0.95, color: str = "red",
                shape: str = "circle", image_size: int = 16):  # fmt: skip
    """Rendered `skewed_scenes`: images float (n, 3, S, S) in [0, 1], shape and colour indices
    (n,) into shapeworld.SHAPES and bias.COLOR_NAMES."""
    scenes = skewed_scenes(n, seed, p, color, shape, image_size)
    images = torch.from_numpy(sw.render(scenes)).permute(0, 3, 1, 2).float() / 255.0
    shapes = torch.tensor([sw.SHAPES.index(s["objects"][0]["shape"]) for s in scenes])
    colors = torch.tensor([COLOR_NAMES.index(s["objects"][0]["color"]) for s in scenes])
    return images, shapes, colors


def shape_classifier(image_size: int = 16, hidden: int = 64) -> nn.Module:
    """A two-layer perceptron from pixels to the 5 shapes: small enough to train in seconds."""
    image_size = _check_int(image_size, "image_size", sw.MIN_IMAGE_SIZE, sw.MAX_IMAGE_SIZE)
    hidden = _check_int(hidden, "hidden", 1, 100_000)
    return nn.Sequential(
        nn.Flatten(),  # (B, 3·S·S)
        nn.Linear(3 * image_size * image_size, hidden),
        nn.ReLU(),
        nn.Linear(hidden, len(sw.SHAPES)),  # (B, 5) logits
    )


def _check_images(images, name: str = "images") -> None:
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise TypeError(f"{name} must be a float tensor (N, 3, S, S); got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
        raise ValueError(f"{name} must have shape (N > 0, 3, S, S); got {tuple(images.shape)}")


def _check_labels(labels, n: int, name: str, classes: int) -> None:
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.long:
        raise TypeError(f"{name} must be a long tensor (N,); got {type(labels).__name__}")
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},); got {tuple(labels.shape)}")
    if n and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"{name} must hold class indices in [0, {classes - 1}]")


def train_shape_classifier(
    images, shapes, steps: int = 600, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
    device=None,
) -> nn.Module:  # fmt: skip
    """Train `shape_classifier` with Adam on (images, shapes); deterministic in `seed`."""
    _check_images(images)
    _check_labels(shapes, len(images), "shapes", len(sw.SHAPES))
    steps = _check_int(steps, "steps", 1, 1_000_000)
    batch_size = _check_int(batch_size, "batch_size", 1, 100_000)
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not 0 < lr < 10:
        raise ValueError(f"lr must be a positive number below 10; got {lr!r}")
    seed = _check_int(seed, "seed", 0, 2**63 - 1)
    device = get_device(device)
    torch.manual_seed(seed)
    model = shape_classifier(images.shape[-1]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(0, len(images), (batch_size,), generator=gen)
        loss = F.cross_entropy(model(images[i].to(device)), shapes[i].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, images) -> torch.Tensor:
    """Predicted shape indices (N,) on the CPU."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    _check_images(images)
    device = next(model.parameters()).device
    return model(images.to(device)).argmax(-1).cpu()


def measure_skew(predictions, shapes, colors, color: str = "red", shape: str = "circle") -> dict:
    """How often objects that are NOT `shape` are read as `shape`, for `color` vs other colours.

    Returns {"color_rate", "other_rate", "skew" = color_rate - other_rate, "accuracy",
    "color_accuracy"}: a fair reader has skew ≈ 0.
    """
    if not isinstance(predictions, torch.Tensor) or predictions.ndim != 1:
        raise TypeError("predictions must be a 1-d long tensor of shape indices")
    n = len(predictions)
    _check_labels(predictions, n, "predictions", len(sw.SHAPES))
    _check_labels(shapes, n, "shapes", len(sw.SHAPES))
    _check_labels(colors, n, "colors", len(COLOR_NAMES))
    _check_pair(color, shape)
    c, s = COLOR_NAMES.index(color), sw.SHAPES.index(shape)
    target, rest = (colors == c) & (shapes != s), (colors != c) & (shapes != s)
    if not target.any() or not rest.any():
        raise ValueError(
            f"need objects that are not {shape}s both in {color} and in other colours to compare"
        )
    color_rate = float((predictions[target] == s).float().mean())
    other_rate = float((predictions[rest] == s).float().mean())
    return {
        "color_rate": color_rate,
        "other_rate": other_rate,
        "skew": color_rate - other_rate,
        "accuracy": float((predictions == shapes).float().mean()),
        "color_accuracy": float((predictions[colors == c] == shapes[colors == c]).float().mean()),
    }
