"""`python -m minimodels.pretrain`: trains through the recipe table and records the run."""

import json

import pytest

from minimodels.checkpoint import load_model, read_metadata, weights_path
from minimodels.judge import Judge
from minimodels.pretrain import main


def test_pretrain_writes_weights_with_the_run_and_the_shipped_notes(tmp_path, capsys):
    out = tmp_path / "judge"
    assert main(["judge", "--steps", "2", "--seed", "3", "--out", str(out), "--device", "cpu"]) == 0
    assert "wrote" in capsys.readouterr().out
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["training"]["command"] == "python -m minimodels.pretrain judge --steps 2 --seed 3"
    assert meta["training"]["steps"] == 2 and meta["training"]["seed"] == 3
    assert meta["notes"] == read_metadata(weights_path("judge")).get("notes", meta.get("notes"))
    assert isinstance(load_model(Judge, out, device="cpu"), Judge)


@pytest.mark.parametrize(
    "args",
    [["nope"], ["judge", "--steps", "-3"], ["judge", "--seed", "-1"], ["judge", "--device", "tpu"]],
)
def test_bad_arguments_are_usage_errors(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
