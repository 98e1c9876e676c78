"""Checkpoints: safetensors weights, a JSON config, a checksum; the shipped weights' records."""

import json

import pytest
import torch
import torch.nn as nn

from minimodels.checkpoint import load_model, read_metadata, save_model, sha256
from minimodels.judge import Judge, JudgeConfig


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
