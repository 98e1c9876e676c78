"""The package works with no network at all: import, data, shipped weights, evaluation.

The check runs in a child process. Where the kernel allows it (Linux, as root or with user
namespaces) the child gets a network namespace of its own with no interfaces (`unshare -n`);
everywhere, every socket connection it tries is refused and recorded, so that even a library
that would quietly fall back after a failed request is caught.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, socket, sys
attempts = []
def refuse(self, address, *args, **kwargs):
    attempts.append(repr(address))
    raise OSError(f"network disabled by the offline test: {address!r}")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = lambda address, *a, **k: refuse(None, address)

import minimodels
from minimodels import shapeworld as sw
from minimodels.evaluate import evaluate

ds = sw.load("test", n=16, seed=0)                   # a datasets.Dataset, built locally
images, scenes = sw.generate("test", n=4, seed=0)
models = {name: type(minimodels.pretrained(name, device="cpu")).__name__
          for name in minimodels.available_models()}
metrics = evaluate("clip", seed=0, n=40, device="cpu")
print(json.dumps({"rows": len(ds), "models": models, "metrics": metrics, "attempts": attempts}))
"""


def can_unshare() -> bool:
    tool = shutil.which("unshare")
    if tool is None or not sys.platform.startswith("linux"):
        return False
    return subprocess.run([tool, "-n", "true"], capture_output=True).returncode == 0


def test_package_runs_without_network():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_OFFLINE", None)  # the package must switch Hugging Face offline by itself
    env.pop("HF_DATASETS_OFFLINE", None)
    command = [sys.executable, "-c", CHILD]
    if can_unshare():
        command = [shutil.which("unshare"), "-n", *command]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert result.returncode == 0, f"failed offline:\n{result.stderr[-3000:]}"
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["attempts"] == [], f"the package tried to reach the network: {out['attempts']}"
    assert out["rows"] == 16
    assert {"judge", "clip"} <= set(out["models"])
    assert 0 <= out["metrics"]["zero_shot_acc"] <= 1


@pytest.mark.skipif(not can_unshare(), reason="needs `unshare -n` (Linux network namespaces)")
def test_the_namespace_really_has_no_network():
    """The check above is only as good as its sandbox: a connection must fail inside it."""
    probe = "import socket; socket.create_connection(('1.1.1.1', 53), timeout=3)"
    result = subprocess.run(
        [shutil.which("unshare"), "-n", sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "unreachable" in result.stderr.lower()
