"""`python -m minimodels.evaluate`: every shipped model, the same JSON for the same seed."""

import json
import subprocess
import sys

import pytest

from minimodels.evaluate import evaluate, main
from minimodels.recipes import SHIPPED


def run(*args):
    cmd = [sys.executable, "-m", "minimodels.evaluate", *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_help_lists_every_shipped_model(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in SHIPPED:
        assert name in out, f"evaluate --help does not name {name}"


def test_cli_prints_identical_json_for_one_seed():
    first, second = (
        run("judge", "--seed", "4", "--n", "200"),
        run("judge", "--seed", "4", "--n", "200"),
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    metrics = json.loads(first.stdout)
    assert set(metrics) == {"accuracy_color", "accuracy_shape", "accuracy_count"}
    assert all(0.95 <= v <= 1 for v in metrics.values())


@pytest.mark.parametrize(
    "args, message",
    [(["judge", "--n", "0"], "n must be at least 1"), (["judge", "--seed", "-1"], "seed"),
     (["gpt5"], "invalid choice"), (["judge", "--device", "tpu"], "device")],
)  # fmt: skip
def test_bad_arguments_are_usage_errors(args, message):
    result = run(*args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_evaluate_checks_its_arguments():
    with pytest.raises(ValueError, match="name must be one of"):
        evaluate("nope")
    with pytest.raises(TypeError, match="n must be an int"):
        evaluate("judge", n=2.5)
