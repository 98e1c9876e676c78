"""The training helpers: seeding, device choice, the `fit` loop."""

import pytest
import torch
import torch.nn as nn

from minimodels.train import fit, get_device, seed_everything


def test_seed_everything_repeats_random_numbers():
    seed_everything(3)
    a = torch.randn(5)
    seed_everything(3)
    assert torch.equal(a, torch.randn(5))
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)


def test_get_device_default_and_override(monkeypatch):
    monkeypatch.delenv("MINIMODELS_DEVICE", raising=False)
    dev = get_device()
    assert dev.type in ("cpu", "cuda", "mps")
    assert get_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("MINIMODELS_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")
    with pytest.raises(ValueError, match="device"):
        get_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            get_device("cuda")


def _regression_problem():
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    w = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    y = x @ w
    return x, y


def test_fit_learns_linear_regression_and_returns_history():
    x, y = _regression_problem()
    model = nn.Linear(4, 1)

    def loss_fn(m, batch):
        xb, yb = batch
        return nn.functional.mse_loss(m(xb), yb)

    history = fit(model, loss_fn, lambda step: (x, y), steps=300, lr=0.05, progress=False)
    assert len(history) == 300
    assert history[-1] < 1e-3 < history[0]
    assert torch.allclose(
        model.weight.data.T, torch.tensor([[1.0], [-2.0], [0.5], [3.0]]), atol=0.05
    )


def test_fit_is_deterministic_and_accepts_iterables():
    x, y = _regression_problem()
    data = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 256, 32)]

    def run():
        seed_everything(0)
        model = nn.Linear(4, 1)
        return fit(
            model,
            lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]),
            data,
            steps=20,
            progress=False,
            cosine=True,
            warmup=5,
        )

    assert run() == run()


def test_fit_time_budget_stops_and_bad_arguments():
    model = nn.Linear(2, 1)

    def loss(m, b):
        return m(torch.ones(1, 2)).pow(2).sum()

    history = fit(model, loss, lambda s: None, time_budget=0.2, progress=False)
    assert len(history) >= 1
    with pytest.raises(ValueError, match="steps or time_budget"):
        fit(model, loss, lambda s: None)
    with pytest.raises(ValueError, match="lr"):
        fit(model, loss, lambda s: None, steps=1, lr=-1)
    with pytest.raises(ValueError, match="steps"):
        fit(model, loss, lambda s: None, steps=0)
    with pytest.raises(TypeError, match="model"):
        fit("not a model", loss, lambda s: None, steps=1)


def test_fit_reports_a_nan_loss_clearly():
    model = nn.Linear(2, 1)
    with pytest.raises(FloatingPointError, match="step 0"):
        fit(
            model,
            lambda m, b: m(torch.ones(1, 2)).sum() * float("nan"),
            lambda s: None,
            steps=3,
            progress=False,
        )
