"""Evaluate a shipped model on freshly generated ShapeWorld data; prints one JSON object.

    python -m minimodels.evaluate judge --seed 0 --n 1000
    {"accuracy_color": 0.999, "accuracy_count": 1.0, "accuracy_shape": 0.998}

The same seed gives the same JSON on every run (on one machine), timings aside. What each
model reports is in the docstring of its recipe's ``evaluate_NAME`` (minimodels/recipes/).
"""

from __future__ import annotations

import argparse
import json
import sys

from minimodels.checks import check_int
from minimodels.recipes import SHIPPED, recipe
from minimodels.train import seed_everything


def evaluate(name: str, seed: int = 0, n: int | None = None, device=None) -> dict:
    """Figures of the shipped model `name` on `n` fresh examples drawn with `seed` (n=None:
    the model's usual size, `SHIPPED[name].n`)."""
    fn = recipe(name, "evaluate")
    seed = check_int(seed, "seed", 0)
    n = SHIPPED[name].n if n is None else check_int(n, "n", 1, 1_000_000)
    seed_everything(seed)
    return fn(seed=seed, n=n, device=device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minimodels.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="models: " + ", ".join(f"{k} (--n {v.n})" for k, v in sorted(SHIPPED.items())),
    )
    parser.add_argument("name", choices=sorted(SHIPPED), metavar="NAME", help="a shipped model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=None, help="examples (default: the model's)")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: automatic)")
    args = parser.parse_args(argv)
    try:
        metrics = evaluate(args.name, seed=args.seed, n=args.n, device=args.device)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    print(json.dumps(metrics, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
