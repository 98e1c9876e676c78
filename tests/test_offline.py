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


# The Hugging Face switches: set offline by the package, unless the user chose already.


_NO_NETWORK = """
import os, socket, sys, tempfile

def refuse(*args, **kwargs):
    raise RuntimeError("network access attempted")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

import minimodels
print(os.environ.get("HF_HUB_OFFLINE"), os.environ.get("HF_DATASETS_OFFLINE"))
if "--load" in sys.argv:
    from minimodels import shapeworld
    ds = shapeworld.load("train", 3, seed=0)
    path = os.path.join(tempfile.mkdtemp(), "x.parquet")
    ds.to_parquet(path)
    back = shapeworld.load_image_text(path)
    assert back["caption"] == ds["caption"]
    print("loaded", len(back))
"""


def run_python(env_updates, *args):
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    }
    env.update(env_updates)
    res = subprocess.run(
        [sys.executable, "-c", _NO_NETWORK, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.split("\n")


def test_package_is_offline(tmp_path):
    out = run_python({"HF_HOME": str(tmp_path / "hf")}, "--load")
    assert out[0] == "1 1"
    assert out[1] == "loaded 3"


def test_explicit_offline_setting_is_kept():
    assert run_python({"HF_HUB_OFFLINE": "0"})[0] == "0 1"
    assert run_python({"HF_DATASETS_OFFLINE": "0"})[0] == "1 0"
