"""Measuring generated images with the judge: a toy FID, shape validity, prompt faithfulness
and diversity.

The Fréchet Inception Distance compares two sets of images through the features of a trained
classifier (Inception-v3 for photographs): fit a Gaussian to each set's features and measure

    FID = ‖μ_a - μ_b‖² + Tr(Σ_a + Σ_b - 2 (Σ_a Σ_b)^{1/2})

Here the classifier is the course's judge, which was trained on ShapeWorld: `fid_toy` uses its
per-cell hidden features averaged over the 9 grid cells (96 numbers per image). Lower is
better; `fid_toy` of two independent sets of real images gives the floor set by sampling noise.
`attribute_diversity` asks how evenly the colours, shapes and positions the judge reads are
covered: a generator that collapses onto a few modes scores low.

All functions take images as the judge does: uint8 (B, 3, H, W) / (B, H, W, 3) in 0..255 or
float (B, 3, H, W) in [0, 1] (convert [-1, 1] model outputs with (x + 1) / 2 first); other
sizes than 32×32 are resized.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from minimodels.checks import check_device, check_finite, check_float, check_instance, check_int
from minimodels.judge import COLOR_CLASSES, SHAPE_CLASSES, Judge, prepare_images
from minimodels.recipes.judge import load_judge


def _judge(judge: Judge | None) -> Judge:
    """The judge to measure with: the shipped one unless one is given."""
    return load_judge() if judge is None else check_instance(judge, Judge, "judge")


@torch.no_grad()
def judge_features(images, judge=None, batch_size: int = 512) -> torch.Tensor:
    """The judge's hidden features, averaged over the 9 cells: (B, hidden) float64."""
    judge = _judge(judge).eval()
    x = prepare_images(images, judge.config.image_size)
    feats = []
    for s in range(0, len(x), batch_size):
        cells = judge.cells(x[s : s + batch_size].to(judge.device))  # (b, 9, 3, crop, crop)
        h = judge.cell_cnn(cells.flatten(0, 1))  # (b·9, hidden)
        feats.append(h.view(cells.shape[0], 9, -1).mean(1).double().cpu())  # (b, hidden)
    return torch.cat(feats)


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(m)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """‖μ_a - μ_b‖² + Tr(Σ_a + Σ_b - 2 (Σ_a Σ_b)^{1/2}) of two feature sets (N, d), (M, d)."""
    for name, f in (("feats_a", feats_a), ("feats_b", feats_b)):
        if not isinstance(f, torch.Tensor) or f.ndim != 2 or len(f) < 2:
            got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise ValueError(f"{name} must be a tensor (N ≥ 2, d); got {got}")
        check_device(f, name, None)
        if f.dtype == torch.bool or f.is_complex():
            raise TypeError(f"{name} must be a real-valued tensor; got {f.dtype}")
        check_finite(f, name)
    if feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(
            f"feats_a and feats_b must have the same width d; got {feats_a.shape[1]} and "
            f"{feats_b.shape[1]}"
        )
    a, b = feats_a.double(), feats_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)  # Σ: (d, d)
    # Tr (Σ_a Σ_b)^{1/2} = Tr (Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2}  (a symmetric form, stable)
    root_a = _sqrtm_psd(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    fd = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * cross
    return float(fd.clamp(min=0))


def fid_toy(images_a, images_b, judge=None) -> float:
    """The Fréchet distance between the judge's features of two image sets (lower = closer)."""
    judge = _judge(judge)
    return frechet_distance(judge_features(images_a, judge), judge_features(images_b, judge))


@torch.no_grad()
def cell_confidence(images, judge=None):
    """Per image and cell: confidence (B, 9) that the cell holds one definite shape,
    P(object) · max_s P(shape = s); the judge's colour and shape indices (B, 9); and the
    judge's object count (B,)."""
    judge = _judge(judge).eval()
    logits = judge(images)
    p_color = logits["color"].softmax(-1).cpu()  # (B, 9, 7); index 0 = none
    p_shape = logits["shape"].softmax(-1).cpu()  # (B, 9, 6)
    shape_p, shape = p_shape[..., 1:].max(-1)
    conf = (1 - p_color[..., 0]) * shape_p  # (B, 9)
    color = p_color[..., 1:].argmax(-1) + 1
    return conf, color, shape + 1, logits["count"].cpu()


def valid_shapes(
    images, judge=None, threshold: float = 0.9, max_objects: int = 3
) -> tuple[torch.Tensor, list[str]]:
    """Per image: is it valid (see `valid_shape_rate`), bool (B,); and the shape the judge
    reads in its most certain cell (a name from shapeworld.SHAPES), to see which shapes fail."""
    threshold = check_float(threshold, "threshold", 0.0, 1.0, False, False)
    max_objects = check_int(max_objects, "max_objects", 1)
    conf, _, shape, count = cell_confidence(images, judge)
    best = conf.max(1)
    ok = (best.values >= threshold) & (count >= 1) & (count <= max_objects)
    names = [SHAPE_CLASSES[i] for i in shape[torch.arange(len(shape)), best.indices].tolist()]
    return ok, names


def valid_shape_rate(images, judge=None, threshold: float = 0.9, max_objects: int = 3) -> float:
    """Fraction of images in which the judge finds a shape with confidence ≥ threshold, in a
    scene it reads as 1 to max_objects objects.

    The count matters: the judge was trained on clean scenes and reads noise or a smeared
    image as objects in all 9 cells, often confidently, so "some confident cell" alone would
    call pure noise valid.
    """
    ok, _ = valid_shapes(images, judge, threshold, max_objects)
    return float(ok.float().mean())


def prompt_faithfulness(images, targets: Sequence[tuple[str, str]], judge=None) -> float:
    """Fraction of images whose most confident object has the asked (colour, shape)."""
    conf, color, shape, _ = cell_confidence(images, judge)
    if not isinstance(targets, Sequence) or len(targets) != len(conf):
        raise ValueError(
            f"targets must be one (colour, shape) pair per image ({len(conf)}); got "
            f"{len(targets) if isinstance(targets, Sequence) else type(targets).__name__}"
        )
    best = conf.argmax(1)  # (B,) the cell the judge is surest of
    rows = torch.arange(len(best))
    got_color = [COLOR_CLASSES[i] for i in color[rows, best].tolist()]
    got_shape = [SHAPE_CLASSES[i] for i in shape[rows, best].tolist()]
    hits = [(c, s) == tuple(t) for c, s, t in zip(got_color, got_shape, targets, strict=True)]
    return float(np.mean(hits))


def _normalised_entropy(labels: Sequence, k: int) -> float:
    """H(p) / log k of the labels' histogram over k classes: 1 = all k equally often, 0 = one."""
    counts = torch.tensor(list(Counter(labels).values()), dtype=torch.float64)
    p = counts / counts.sum()
    return float((p * (1 / p).log()).sum() / np.log(k))  # H = Σ p log(1/p)


def attribute_diversity(images, judge=None) -> dict[str, float | int]:
    """How evenly a set of images covers the world, as the judge reads it: for the object the
    judge is surest of in each image, the normalised entropy H / log K of the histogram of its
    colour (K = 6), its shape (K = 5) and its grid cell (the position, K = 9), and the number
    of distinct (colour, shape) pairs among the images (of the 30 the judge can read; the
    training data hold 24, so more than 24 means pairs the data never show).

    Each entropy is 1 when every class is read equally often and 0 when every image shows the
    same one (a collapsed generator). n images cannot reach 1 for n below K, and rarely do for
    a few times K either: compare a generator with real images at the same n. Every image
    counts, readable or not; `valid_shape_rate` says how many the judge reads confidently.
    """
    conf, color, shape, _ = cell_confidence(images, judge)
    cell = conf.argmax(1)  # (B,) the cell the judge is surest of: the object's position
    rows = torch.arange(len(cell))
    colors, shapes = color[rows, cell].tolist(), shape[rows, cell].tolist()
    return {
        "color_entropy": _normalised_entropy(colors, len(COLOR_CLASSES) - 1),
        "shape_entropy": _normalised_entropy(shapes, len(SHAPE_CLASSES) - 1),
        "position_entropy": _normalised_entropy(cell.tolist(), conf.shape[1]),
        "distinct_pairs": len(set(zip(colors, shapes))),
    }
