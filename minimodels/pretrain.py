"""Train a shipped model from scratch and write it to minimodels/weights/NAME.*

    python -m minimodels.pretrain judge            # about 4 min on a 2-core CPU
    python -m minimodels.pretrain clip --steps 30 --out /tmp/clip
    torchrun --standalone --nproc_per_node=2 -m minimodels.pretrain clip --steps 30 --out /tmp/c

Under torchrun the N processes split every global batch between them (gloo on CPUs, NCCL on
GPUs; see `minimodels.distributed`) and train the model one process would; rank 0 writes the
weights, and the JSON records the world size.

The recipe of each model lives in minimodels/recipes/ (see `minimodels.recipes.SHIPPED`). The
JSON beside the weights records the command, the seed, the steps and the CPU time, so a figure
in the book can always be traced back to the run that produced it; its "notes" (how the recipe
was chosen: what was tried, what it gave) are carried over from the shipped weights' JSON.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from minimodels import distributed
from minimodels.checkpoint import read_metadata, save_model, weights_path
from minimodels.recipes import SHIPPED, recipe
from minimodels.train import get_device


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minimodels.pretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=sorted(SHIPPED))
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: automatic)")
    parser.add_argument(
        "--out", type=Path, default=None, help="path without suffix (default: the shipped one)"
    )
    args = parser.parse_args(argv)
    steps = args.steps or SHIPPED[args.name].steps
    if steps < 1 or args.seed < 0:
        parser.error(f"--steps must be positive and --seed non-negative; got {steps}, {args.seed}")
    try:
        device = distributed.init_from_env(get_device(args.device))
    except ValueError as err:
        parser.error(str(err))
    n = distributed.world_size()

    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        model, history = recipe(args.name, "pretrain")(steps, args.seed, device)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if distributed.rank() == 0:
            save(args, steps, device, model, history, wall, cpu, n)
    finally:
        distributed.shutdown()
    return 0


def save(args, steps, device, model, history, wall, cpu, world_size) -> None:
    """Rank 0 writes the weights and their JSON (the run's command, seed, times, world size)."""
    launch = "python -m" if world_size == 1 else f"torchrun --nproc_per_node={world_size} -m"
    shipped = weights_path(args.name)
    notes = read_metadata(shipped).get("notes") if shipped.with_suffix(".json").exists() else None
    training = {
        "command": f"{launch} minimodels.pretrain {args.name} --steps {steps} --seed {args.seed}",
        "steps": steps,
        "seed": args.seed,
        "final_loss": round(sum(history[-20:]) / len(history[-20:]), 5),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),  # of rank 0
        "device": str(device),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "world_size": world_size,
    }
    extra = {"training": training, **({"notes": notes} if notes else {})}
    path = save_model(model, args.out or shipped, extra=extra)
    size_mb = path.stat().st_size / 1e6
    print(f"wrote {path} ({size_mb:.2f} MB) in {wall:.0f} s wall, {cpu:.0f} s CPU")


if __name__ == "__main__":
    sys.exit(main())
