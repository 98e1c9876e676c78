"""Same seed, same numbers: every `python -m minimodels.evaluate NAME` gives identical JSON on two
runs on one machine (timings aside, which measure the machine, not the model)."""

import pytest

from minimodels.evaluate import evaluate
from minimodels.recipes import SHIPPED

# Small evaluations, enough to exercise every random draw the full command makes.
SMALL_N = {
    "judge": 40, "clip": 40, "vilbert": 16, "vilt": 16, "dvae": 16, "dalle": 4, "ddpm": 8,
    "ddpm-weak": 8, "ddpm-text": 8, "latent": 16, "dit": 8, "gpt": 16, "llava": 8,
    "flow": 8, "frozen": 16,
}  # fmt: skip
TIMING_WORDS = ("seconds", "time", "per_s", "_s_")


def is_timing(key: str) -> bool:
    return any(w in key for w in TIMING_WORDS) or key.endswith("_s")


def without_timings(metrics: dict) -> dict:
    """The figures without the timings, at any depth."""
    return {
        k: without_timings(v) if isinstance(v, dict) else v
        for k, v in metrics.items()
        if not is_timing(k)
    }


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_evaluate_twice_gives_identical_figures(name):
    n = SMALL_N.get(name, 8)
    first = without_timings(evaluate(name, seed=11, n=n, device="cpu"))
    second = without_timings(evaluate(name, seed=11, n=n, device="cpu"))
    assert first == second, f"evaluate {name} differs between two runs with the same seed"
    assert first, f"evaluate {name} returned no figures"


def test_every_evaluator_has_a_small_size_here():
    assert set(SHIPPED) <= set(SMALL_N), sorted(set(SHIPPED) - set(SMALL_N))
