"""Checkpoints: weights in safetensors, the config in JSON, a checksum to catch damage.

A checkpoint named ``judge`` is two files::

    judge.safetensors   the tensors (safetensors: plain data, never unpickled)
    judge.json          {"architecture": "Judge", "config": {...}, "sha256": "...", ...}

Loading checks that the file is safetensors, that its checksum matches, that it was written
for the same architecture, and that every tensor has the expected name and shape.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from minimodels.train import get_device

FORMAT = "minimodels-checkpoint/1"


def _paths(path) -> tuple[Path, Path]:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or Path; got {type(path).__name__}")
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    elif path.suffix in (".pt", ".pth", ".bin", ".pkl", ".ckpt"):
        raise ValueError(
            f"only safetensors checkpoints are loaded (pickle files can run code); got {path}"
        )
    return path.with_suffix(".safetensors"), path.with_suffix(".json")


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_model(model: torch.nn.Module, path, extra: dict | None = None) -> Path:
    """Save `model` (which has a dataclass `model.config`) to PATH.safetensors + PATH.json."""
    config = getattr(model, "config", None)
    if config is None or not dataclasses.is_dataclass(config):
        raise TypeError("model must have a dataclass `config` attribute to be saved")
    st_path, json_path = _paths(path)
    st_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(st_path), metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "architecture": type(model).__name__,
        "config": dataclasses.asdict(config),
        "sha256": sha256(st_path),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    if extra:
        meta.update(extra)
    json_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return st_path


def read_metadata(path) -> dict:
    """The JSON side of a checkpoint (architecture, config, checksum, training notes)."""
    _, json_path = _paths(path)
    if not json_path.exists():
        raise ValueError(f"checkpoint config not found: {json_path}")
    try:
        meta = json.loads(json_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"checkpoint config {json_path} is not valid JSON: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{json_path} is not a {FORMAT} file")
    return meta


def load_model(model_cls, path, device=None, verify: bool = True) -> torch.nn.Module:
    """Build `model_cls(config)` from PATH.json and load PATH.safetensors into it.

    `model_cls` must have a `config_class` attribute (its config dataclass). Raises a
    ValueError naming the problem for a missing, damaged or mismatched checkpoint.
    """
    st_path, json_path = _paths(path)
    if not st_path.exists():
        raise ValueError(f"checkpoint weights not found: {st_path}")
    meta = read_metadata(path)
    if meta.get("architecture") != model_cls.__name__:
        raise ValueError(
            f"{st_path.name} holds a {meta.get('architecture')!r} model, not a "
            f"{model_cls.__name__!r}"
        )
    if verify and meta.get("sha256") != sha256(st_path):
        raise ValueError(
            f"{st_path} does not match the checksum in {json_path.name}: the file is damaged "
            "or was changed; re-create it with `python -m minimodels.pretrain`"
        )
    try:
        config = model_cls.config_class(**meta["config"])
    except TypeError as err:
        raise ValueError(
            f"{json_path.name} has a config that {model_cls.__name__} rejects: {err}"
        ) from err
    try:
        state = load_file(str(st_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{st_path} is not a readable safetensors file: {err}") from err
    model = model_cls(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"{st_path.name} does not fit {model_cls.__name__}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}"
        )
    model.load_state_dict(state)
    model.eval()
    return model.to(get_device(device))


WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def weights_path(name: str) -> Path:
    """Where the shipped checkpoint NAME lives (without suffix)."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name[0] == ".":
        raise ValueError(f"name must be a plain model name such as 'clip'; got {name!r}")
    return WEIGHTS_DIR / name
