"""minimodels: from-scratch toy vision-language models for the course
"Vision-Language Models from Scratch".

Everything runs offline: the package never touches the network. Hugging Face
libraries are switched to offline mode here unless the user already chose.
"""

import os as _os

# No network at import or run time: `datasets` / `huggingface_hub` must never try a hub.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

__version__ = "0.1.0"

# The shipped models: name -> (module, loader function). `pretrained(name)` imports lazily
# so that `import minimodels` stays fast.
_PRETRAINED = {
    "judge": ("minimodels.judge", "load_pretrained"),
    "clip": ("minimodels.clip", "load_pretrained"),
    "vilbert": ("minimodels.vilbert", "load_pretrained"),
    "vilt": ("minimodels.vilt", "load_pretrained"),
    "dvae": ("minimodels.dalle", "load_dvae"),
    "dalle": ("minimodels.dalle", "load_pretrained"),
    "latent": ("minimodels.latent", "load_pretrained"),
    "dit": ("minimodels.latent", "load_pipeline"),
    "ddpm": ("minimodels.unet", "load_pretrained"),
    "ddpm-weak": ("minimodels.unet", "load_pretrained_weak"),
    "ddpm-text": ("minimodels.unet", "load_pretrained_text"),
    "gpt": ("minimodels.gpt", "load_pretrained"),
    "llava": ("minimodels.llava", "load_pretrained"),
}


def available_models() -> list[str]:
    """Names accepted by `pretrained` (each has weights in minimodels/weights/)."""
    return sorted(_PRETRAINED)


def pretrained(name: str, device=None):
    """Load a shipped model by name, e.g. ``minimodels.pretrained("judge")``.

    The weights live in ``minimodels/weights/NAME.safetensors`` (+ ``NAME.json``) and were
    produced by ``python -m minimodels.pretrain NAME``.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, one of {available_models()}; got {type(name)}")
    if name not in _PRETRAINED:
        raise ValueError(f"unknown model name {name!r}; expected one of {available_models()}")
    import importlib

    module_name, fn_name = _PRETRAINED[name]
    return getattr(importlib.import_module(module_name), fn_name)(device=device)
