"""Recipes: everything that makes or measures a shipped model, apart from the models themselves.

A model file (``minimodels/clip.py``, ...) holds the model and nothing else. Its recipe
(``minimodels/recipes/clip.py``, ...) holds what it took to ship it: the training batches, the
training loop, the evaluation, and the loading of the shipped weights. For each model name
below, the recipe module defines three functions::

    load_NAME(device=None)               the shipped model (or pipeline), from minimodels/weights
    pretrain_NAME(steps, seed, device)   train it from scratch -> (model, loss history)
    evaluate_NAME(seed, n, device)       its figures on fresh ShapeWorld data -> dict

(``-`` in a name becomes ``_``: ``load_ddpm_weak``.) This one table drives
``minimodels.pretrained(name)``, ``python -m minimodels.pretrain NAME`` and
``python -m minimodels.evaluate NAME``, so the three always list the same models.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import NamedTuple


class Shipped(NamedTuple):
    module: str  # the recipe module in minimodels/recipes/
    steps: int  # training steps of `pretrain` (what the shipped weights were trained with)
    n: int  # examples `evaluate` draws by default


SHIPPED: dict[str, Shipped] = {
    "judge": Shipped("judge", 300, 1000),
    "clip": Shipped("clip", 3000, 1000),
    "vilbert": Shipped("vilbert", 5000, 1000),
    "vilt": Shipped("vilt", 4800, 1000),
    "dvae": Shipped("dvae", 2000, 1000),
    "dalle": Shipped("dalle", 3000, 200),
    "ddpm": Shipped("ddpm", 8500, 256),
    "ddpm-weak": Shipped("ddpm", 3000, 256),
    "ddpm-text": Shipped("ddpm", 10000, 256),
    "flow": Shipped("flow", 8500, 256),
    "latent": Shipped("latent", 2000, 256),
    "dit": Shipped("latent", 4000, 256),
    "gpt": Shipped("gpt", 2000, 500),
    "llava": Shipped("llava", 14000, 500),
    "frozen": Shipped("frozen", 2500, 500),
}


def recipe(name: str, kind: str) -> Callable:
    """The function `kind` ("load", "pretrain" or "evaluate") of the shipped model `name`."""
    if not isinstance(name, str) or name not in SHIPPED:
        raise ValueError(f"name must be one of {sorted(SHIPPED)}; got {name!r}")
    module = importlib.import_module(f"minimodels.recipes.{SHIPPED[name].module}")
    return getattr(module, f"{kind}_{name.replace('-', '_')}")
