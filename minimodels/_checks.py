"""Input checks shared by the package's public functions.

Each check raises a ValueError or TypeError whose message names the parameter, says what was
expected and shows what came, so that nothing a student types ends in a traceback from deep
inside PyTorch, a NaN, or a silent wrong answer. ``tests/test_hostile.py`` holds them to it.
"""

from __future__ import annotations

import math
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


def check_str(value, name: str, choices=None) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string; got {_show(value)} ({type(value).__name__})")
    if choices is not None and value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}; got {value!r}")
    return value


def check_rng(rng, name: str = "rng") -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{name} must be a numpy Generator (np.random.default_rng(seed)); got {_show(rng)}"
        )
    return rng


def check_instance(value, cls, name: str):
    if not isinstance(value, cls):
        names = " or ".join(c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,)))
        raise TypeError(f"{name} must be a {names}; got {_show(value)} ({type(value).__name__})")
    return value


def check_device(x: torch.Tensor, name: str, device: torch.device | None) -> None:
    """``x`` must live on ``device`` (the model's); the meta device is never accepted."""
    if x.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (no data); pass a real tensor")
    if device is not None and x.device != torch.device(device):
        if not (x.device.type == torch.device(device).type == "cpu"):
            raise ValueError(
                f"{name} is on {x.device} but the model is on {device}; "
                f"move it first: {name}.to({str(device)!r})"
            )


def check_finite(x: torch.Tensor, name: str) -> None:
    if (x.is_floating_point() or x.is_complex()) and x.numel() and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")


def check_tensor(
    x,
    name: str,
    ndim: int | tuple[int, ...] | None = None,
    layout: str = "",
    floating: bool | None = None,
    device: torch.device | None = None,
    nonempty: bool = True,
) -> torch.Tensor:
    """A tensor with the given number of dimensions, kind of dtype and device, finite, non-empty.

    ``floating``: True = a float dtype is required, False = an integer dtype (ids, timesteps),
    None = either (bool is never accepted).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}; got {type(x).__name__}")
    check_device(x, name, device)
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
    check_finite(x, name)
    return x


def module_device(module: torch.nn.Module) -> torch.device | None:
    param = next(module.parameters(), None)
    return None if param is None else param.device
