"""Training utilities: seeding, device choice, a small `fit` loop.

No framework: `fit` runs a loss function over batches for a number of steps (or seconds),
shows a progress bar and returns the loss history. Everything else stays in the notebook,
where a student can read it.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from minimodels import distributed

DEVICE_ENV = "MINIMODELS_DEVICE"


def seed_everything(seed: int = 0) -> int:
    """Seed Python, numpy and torch (all devices) so a run gives the same numbers again."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CPU, CUDA and MPS generators
    return seed


def get_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: `device` if given, else $MINIMODELS_DEVICE, else cuda, mps, cpu.

    >>> get_device("cpu")
    device(type='cpu')
    """
    choice = device if device is not None else os.environ.get(DEVICE_ENV) or None
    if choice is not None:
        try:
            dev = torch.device(choice)
        except (RuntimeError, TypeError, ValueError) as err:
            raise ValueError(
                f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps'; got {choice!r}"
            ) from err
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {choice!r} asked for, but CUDA is not available here")
        if dev.type == "mps" and not (
            getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
        ):
            raise ValueError(f"device {choice!r} asked for, but MPS is not available here")
        if dev.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device must be cpu, cuda or mps; got {choice!r}")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device: torch.device | str, bf16: bool):
    """bfloat16 autocast on `device` when bf16 is True, else a no-op context."""
    device = torch.device(device)
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def fit(
    model: torch.nn.Module,
    loss_fn: Callable,
    batches: Callable[[int], object] | Iterable,
    *,
    steps: int | None = None,
    time_budget: float | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer: torch.optim.Optimizer | None = None,
    warmup: int = 0,
    cosine: bool = False,
    grad_clip: float | None = 1.0,
    bf16: bool = False,
    progress: bool = True,
    desc: str = "training",
) -> list[float]:
    """Train `model` by minimising `loss_fn(model, batch)`; returns the loss of every step.

    batches: a function `step -> batch` (fresh data each step) or an iterable (cycled).
    Stops after `steps` steps or `time_budget` seconds, whichever comes first (give one).
    The optimizer is AdamW over the parameters that require grad unless one is given.
    `warmup` steps of linear warm-up, then constant or (cosine=True) cosine decay to 0.
    bf16=True runs the forward pass under bfloat16 autocast (faster on recent CPUs).
    Under torchrun (see `minimodels.distributed`) each process trains on its shard of every
    batch and the gradients are averaged over processes before the step; the history holds the
    mean loss over processes and the progress bar shows on rank 0 only.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable as loss_fn(model, batch)")
    if steps is None and time_budget is None:
        raise ValueError("give steps or time_budget (or both)")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive int; got {steps!r}")
    if time_budget is not None and not (time_budget > 0 and math.isfinite(time_budget)):
        raise ValueError(f"time_budget must be a positive number of seconds; got {time_budget!r}")
    if not (isinstance(lr, (int, float)) and 0 < lr < 10):
        raise ValueError(f"lr must be a number in (0, 10); got {lr!r}")
    if cosine and steps is None:
        raise ValueError("cosine=True needs steps (the schedule's length)")
    if time_budget is not None and distributed.is_distributed():
        raise ValueError("time_budget stops each process on its own clock: give steps")

    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer is None:
        if not params:
            raise ValueError("model has no parameter with requires_grad=True: nothing to train")
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]

    def lr_factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cosine:
            t = (step - warmup) / max(1, steps - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        return 1.0

    if callable(batches):
        get_batch = batches
    else:
        iterator = iter(batches)

        def get_batch(step):
            nonlocal iterator
            try:
                return next(iterator)
            except StopIteration:
                iterator = iter(batches)
                return next(iterator)

    device = next(iter(model.parameters()), torch.empty(0)).device
    was_training = model.training
    model.train()
    distributed.broadcast_parameters(model)  # several processes: all start from rank 0's copy
    if distributed.rank() > 0:  # other random draws (noise, masks) than rank 0's shard gets
        torch.manual_seed(torch.initial_seed() + 7919 * distributed.rank())
    history: list[float] = []
    start = time.perf_counter()
    bar = tqdm(total=steps, desc=desc, disable=not progress or distributed.rank() > 0, leave=False)
    step = 0
    try:
        while True:
            if steps is not None and step >= steps:
                break
            if time_budget is not None and time.perf_counter() - start >= time_budget:
                break
            for g, base in zip(optimizer.param_groups, base_lrs):
                g["lr"] = base * lr_factor(step)
            batch = distributed.shard(get_batch(step))  # this process's rows (all of them if 1)
            with autocast(device, bf16):
                loss = loss_fn(model, batch)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise TypeError("loss_fn must return a scalar tensor")
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became {loss.item()} at step {step}: lower lr (now {lr}) "
                    "or check the inputs"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(params)  # ḡ = (1/N) Σ_r g_r (nothing with 1 process)
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            history.append(distributed.average(loss))
            step += 1
            bar.update(1)
            if step % 10 == 0 or step == 1:
                bar.set_postfix(loss=f"{history[-1]:.4f}")
    finally:
        bar.close()
        model.train(was_training)
    return history
