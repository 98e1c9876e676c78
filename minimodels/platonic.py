"""Mutual k-nearest-neighbour alignment between two representations of the same items.

The Platonic representation hypothesis (Huh, Cheung, Wang and Isola, 2024) says that models
trained on different data and modalities drift towards the same *similarity structure*: two
images that a vision model finds alike are described by captions that a language model finds
alike. Their measure compares neighbourhoods, not coordinates, so it works across spaces of
different widths:

    N_A(i) = the k items closest to item i in space A (cosine similarity, i itself excluded)
    m(i)   = |N_A(i) ∩ N_B(i)| / k
    alignment = mean_i m(i)          # 1: identical neighbourhoods; ≈ k/(n-1): unrelated

    from minimodels.platonic import mutual_knn
    mutual_knn(image_features, text_features, k=10)   # rows are the same n items, in order
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "nearest_neighbours",
    "mutual_knn_per_item",
    "mutual_knn",
    "chance_level",
    "shuffled_baseline",
    "alignment_matrix",
]


def _as_features(x, name: str) -> torch.Tensor:
    """A float tensor (n, d) on the CPU from a tensor or a numpy array; checked."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array (n, d); got {type(x)}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-d (n items, d features); got shape {tuple(x.shape)}")
    if x.is_meta:
        raise ValueError(f"{name} is on the meta device: it holds no values")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"{name} must hold real numbers; got dtype {x.dtype}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has 0 features per item; expected at least 1")
    x = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    if (x.norm(dim=1) == 0).any():
        raise ValueError(f"{name} has an all-zero row: its cosine similarity is undefined")
    return x


def _check_k(k, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int; got {type(k).__name__}")
    if not 1 <= k <= n - 2:
        raise ValueError(
            f"k must be between 1 and n - 2 = {n - 2} (with k = n - 1 every item has every "
            f"other item as a neighbour and the score is always 1); got k={k}"
        )
    return int(k)


def _check_pair(feats_a, feats_b, k) -> tuple[torch.Tensor, torch.Tensor, int]:
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"feats_a and feats_b must describe the same items (same number of rows); got "
            f"{a.shape[0]} and {b.shape[0]}"
        )
    if a.shape[0] < 3:
        raise ValueError(f"need at least 3 items to compare neighbourhoods; got {a.shape[0]}")
    return a, b, _check_k(k, a.shape[0])


def nearest_neighbours(feats, k: int) -> torch.Tensor:
    """Indices (n, k) of each item's k nearest other items by cosine similarity, nearest first.

    Ties are broken towards the lower index, so the result does not depend on the machine.
    """
    x = _as_features(feats, "feats")
    k = _check_k(k, x.shape[0])
    x = F.normalize(x, dim=1)
    sim = x @ x.T  # (n, n) cosine similarities
    sim.fill_diagonal_(-math.inf)  # an item is not its own neighbour
    # a stable descending sort keeps equal similarities in index order
    return torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :k]


def mutual_knn_per_item(feats_a, feats_b, k: int = 10) -> torch.Tensor:
    """m(i) = |N_A(i) ∩ N_B(i)| / k for every item: a float tensor (n,) in [0, 1]."""
    a, b, k = _check_pair(feats_a, feats_b, k)
    n = a.shape[0]
    knn_a, knn_b = nearest_neighbours(a, k), nearest_neighbours(b, k)  # (n, k) each
    rows = torch.arange(n).unsqueeze(1)
    in_a = torch.zeros(n, n, dtype=torch.bool)
    in_b = torch.zeros(n, n, dtype=torch.bool)
    in_a[rows, knn_a] = True  # in_a[i, j]: j is one of i's neighbours in A
    in_b[rows, knn_b] = True
    return (in_a & in_b).sum(dim=1).float() / k


def mutual_knn(feats_a, feats_b, k: int = 10) -> float:
    """Mutual k-NN alignment of two feature sets whose rows are the same items, in [0, 1]."""
    return float(mutual_knn_per_item(feats_a, feats_b, k).mean())


def chance_level(n: int, k: int) -> float:
    """Expected alignment of two unrelated spaces: k random neighbours out of n - 1."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 3:
        raise ValueError(f"n must be an int >= 3; got {n!r}")
    return _check_k(k, int(n)) / (int(n) - 1)


def shuffled_baseline(feats_a, feats_b, k: int = 10, repeats: int = 5, seed: int = 0):
    """Alignment after pairing the rows of feats_b with random rows of feats_a.

    Shuffling keeps each space's own structure but breaks the correspondence of items, so
    whatever alignment survives is what two unrelated spaces of these shapes give by chance.
    Returns (mean, std) over `repeats` permutations drawn with `seed`.
    """
    a, b, k = _check_pair(feats_a, feats_b, k)
    if isinstance(repeats, bool) or not isinstance(repeats, numbers.Integral) or repeats < 1:
        raise ValueError(f"repeats must be a positive int; got {repeats!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    gen = torch.Generator().manual_seed(int(seed))
    scores = torch.tensor(
        [mutual_knn(a, b[torch.randperm(len(b), generator=gen)], k) for _ in range(repeats)]
    )
    return float(scores.mean()), float(scores.std()) if repeats > 1 else 0.0


def alignment_matrix(spaces_a: dict, spaces_b: dict, k: int = 10) -> torch.Tensor:
    """Mutual k-NN alignment of every space in spaces_a with every space in spaces_b.

    spaces_a, spaces_b: {name: features (n, d)}, all with rows for the same n items.
    Returns a tensor (len(spaces_a), len(spaces_b)); rows and columns follow the dicts' order.
    """
    for name, spaces in (("spaces_a", spaces_a), ("spaces_b", spaces_b)):
        if not isinstance(spaces, dict):
            raise TypeError(f"{name} must be a dict {{name: features}}; got {type(spaces)}")
        if not spaces:
            raise ValueError(f"{name} is empty: expected at least one feature set")
    out = torch.zeros(len(spaces_a), len(spaces_b))
    for i, fa in enumerate(spaces_a.values()):
        for j, fb in enumerate(spaces_b.values()):
            out[i, j] = mutual_knn(fa, fb, k)
    return out
