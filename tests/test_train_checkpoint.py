"""seed_everything, get_device, fit, and safetensors checkpoints."""

import json

import pytest
import torch
import torch.nn as nn

from minimodels.checkpoint import load_model, read_metadata, save_model, sha256
from minimodels.judge import Judge, JudgeConfig
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


def test_checkpoint_round_trip(tmp_path):
    model = Judge(JudgeConfig(channels=(4, 8, 8), hidden=16))
    path = save_model(model, tmp_path / "tiny", extra={"training": {"steps": 1}})
    assert path.suffix == ".safetensors"
    meta = read_metadata(tmp_path / "tiny")
    assert meta["architecture"] == "Judge"
    assert meta["config"]["channels"] == [4, 8, 8]
    assert meta["sha256"] == sha256(path)
    loaded = load_model(Judge, tmp_path / "tiny", device="cpu")
    assert loaded.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    assert torch.allclose(model(x)["count"], loaded(x)["count"])


def test_checkpoint_refuses_damaged_or_foreign_files(tmp_path):
    model = Judge(JudgeConfig(channels=(4, 8, 8), hidden=16))
    path = save_model(model, tmp_path / "tiny")
    # A pickle checkpoint is refused by name: nothing is ever unpickled.
    with pytest.raises(ValueError, match="only safetensors"):
        load_model(Judge, tmp_path / "tiny.pt")
    # Tampering: one byte changed -> checksum mismatch.
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        load_model(Judge, tmp_path / "tiny")
    # Truncated file with a matching checksum (someone re-hashed it): still a clear error.
    path.write_bytes(bytes(data[:100]))
    meta = json.loads((tmp_path / "tiny.json").read_text())
    meta["sha256"] = sha256(path)
    (tmp_path / "tiny.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_model(Judge, tmp_path / "tiny")
    # Another architecture.
    other = nn.Linear(2, 2)
    other.config = JudgeConfig()
    save_model(other, tmp_path / "linear")
    with pytest.raises(ValueError, match="'Linear' model, not a 'Judge'"):
        load_model(Judge, tmp_path / "linear")
    # Same architecture name, other shapes.
    save_model(Judge(JudgeConfig(channels=(4, 8, 8), hidden=16)), tmp_path / "small")
    meta = json.loads((tmp_path / "small.json").read_text())
    meta["config"]["hidden"] = 32
    (tmp_path / "small.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not fit Judge"):
        load_model(Judge, tmp_path / "small")
    with pytest.raises(ValueError, match="not found"):
        load_model(Judge, tmp_path / "missing")


def test_save_requires_a_config(tmp_path):
    with pytest.raises(TypeError, match="config"):
        save_model(nn.Linear(2, 2), tmp_path / "x")


def test_every_shipped_weights_file_has_its_checksum_recorded():
    from minimodels.checkpoint import WEIGHTS_DIR

    files = sorted(WEIGHTS_DIR.glob("*.safetensors"))
    assert files, "no shipped weights found"
    for st in files:
        meta = json.loads(st.with_suffix(".json").read_text())
        assert meta["sha256"] == sha256(st), f"{st.name}: the recorded checksum does not match"
        assert st.stat().st_size < 5e6, f"{st.name} is larger than a course download should be"
        assert "training" in meta and "command" in meta["training"], (
            f"{st.name}: record the command that trained it"
        )
    assert not list(WEIGHTS_DIR.glob("*.pt")) and not list(WEIGHTS_DIR.glob("*.bin")), (
        "only safetensors weights are shipped"
    )
