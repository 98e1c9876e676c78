"""Experiments on contrastive training (notebook 02b): captioning against contrastive, batch size
and false negatives, SigLIP against CLIP, and curating noisy captions with the shipped CLIP.

Not a shipped model: everything here trains tiny models (`FAST`, a few seconds each) on a fixed
set of ShapeWorld pairs and measures them on clean test data::

    from minimodels.recipes.contrastive import training_pairs, train_dual, evaluate_dual
    pairs = training_pairs(n=3000, seed=0)
    model, losses, curve = train_dual(pairs, objective="siglip", batch_size=16, steps=200)
    evaluate_dual(model, eval_data(seed=0))      # {"zero_shot": ..., "recall_at_1": ...}

    python -m minimodels.recipes.contrastive --seed 10     # every figure of the notebook, JSON
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from minimodels.captioner import Captioner, CaptionerConfig
from minimodels.clip import (
    CLIP,
    CLIPConfig,
    clip_loss,
    recall_at_k,
    zero_shot_classifier,
    zero_shot_predict,
)
from minimodels.contrastive import (
    SIGLIP_LOGIT_BIAS_INIT,
    SIGLIP_LOGIT_SCALE_INIT,
    caption_groups,
    clip_loss_multi_positive,
    false_negatives,
    siglip_loss,
)
from minimodels.data.captions import CLASSNAMES, mixed_captions
from minimodels.data.images import to_tensor
from minimodels.data.shapeworld import generate, render, sample_scenes
from minimodels.recipes.alignment import clip_itm_scores
from minimodels.recipes.clip import load_clip, recall_gallery
from minimodels.text import Tokenizer
from minimodels.train import fit, seed_everything

TOKENIZER = Tokenizer()
# The live model: 32×32 images in 8×8 patches (16 tokens), one block per tower, width 32.
FAST = CLIPConfig(patch_size=8, vision_width=32, vision_layers=1, text_width=32, text_layers=1,
                  embed_dim=32)  # fmt: skip
# The captioner with the same image tower, and a decoder as wide and deep as FAST's text tower.
FAST_CAPTIONER = CaptionerConfig(patch_size=8, vision_width=32, vision_layers=1, text_width=32,
                                 text_layers=1)  # fmt: skip
PROMPT = "a {}"  # the zero-shot prompt of every model here (a short caption's wording)
LR = 2e-3


# ----------------------------------------------------------------------------------------------
# Data: a fixed set of training pairs, and clean test data
# ----------------------------------------------------------------------------------------------


@dataclass
class Pairs:
    """A training set of image-caption pairs: uint8 images (n, 3, 32, 32), n captions, and
    `clean` (n,) bool, True where the caption describes its own image."""

    images: torch.Tensor
    captions: list[str]
    clean: torch.Tensor

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, idx: torch.Tensor) -> Pairs:
        """The pairs at the indices `idx` (a long tensor)."""
        return Pairs(self.images[idx], [self.captions[i] for i in idx.tolist()], self.clean[idx])


def training_pairs(n: int = 3000, seed: int = 0, short_captions: float = 0.5) -> Pairs:
    """n `train` scenes, each with one caption: with probability `short_captions` its bare
    object list ('a red circle and a blue cross'), else a random one of the four templates."""
    scenes = sample_scenes("train", n, seed=3_000_000 + seed)
    captions = mixed_captions(scenes, np.random.default_rng([seed, 21]), short_captions)
    return Pairs(to_tensor(render(scenes, 32)), captions, torch.ones(n, dtype=torch.bool))


def noisy_captions(pairs: Pairs, share: float, seed: int = 0) -> Pairs:
    """A copy of `pairs` where a `share` of the captions (chosen at random) is replaced by the
    caption of another, random pair: alt-text that describes some other picture. `clean` marks
    the pairs whose caption is still right (a swapped-in caption that happens to be the same
    text counts as clean)."""
    if not 0 <= share <= 1:
        raise ValueError(f"share must be in [0, 1]; got {share!r}")
    n, rng = len(pairs), np.random.default_rng([seed, 33])
    swapped = rng.permutation(n)[: round(share * n)]
    captions = list(pairs.captions)
    for i in swapped.tolist():
        captions[i] = pairs.captions[(i + int(rng.integers(1, n))) % n]  # another pair's
    clean = torch.tensor([a == b for a, b in zip(captions, pairs.captions)]) & pairs.clean
    return Pairs(pairs.images, captions, clean)


def batch_of(pairs: Pairs, step: int, batch_size: int, seed: int):
    """Batch `step`: batch_size pairs drawn without replacement -> (images, captions, groups).
    Each model tokenizes the captions its own way (a CLIP's text tower, a captioner's decoder)."""
    idx = np.random.default_rng([seed, step, 5]).choice(len(pairs), batch_size, replace=False)
    captions = [pairs.captions[i] for i in idx.tolist()]
    return pairs.images[idx], captions, caption_groups(captions)


def duplicates_per_batch(pairs: Pairs, batch_size: int, seed: int = 0, batches: int = 20):
    """Mean over `batches` batches of: false negatives (pairs i ≠ j with the same caption,
    counted once per row) and the share of rows that have at least one."""
    counts, rows = [], []
    for step in range(batches):
        groups = batch_of(pairs, step, batch_size, seed)[2]
        counts.append(false_negatives(groups))
        rows.append((groups[:, None] == groups[None, :]).sum(1).gt(1).float().mean().item())
    return float(np.mean(counts)), float(np.mean(rows))


@dataclass
class EvalData:
    images: torch.Tensor  # single-object `test` images (n, 3, 32, 32), for zero-shot
    labels: torch.Tensor  # their class in CLASSNAMES
    gallery: torch.Tensor  # retrieval gallery (m, 3, 32, 32) of 1-3 objects
    captions: list[str]  # its canonical captions


def eval_data(seed: int = 0, n: int = 300, m: int = 500) -> EvalData:
    """Clean test data: n one-object images with their classes, m gallery pairs."""
    images, scenes = generate("test", n, seed=seed, max_objects=1)
    labels = [CLASSNAMES.index(f"{s['objects'][0]['color']} {s['objects'][0]['shape']}")
              for s in scenes]  # fmt: skip
    gallery, captions = recall_gallery(seed=seed, n=m)
    return EvalData(to_tensor(images), torch.tensor(labels), gallery, captions)


@torch.no_grad()
def evaluate_dual(model: CLIP, data: EvalData) -> dict:
    """Zero-shot accuracy over the 30 classes (prompt "a {}") and Recall@1 (mean of the two
    directions) of a dual encoder on `data`."""
    was = model.training
    model.eval()
    classifier = zero_shot_classifier(model, TOKENIZER, CLASSNAMES, [PROMPT])
    acc = (zero_shot_predict(model, data.images, classifier) == data.labels).float().mean()
    r = recall_at_k(model.encode_image(data.gallery), model.encode_text(TOKENIZER(data.captions)),
                    data.captions, k=1)  # fmt: skip
    model.train(was)
    return {"zero_shot": round(acc.item(), 4), "recall_at_1": round((r["t2i"] + r["i2t"]) / 2, 4)}


@torch.no_grad()
def evaluate_captioner(model: Captioner, data: EvalData) -> dict:
    """Zero-shot accuracy by likelihood: argmax over classes c of log p("a {c}" | image)."""
    was = model.training
    model.eval()
    scores = model.score_captions(data.images, [PROMPT.format(c) for c in CLASSNAMES])  # (n, 30)
    model.train(was)
    return {"zero_shot": round((scores.argmax(1) == data.labels).float().mean().item(), 4)}


# ----------------------------------------------------------------------------------------------
# Training: a dual encoder (CLIP or SigLIP loss) or a captioner on the same batches
# ----------------------------------------------------------------------------------------------


def dual_loss(model: CLIP, batch, objective: str, false_negative: str) -> torch.Tensor:
    images, captions, groups = batch
    model.clamp_logit_scale_()  # exp(t) in [1, 100]
    u = model.encode_image(images, normalize=True)  # (B, E)
    v = model.encode_text(TOKENIZER(captions, padding=True), normalize=True)  # (B, E)
    if objective == "siglip":
        return siglip_loss(u, v, model.scale(), model.logit_bias)
    if false_negative == "ignore":
        return clip_loss(u, v, model.scale())
    return clip_loss_multi_positive(u, v, model.scale(), groups, mode=false_negative)


def _train(model, loss_fn, pairs, steps, batch_size, seed, every, evaluate):
    """Constant-lr AdamW in chunks of `every` steps, measuring after each -> (losses, curve)."""
    if batch_size > len(pairs):
        raise ValueError(f"batch_size={batch_size} is larger than the {len(pairs)} pairs")
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    losses, curve, done = [], [], 0
    while done < steps:
        chunk = min(every or steps, steps - done)
        losses += fit(model, loss_fn, lambda s, d=done: batch_of(pairs, d + s, batch_size, seed),
                      steps=chunk, optimizer=opt, progress=False)  # fmt: skip
        done += chunk
        if evaluate is not None:
            curve.append({"step": done, **evaluate(model)})
    model.eval()
    return losses, curve


def train_dual(pairs: Pairs, objective: str = "clip", batch_size: int = 64, steps: int = 200,
               false_negative: str = "ignore", seed: int = 0, config: CLIPConfig = FAST,
               every: int | None = None, data: EvalData | None = None):  # fmt: skip
    """Train a dual encoder from scratch on `pairs`; -> (model, losses, curve).

    objective: "clip" (softmax InfoNCE) or "siglip" (pairwise sigmoid; t′ = log 10, b = −10).
    false_negative (CLIP only): "ignore" (clip_loss), "mask" or "spread" (see
    clip_loss_multi_positive). every/data: measure `evaluate_dual` every so many steps.
    """
    if objective not in ("clip", "siglip"):
        raise ValueError(f"objective must be 'clip' or 'siglip'; got {objective!r}")
    if false_negative not in ("ignore", "mask", "spread"):
        raise ValueError(f"false_negative must be 'ignore', 'mask' or 'spread'; got "
                         f"{false_negative!r}")  # fmt: skip
    seed_everything(seed)
    model = CLIP(config)
    if objective == "siglip":
        with torch.no_grad():
            model.logit_scale.fill_(SIGLIP_LOGIT_SCALE_INIT)  # t′ = log 10
        model.logit_bias = nn.Parameter(torch.tensor(SIGLIP_LOGIT_BIAS_INIT))  # b = −10
    losses, curve = _train(
        model, lambda m, b: dual_loss(m, b, objective, false_negative), pairs, steps, batch_size,
        seed, every, None if data is None else lambda m: evaluate_dual(m, data),
    )  # fmt: skip
    return model, losses, curve


def train_captioner(pairs: Pairs, batch_size: int = 64, steps: int = 200, seed: int = 0,
                    config: CaptionerConfig = FAST_CAPTIONER, every: int | None = None,
                    data: EvalData | None = None):  # fmt: skip
    """Train a captioner from scratch on the same batches as `train_dual`; -> (model, losses,
    curve), the curve from `evaluate_captioner` every `every` steps."""
    seed_everything(seed)
    model = Captioner(config)

    def loss_fn(m, batch):  # the same pairs as the dual encoder's; the groups are not used
        images, captions, _ = batch
        return m(images, **m.encode_captions(captions)).loss

    measure = None if data is None else lambda m: evaluate_captioner(m, data)
    losses, curve = _train(model, loss_fn, pairs, steps, batch_size, seed, every, measure)
    return model, losses, curve


# ----------------------------------------------------------------------------------------------
# Curation: score every pair with the shipped CLIP, keep the best
# ----------------------------------------------------------------------------------------------


def clip_scores(pairs: Pairs, model: CLIP | None = None) -> torch.Tensor:
    """cos(image, caption) of every pair under `model` (default: the shipped CLIP): (n,)."""
    model = (load_clip("cpu") if model is None else model).eval()
    return clip_itm_scores(model, pairs.images, pairs.captions)


def curate(pairs: Pairs, scores: torch.Tensor, keep: float) -> tuple[Pairs, dict]:
    """Keep the `keep` share of pairs with the highest scores -> (kept pairs, report):
    precision = clean share of the kept pairs, recall = share of the clean pairs kept,
    threshold = the lowest kept score."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1]; got {keep!r}")
    if scores.shape != (len(pairs),):
        raise ValueError(f"scores must be ({len(pairs)},); got {tuple(scores.shape)}")
    top = scores.argsort(descending=True)[: max(1, round(keep * len(pairs)))]
    kept = pairs.subset(top)
    report = {
        "precision": round(kept.clean.float().mean().item(), 4),
        "recall": round(kept.clean.sum().item() / max(1, pairs.clean.sum().item()), 4),
        "threshold": round(scores[top].min().item(), 4),
    }
    return kept, report


# ----------------------------------------------------------------------------------------------
# The lab: every figure of notebook 02b
# ----------------------------------------------------------------------------------------------

BATCH_SIZES = (4, 16, 64)  # trained at equal steps (so a larger batch also sees more pairs)
DUPLICATE_BATCH_SIZES = (4, 16, 64, 256, 1024)  # counted only


def steps_to_reach(curve: list[dict], level: float, key: str = "zero_shot") -> int | None:
    """The first measured step at which curve[key] ≥ level (None if never)."""
    return next((c["step"] for c in curve if c[key] >= level), None)


def lab(seed: int = 0, steps: int = 200, caption_steps: int = 400, n: int = 2000,
        noise: float = 0.4, keep: float = 0.5) -> dict:  # fmt: skip
    """All four experiments of notebook 02b on one seed; -> a dict of figures (JSON-ready)."""
    start = time.time()
    pairs, data = training_pairs(n, seed), eval_data(seed)
    out: dict = {"seed": seed, "steps": steps}

    # 1. captioning against contrastive: the same image tower, the same batches of 64
    _, _, clip_curve = train_dual(pairs, "clip", 64, caption_steps, seed=seed, every=25, data=data)
    _, _, cap_curve = train_captioner(pairs, 64, caption_steps, seed=seed, every=50, data=data)
    final = cap_curve[-1]["zero_shot"]
    reach = steps_to_reach(clip_curve, final)
    out["captioning"] = {
        "clip": {c["step"]: c["zero_shot"] for c in clip_curve},
        "captioner": {c["step"]: c["zero_shot"] for c in cap_curve},
        "captioner_final": final, "clip_steps_to_captioner_final": reach,
        "efficiency": None if reach is None else round(caption_steps / reach, 2),
    }  # fmt: skip

    # 2. batch size at equal steps; false negatives counted and masked
    runs = {(o, b): evaluate_dual(train_dual(pairs, o, b, steps, seed=seed)[0], data)
            for o in ("clip", "siglip") for b in BATCH_SIZES}  # fmt: skip
    top = BATCH_SIZES[-1]
    masked = train_dual(pairs, "clip", top, steps, false_negative="mask", seed=seed)[0]
    out["batch"] = {b: runs[("clip", b)] for b in BATCH_SIZES}
    out["false_negatives"] = {b: dict(zip(("per_batch", "rows_share"),
                                          duplicates_per_batch(pairs, b, seed)))
                              for b in DUPLICATE_BATCH_SIZES}  # fmt: skip
    out["mask"] = {"batch_size": top, "ignore": runs[("clip", top)],
                   "mask": evaluate_dual(masked, data)}  # fmt: skip

    # 3. SigLIP against CLIP at the same batch sizes
    out["siglip"] = {b: {o: runs[(o, b)] for o in ("clip", "siglip")} for b in BATCH_SIZES}

    # 4. curation by the shipped CLIP's score
    noisy = noisy_captions(pairs, noise, seed)
    kept, report = curate(noisy, clip_scores(noisy), keep)
    out["curation"] = {
        "noise": noise, "keep": keep, "clean_share": round(noisy.clean.float().mean().item(), 4),
        **report, "clean": runs[("clip", 64)],
        "noisy": evaluate_dual(train_dual(noisy, "clip", 64, steps, seed=seed)[0], data),
        "curated": evaluate_dual(train_dual(kept, "clip", 64, steps, seed=seed)[0], data),
    }  # fmt: skip
    out["seconds"] = round(time.time() - start, 1)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="the figures of notebook 02b, as JSON")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(json.dumps(lab(args.seed), indent=1))


if __name__ == "__main__":
    main()
