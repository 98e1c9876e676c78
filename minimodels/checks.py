"""Input checks for the entry points a student calls: one line each at the top of a function.

Each check raises a ValueError or TypeError whose message names the parameter, says what was
expected and shows what came, so that nothing a student types ends in a traceback from deep
inside PyTorch. ``tests/test_hostile.py`` holds the entry points to it.

Where checks go: model ``forward`` / ``encode_*`` / ``generate``, pipelines, the tokenizer,
dataset loaders, ``pretrained`` and the command lines. Inner layers, scheduler internals and
config dataclasses trust their callers, so that their maths stays in view.

No host syncs: a check reads a tensor's *values* (a token id out of range, float images
outside [0, 1]) only while the tensor is on the CPU, as data comes from the tokenizer or from
numpy. A tensor already on a GPU is checked for shape, dtype and device only, so that a
forward pass never waits for the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
import torch

# Upper bounds that keep an absurd hyper-parameter from allocating terabytes or looping for hours.
MAX_WIDTH = 8192  # embedding widths, channels, vocabulary-sized layers
MAX_IMAGE_SIZE = 512
MAX_ITEMS = 10_000_000  # examples to generate in one call, steps of a loop


def _show(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}, dtype {value.dtype} on {value.device}"
    text = repr(value)
    return (text[:60] + "...") if len(text) > 60 else text


# ---------------------------------------------------------------------------------- numbers


def check_int(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An int (not a bool) in [minimum, maximum]; numpy integers are accepted."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int; got {_show(value)} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}; got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}; got {value}")
    return value


def check_float(
    value,
    name: str,
    minimum: float | None = None,
    maximum: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> float:
    """A finite real number (not a bool) within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number; got {_show(value)} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value}")
    lo_ok = minimum is None or (value >= minimum if min_inclusive else value > minimum)
    hi_ok = maximum is None or (value <= maximum if max_inclusive else value < maximum)
    if not (lo_ok and hi_ok):
        lo = "-inf" if minimum is None else f"{minimum}"
        hi = "inf" if maximum is None else f"{maximum}"
        interval = ("[" if min_inclusive else "(") + f"{lo}, {hi}" + ("]" if max_inclusive else ")")
        raise ValueError(f"{name} must be in {interval}; got {value}")
    return value


def check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {_show(value)}")
    return bool(value)


# ---------------------------------------------------------------------------------- objects


def check_str(value, name: str, choices=None) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string; got {_show(value)} ({type(value).__name__})")
    if choices is not None and value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}; got {value!r}")
    return value


def check_strings(values, name: str) -> list[str]:
    """A non-empty list (or tuple) of strings; a bare string is refused (it is a sequence too)."""
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a list of strings; got {_show(values)}")
    if len(values) == 0:
        raise ValueError(f"{name} is empty: expected at least one string")
    if any(not isinstance(v, str) for v in values):
        raise TypeError(f"{name} must hold only strings; got {_show(values)}")
    return list(values)


def check_prompts(prompts, name: str = "prompt") -> list[str]:
    """A prompt or a list of prompts -> a non-empty list of strings."""
    return [prompts] if isinstance(prompts, str) else check_strings(prompts, name)


def check_instance(value, cls, name: str):
    if not isinstance(value, cls):
        names = " or ".join(c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,)))
        article = "an" if names[0].lower() in "aeio" else "a"  # "a UNet2DModel"
        raise TypeError(
            f"{name} must be {article} {names}; got {_show(value)} ({type(value).__name__})"
        )
    return value


def check_rng(rng, name: str = "rng") -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{name} must be a numpy Generator (np.random.default_rng(seed)); got {_show(rng)}"
        )
    return rng


def check_generator(generator=None, seed: int | None = None) -> torch.Generator:
    """The torch.Generator a sampler draws from: `generator`, else one seeded with `seed`
    (0 when both are None), so that sampling twice gives the same images."""
    if generator is not None and seed is not None:
        raise ValueError("give generator or seed, not both")
    if generator is not None:
        return check_instance(generator, torch.Generator, "generator")
    seed = 0 if seed is None else check_int(seed, "seed", 0)
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------- tensors


def check_device(
    x: torch.Tensor, name: str, device: torch.device | None, model_device=None
) -> None:
    """``x`` must live on ``device`` (the model's); with device None, anywhere (the model, on
    ``model_device``, moves it). The meta device (shapes, no data) only for a model on meta."""
    model = device if device is not None else model_device
    if x.device.type == "meta" and (model is None or torch.device(model).type != "meta"):
        raise ValueError(f"{name} is on the meta device (no data); pass a real tensor")
    if device is not None and x.device != torch.device(device):
        if not (x.device.type == torch.device(device).type == "cpu"):
            raise ValueError(
                f"{name} is on {x.device} but the model is on {device}; "
                f"move it first: {name}.to({str(device)!r})"
            )


def check_tensor(
    x,
    name: str,
    ndim: int | tuple[int, ...] | None = None,
    layout: str = "",
    floating: bool | None = None,
    device: torch.device | None = None,
    nonempty: bool = True,
    model_device: torch.device | None = None,
) -> torch.Tensor:
    """A tensor with the given number of dimensions, kind of dtype and device, non-empty.

    ``floating``: True = a float dtype is required, False = an integer dtype (ids, timesteps),
    None = either (bool and complex are never accepted). ``device``, ``model_device``: see
    `check_device`. Reads no values.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}; got {type(x).__name__}")
    check_device(x, name, device, model_device)
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if ndims is not None and x.ndim not in ndims:
        want = " or ".join(str(n) for n in ndims)
        raise ValueError(
            f"{name} must have {want} dimensions {layout}; got shape {tuple(x.shape)}".strip()
        )
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must be a real-valued tensor {layout}; got dtype {x.dtype}")
    if floating is True and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor {layout}; got dtype {x.dtype}")
    if floating is False and x.is_floating_point():
        raise TypeError(f"{name} must be an integer tensor {layout}; got dtype {x.dtype}")
    if nonempty and x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); pass at least one item")
    return x


def check_finite(x: torch.Tensor, name: str) -> None:
    """No NaN or inf in a CPU tensor (a tensor on another device is not read)."""
    if x.device.type == "cpu" and x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")


def check_images(
    images,
    name: str = "images",
    size: int | None = None,
    channels: int = 3,
    atol: float = 1e-3,
    normalized: bool = False,
):
    """Images as the vision models take them -> float32 (B, C, H, W) in [0, 1].

    uint8 (B, C, H, W) in 0..255 or float in [0, 1] (± atol); numpy arrays are accepted.
    ``size``: the height and width required (None: any). The range is read on CPU tensors only.
    ``normalized=True``: float pixel values an image processor has already normalised,
    (x − mean) / std per channel, so any finite values (and no uint8).
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    layout = f"(B, {channels}, H, W)" if size is None else f"(B, {channels}, {size}, {size})"
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}; got {type(images).__name__}")
    check_device(images, name, None)
    if images.ndim != 4:
        hint = f" (a single image? use {name}[None])" if images.ndim == 3 else ""
        raise ValueError(
            f"{name} must have 4 dimensions {layout}; got shape {tuple(images.shape)}{hint}"
        )
    if images.shape[1] != channels:
        hint = " -- channels-last? use .permute(0, 3, 1, 2)" if images.shape[-1] == channels else ""
        raise ValueError(
            f"{name} must have {channels} channels in dim 1 {layout}; got shape "
            f"{tuple(images.shape)}{hint}"
        )
    if size is not None and tuple(images.shape[-2:]) != (size, size):
        raise ValueError(f"{name} must be {size}×{size}; got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (B = 0)")
    if images.numel() == 0:
        raise ValueError(f"{name} has no pixels; got shape {tuple(images.shape)}")
    if normalized:
        if not images.is_floating_point():
            raise TypeError(f"{name} must be float pixel values normalised by the model's image "
                            f"processor, (x − mean) / std; got {images.dtype}")  # fmt: skip
        check_finite(images, name)
        return images.float()
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise TypeError(f"{name} must be uint8 (0..255) or float in [0, 1]; got {images.dtype}")
    if images.device.type == "cpu":
        lo, hi = images.min().item(), images.max().item()
        if math.isnan(lo) or math.isnan(hi):
            raise ValueError(f"{name} contains NaN values")
        if not (lo >= -atol and hi <= 1 + atol):
            raise ValueError(
                f"float {name} must lie in [0, 1]; got values in [{lo:.3g}, {hi:.3g}] "
                "(uint8 images can be passed as they are; [-1, 1] images need (x + 1) / 2)"
            )
    return images.float()


def check_ids(
    ids, name: str, vocab_size: int, max_length: int | None = None, model_device=None
) -> torch.Tensor:
    """Token ids: an integer tensor (B, L) in [0, vocab_size), L ≤ max_length -> a LongTensor.

    The ids are read (for the range) on CPU tensors only. model_device: see `check_device`.
    """
    check_tensor(ids, name, 2, "(B, L)", floating=False, model_device=model_device)
    if max_length is not None and ids.shape[1] > max_length:
        raise ValueError(
            f"{name} has L={ids.shape[1]} tokens, more than the model's {max_length}; tokenize "
            f"with max_length={max_length}"
        )
    if ids.device.type == "cpu":
        lo, hi = ids.min().item(), ids.max().item()
        if lo < 0 or hi >= vocab_size:
            raise ValueError(
                f"{name} must lie in [0, vocab_size={vocab_size}); got ids in [{lo}, {hi}] "
                "(a tokenizer with another vocabulary?)"
            )
    return ids.long()


def module_device(module: torch.nn.Module) -> torch.device | None:
    param = next(module.parameters(), None)
    return None if param is None else param.device
