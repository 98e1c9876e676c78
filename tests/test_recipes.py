"""The one table of shipped models: `pretrained`, `pretrain` and `evaluate` agree on it."""

import json

import pytest

import minimodels
from minimodels.checkpoint import read_metadata, weights_path
from minimodels.recipes import SHIPPED, recipe


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_model_has_weights_and_its_three_recipe_functions(name):
    for kind in ("load", "pretrain", "evaluate"):
        assert callable(recipe(name, kind)), f"{name}: no {kind}_{name.replace('-', '_')}"
    meta = read_metadata(weights_path(name))
    assert meta["training"]["command"].startswith(f"python -m minimodels.pretrain {name} ")
    assert meta["training"]["steps"] == SHIPPED[name].steps, (
        f"{name}: the table's default steps differ from the shipped weights'"
    )


def test_the_weights_folder_holds_only_shipped_models_and_their_companions():
    folder = weights_path("clip").parent
    stems = {p.stem for p in folder.glob("*.safetensors")}
    assert set(SHIPPED) <= stems
    # llava's stage-1 model and blind LM are written by `pretrain llava` beside its weights
    assert stems - set(SHIPPED) == {"llava_stage1", "llava_blind"}


def test_available_models_is_the_table():
    assert minimodels.available_models() == sorted(SHIPPED)


def test_pretrained_rejects_unknown_names():
    with pytest.raises(ValueError, match="name must be one of"):
        minimodels.pretrained("gpt5")
    with pytest.raises(TypeError, match="name"):
        minimodels.pretrained(3)
    with pytest.raises(ValueError, match="name must be one of"):
        recipe("judge", "load") and recipe("../judge", "load")


def test_tuning_notes_are_sentences_when_present():
    for name in SHIPPED:
        notes = json.loads(weights_path(name).with_suffix(".json").read_text()).get("notes")
        if notes is not None:
            assert isinstance(notes, list) and all(isinstance(n, str) and n for n in notes), name
