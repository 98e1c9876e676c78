"""Evaluate a shipped model on freshly generated ShapeWorld data; prints one JSON object.

    python -m minimodels.evaluate judge --seed 0 --n 1000
    {"accuracy_color": 0.999, "accuracy_count": 1.0, "accuracy_shape": 0.998}

The same seed gives the same JSON on every run (on one machine).
"""

from __future__ import annotations

import argparse
import json
import sys


def evaluate_judge(seed: int, n: int, device=None) -> dict:
    from minimodels.judge import evaluate_judge, load_pretrained

    return evaluate_judge(load_pretrained(device=device), seed=seed, n=n)


def evaluate_clip(seed: int, n: int, device=None) -> dict:
    from minimodels.clip import evaluate_clip, load_pretrained

    return evaluate_clip(load_pretrained(device=device), seed=seed, n=n)


def evaluate_ddpm(seed: int, n: int, device=None) -> dict:
    # the unconditional U-Net (ddpm, autoguided by ddpm-weak) and the text-to-image pipeline
    # (ddpm-text); the seconds per image vary by machine and load
    from minimodels.unet import (
        evaluate_ddpm,
        load_pretrained,
        load_pretrained_text,
        load_pretrained_weak,
    )

    return evaluate_ddpm(load_pretrained(device), load_pretrained_text(device), seed=seed, n=n,
                         guide_model=load_pretrained_weak(device))  # fmt: skip


def evaluate_llava(seed: int, n: int, device=None) -> dict:
    # the stage-2 model, the stage-1 model and the blind LM, all from `pretrain llava`
    from minimodels.llava import evaluate_llava, load_blind, load_pretrained

    model, stage1 = load_pretrained(device), load_pretrained(device, name="llava_stage1")
    return evaluate_llava(model, stage1, load_blind(device), seed=seed, n=n)


def evaluate_dvae(seed: int, n: int, device=None) -> dict:
    from minimodels.dalle import evaluate_dvae, load_dvae

    return evaluate_dvae(load_dvae(device=device), seed=seed, n=n)


def evaluate_dalle(seed: int, n: int, device=None) -> dict:
    # n prompts per metric; the shipped judge reads the samples, the shipped CLIP re-ranks 8
    from minimodels import clip, judge
    from minimodels.dalle import evaluate_dalle, load_pretrained

    pipe, reader = load_pretrained(device=device), judge.load_pretrained(device=device)
    return evaluate_dalle(pipe, reader, clip.load_pretrained(device=device), seed=seed, n=n)


def evaluate_vilbert(seed: int, n: int, device=None) -> dict:
    # the shipped CLIP and ViLT are judged on the same hard-negative pairs; the retrieval
    # timings (seconds, dual encoder vs fusion, one query over 1000 images) vary by machine
    from minimodels import clip, vilt
    from minimodels.vilbert import evaluate_vilbert, load_pretrained, retrieval_timing

    model, clip_model = load_pretrained(device=device), clip.load_pretrained(device=device)
    out = evaluate_vilbert(model, seed, n, clip_model, vilt.load_pretrained(device=device))
    out["retrieval"] = retrieval_timing(model, clip_model, gallery=1000, seed=seed)
    return out


# name -> function(seed, n, device) returning a dict of metrics
EVALUATORS = {
    "judge": evaluate_judge,
    "clip": evaluate_clip,
    "vilbert": evaluate_vilbert,
    "dvae": evaluate_dvae,
    "dalle": evaluate_dalle,
    "llava": evaluate_llava,
    "ddpm": evaluate_ddpm,
}


def evaluate(name: str, seed: int = 0, n: int = 1000, device=None) -> dict:
    """Metrics of the shipped model `name` on `n` fresh examples drawn with `seed`."""
    if name not in EVALUATORS:
        raise ValueError(f"name must be one of {sorted(EVALUATORS)}; got {name!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}")
    from minimodels.train import seed_everything

    seed_everything(seed)
    return EVALUATORS[name](seed, n, device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minimodels.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=sorted(EVALUATORS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: automatic)")
    args = parser.parse_args(argv)
    try:
        metrics = evaluate(args.name, seed=args.seed, n=args.n, device=args.device)
    except ValueError as err:
        parser.error(str(err))
    print(json.dumps(metrics, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
