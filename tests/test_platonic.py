"""Mutual k-NN alignment (minimodels.platonic): known values, invariances, chance level, checks."""

import numpy as np
import pytest
import torch

from minimodels import platonic


def _reference(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """A slow, obvious version: Python sets of neighbour indices (cosine, self excluded)."""

    def knn(x):
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        sim = x @ x.T
        out = []
        for i in range(len(x)):
            order = sorted((j for j in range(len(x)) if j != i), key=lambda j: (-sim[i, j], j))
            out.append(set(order[:k]))
        return out

    na, nb = knn(a), knn(b)
    return float(np.mean([len(sa & sb) / k for sa, sb in zip(na, nb)]))


def test_matches_a_set_based_reference():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 7))
    b = a @ rng.normal(size=(7, 5)) + 0.8 * rng.normal(size=(40, 5))  # related, noisy
    for k in (1, 3, 10):
        ours = platonic.mutual_knn(a, b, k=k)
        assert ours == pytest.approx(_reference(a, b, k), abs=1e-6)
    assert 0.1 < platonic.mutual_knn(a, b, k=5) < 1.0  # partly aligned, not trivially


def test_hand_computed_example():
    # four points on a line (2-d so cosine varies): 0 and 1 close, 2 and 3 close in A;
    # in B the pairs are (0, 2) and (1, 3). With k = 1: A says 0<->1, 2<->3; B says 0<->2, 1<->3
    angle_a = torch.tensor([0.0, 0.1, 1.4, 1.5])
    angle_b = torch.tensor([0.0, 1.4, 0.1, 1.5])
    a = torch.stack([angle_a.cos(), angle_a.sin()], 1)
    b = torch.stack([angle_b.cos(), angle_b.sin()], 1)
    assert platonic.nearest_neighbours(a, 1).squeeze(1).tolist() == [1, 0, 3, 2]
    assert platonic.nearest_neighbours(b, 1).squeeze(1).tolist() == [2, 3, 0, 1]
    assert platonic.mutual_knn(a, b, k=1) == 0.0
    assert platonic.mutual_knn(a, a, k=1) == 1.0
    # k = 2: N_A(0) = {1, 2} = N_B(0); N_A(1) = {0, 2}, N_B(1) = {3, 2}: one shared
    assert platonic.mutual_knn_per_item(a, b, k=2).tolist() == [1.0, 0.5, 0.5, 1.0]


def test_invariant_to_rotation_scale_and_width():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(60, 8, generator=gen)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen))  # orthogonal
    scale = torch.rand(60, 1, generator=gen) + 0.5  # per-row scale: cosine ignores it
    assert platonic.mutual_knn(a, (a @ q) * scale, k=5) == pytest.approx(1.0)
    # a different width: embed in 20 dims with zero padding + rotation
    wide = (
        torch.cat([a, torch.zeros(60, 12)], 1)
        @ torch.linalg.qr(torch.randn(20, 20, generator=gen))[0]
    )
    assert platonic.mutual_knn(a, wide, k=5) == pytest.approx(1.0)


def test_symmetric():
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(50, 4, generator=gen), torch.randn(50, 9, generator=gen)
    assert platonic.mutual_knn(a, b, 7) == pytest.approx(platonic.mutual_knn(b, a, 7))


def test_unrelated_spaces_sit_at_chance_and_shuffling_destroys_alignment():
    gen = torch.Generator().manual_seed(3)
    n, k = 300, 10
    a = torch.randn(n, 16, generator=gen)
    b = torch.randn(n, 16, generator=gen)
    chance = platonic.chance_level(n, k)
    assert chance == pytest.approx(k / (n - 1))
    assert abs(platonic.mutual_knn(a, b, k) - chance) < 0.02
    related = a + 0.3 * torch.randn(n, 16, generator=gen)
    assert platonic.mutual_knn(a, related, k) > 0.4
    mean, std = platonic.shuffled_baseline(a, related, k, repeats=4, seed=0)
    assert abs(mean - chance) < 0.02 and std >= 0
    assert platonic.shuffled_baseline(a, related, k, repeats=2, seed=5) == (
        platonic.shuffled_baseline(a, related, k, repeats=2, seed=5)
    )


def test_alignment_matrix():
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(30, 5, generator=gen)
    m = platonic.alignment_matrix({"a": a, "2a": 2 * a}, {"a": a, "noise": torch.randn(30, 3)}, 3)
    assert m.shape == (2, 2)
    assert m[0, 0] == pytest.approx(1.0) and m[1, 0] == pytest.approx(1.0)
    assert m[0, 1] < 0.6


@pytest.mark.parametrize(
    "a, b, k, err, match",
    [
        ([[1.0, 2.0]] * 5, torch.ones(5, 2), 1, TypeError, "feats_a"),
        (torch.ones(5), torch.ones(5, 2), 1, ValueError, "feats_a must be 2-d"),
        (torch.randn(5, 2), torch.randn(6, 2), 1, ValueError, "same items"),
        (torch.randn(5, 2), torch.randn(5, 2), 0, ValueError, "k must be"),
        (torch.randn(5, 2), torch.randn(5, 2), 4, ValueError, "k must be"),
        (torch.randn(5, 2), torch.randn(5, 2), 2.0, TypeError, "k must be an int"),
        (torch.randn(5, 2), torch.randn(5, 2), True, TypeError, "k must be an int"),
        (torch.randn(2, 2), torch.randn(2, 2), 1, ValueError, "at least 3"),
        (torch.full((5, 2), float("nan")), torch.randn(5, 2), 1, ValueError, "NaN"),
        (torch.randn(5, 2), torch.zeros(5, 2), 1, ValueError, "all-zero"),
        (torch.randn(5, 0), torch.randn(5, 2), 1, ValueError, "0 features"),
        (torch.randn(5, 2, dtype=torch.complex64), torch.randn(5, 2), 1, TypeError, "real"),
        (torch.empty(5, 2, device="meta"), torch.randn(5, 2), 1, ValueError, "meta"),
    ],
)
def test_bad_inputs_are_named(a, b, k, err, match):
    with pytest.raises(err, match=match):
        platonic.mutual_knn(a, b, k)


def test_other_checks():
    with pytest.raises(ValueError, match="repeats"):
        platonic.shuffled_baseline(torch.randn(5, 2), torch.randn(5, 2), 1, repeats=0)
    with pytest.raises(ValueError, match="seed"):
        platonic.shuffled_baseline(torch.randn(5, 2), torch.randn(5, 2), 1, seed=-1)
    with pytest.raises(ValueError, match="n must be"):
        platonic.chance_level(2, 1)
    with pytest.raises(TypeError, match="spaces_a"):
        platonic.alignment_matrix([torch.randn(5, 2)], {"b": torch.randn(5, 2)})
    with pytest.raises(ValueError, match="spaces_b is empty"):
        platonic.alignment_matrix({"a": torch.randn(5, 2)}, {})
