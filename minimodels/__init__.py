"""minimodels: from-scratch toy vision-language models for the course
"Vision-Language Models from Scratch".

A map for the reader:

    layers.py, diffusion.py     the shared building blocks; noise schedules and samplers
    clip.py, vilbert.py, ...    one file per model: its config, modules and forward pass
    pipelines.py                text-to-image sampling around trained models (diffusers-style)
    text.py                     the word-level tokenizer
    shapeworld.py, data/        the toy world, and every text made from a scene
    recipes/                    how each shipped model is trained, evaluated and loaded
    train.py, checkpoint.py     the `fit` loop and device choice; safetensors checkpoints
    metrics.py                  measuring generated images with the judge (a toy FID, ...)
    pretrain.py, evaluate.py    the command lines: python -m minimodels.pretrain / evaluate
    checks.py                   the input checks of the entry points a student calls
    exercises.py                the notebooks' exercise checks

Everything runs offline: the package never touches the network. Hugging Face
libraries are switched to offline mode here unless the user already chose.
"""

import os as _os

# No network at import or run time: `datasets` / `huggingface_hub` must never try a hub.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

__version__ = "0.1.0"

from minimodels.recipes import SHIPPED, recipe  # noqa: E402  (a table; imports no model)


def available_models() -> list[str]:
    """Names accepted by `pretrained` (each has weights in minimodels/weights/)."""
    return sorted(SHIPPED)


def pretrained(name: str, device=None):
    """Load a shipped model by name, e.g. ``minimodels.pretrained("judge")``.

    The weights live in ``minimodels/weights/NAME.safetensors`` (+ ``NAME.json``) and were
    produced by ``python -m minimodels.pretrain NAME``; the loader is the recipe's
    ``load_NAME`` (minimodels/recipes/).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, one of {available_models()}; got {type(name)}")
    return recipe(name, "load")(device=device)
