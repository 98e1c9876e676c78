"""The alignment benchmark of notebook 03: one set of pairs, scored by every model that reads them.

ViLBERT (two streams), ViLT (one stream) and CLIP (a dual encoder) are measured on the same
`test` scenes, each with its true caption, a random negative, a hard negative (one colour or
shape changed, or two colours exchanged) and, where the scene has two related objects, a
relation swap::

    from minimodels.recipes.alignment import itm_pairs, itm_scores, alignment_figures
    data = itm_pairs(seed=1, n=200)
    itm_scores(model, data["images"], data["scenes"], data["hard"])   # ViLBERT or ViLT
    alignment_figures(model, data, seed=1)                             # their accuracies

It also holds the relation swaps as training batches (`relation_batch`, `relation_itm_loss`,
`RELATION_CURRICULUM`), which ViLBERT's relation phase (recipes/vilbert.py) learns from.

The recipes of ViLBERT and ViLT (training, loading, `evaluate_NAME`) build on it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from minimodels.data.captions import (
    NUM_TEMPLATES,
    describe,
    hard_negative,
    random_negative,
    relation_negative,
)
from minimodels.data.images import to_tensor
from minimodels.data.shapeworld import generate, render, sample_scenes
from minimodels.data.world import COLORS, RELATIONS, SHAPES
from minimodels.text import Tokenizer
from minimodels.vilbert import ViLBERT, regions_from_scenes
from minimodels.vilt import ViLT

TOKENIZER = Tokenizer()


def itm_pairs(
    seed: int = 0,
    n: int = 1000,
    image_size: int = 32,
    min_objects: int = 1,
    max_objects: int = 3,
    template: int | None = None,
) -> dict:
    """The evaluation set of alignment: n `test` scenes, each with its true caption, a random
    negative and a hard negative (same template: `template`, or a random one per scene).
    Deterministic in seed. images: uint8 (n, 3, H, W).

    Relation pairs, on the scenes that have one (`relation_negative`): relation_index (their
    indices), relation_positive (the relation caption) and relation (its swap, which is false).
    Half the scenes, drawn at random, get the converse wording (relation_converse True: the
    object further right or down named first), so that naming the upper-left object first,
    as template 2's captions always do, scores 0.5 and not 1.
    """
    images, scenes = generate(
        "test", n, seed=seed, image_size=image_size, min_objects=min_objects,
        max_objects=max_objects,
    )  # fmt: skip
    rng = np.random.default_rng([seed, 99])
    pos, rand, hard, kinds = [], [], [], []
    for i, s in enumerate(scenes):
        t = int(rng.integers(NUM_TEMPLATES)) if template is None else template
        pos.append(describe(s, template=t))
        rand.append(random_negative(scenes, i, t, rng))
        h, kind = hard_negative(s, t, rng)
        hard.append(h)
        kinds.append(kind)
    order = np.random.default_rng([seed, 98]).random(n) < 0.5  # True: the converse wording
    swaps = [(i, r, bool(c)) for i, (s, c) in enumerate(zip(scenes, order))
             if (r := relation_negative(s, converse=bool(c))) is not None]  # fmt: skip
    return {
        "images": to_tensor(images),
        "scenes": scenes,
        "positive": pos,
        "random": rand,
        "hard": hard,
        "hard_kind": kinds,
        "relation_index": [i for i, _, _ in swaps],
        "relation_positive": [r[0] for _, r, _ in swaps],
        "relation": [r[1] for _, r, _ in swaps],
        "relation_converse": [c for _, _, c in swaps],
    }


def fusion_forward(model: ViLBERT | ViLT, tokens: dict, images, scenes):
    """One forward pass of a fusion encoder: ViLBERT reads the scenes' regions, ViLT does not."""
    if isinstance(model, ViLT):
        return model(tokens, images)
    r = regions_from_scenes(scenes, model.config.max_regions)
    return model(tokens, images, r["boxes"], region_mask=r["region_mask"])


@torch.no_grad()
def itm_scores(
    model: ViLBERT | ViLT, images, scenes, captions, batch_size: int = 250
) -> torch.Tensor:
    """(n,) alignment log-odds of each (image, caption) pair, under ViLBERT or ViLT."""
    model.eval()
    out = []
    for s in range(0, len(captions), batch_size):
        sl = slice(s, s + batch_size)
        o = fusion_forward(model, TOKENIZER(captions[sl], max_length=40), images[sl], scenes[sl])
        out.append(o.itm_score().cpu())
    return torch.cat(out)


@torch.no_grad()
def mlm_accuracy(model: ViLBERT | ViLT, images, scenes, captions, seed: int = 0) -> float:
    """Mask one colour or shape word of each (true) caption; the share predicted exactly."""
    rng = np.random.default_rng([seed, 5])
    tokens = TOKENIZER(captions, max_length=40)
    ids = tokens["input_ids"].clone()
    attr = torch.tensor(TOKENIZER.convert_tokens_to_ids(list(COLORS) + list(SHAPES)))
    targets = []
    for i in range(len(captions)):
        slots = torch.isin(ids[i], attr).nonzero().flatten().tolist()
        j = slots[int(rng.integers(len(slots)))]
        targets.append((i, j, int(ids[i, j])))
        ids[i, j] = TOKENIZER.mask_token_id
    correct = 0
    for s in range(0, len(captions), 250):
        sl = slice(s, s + 250)
        masked = {"input_ids": ids[sl], "attention_mask": tokens["attention_mask"][sl]}
        o = fusion_forward(model, masked, images[sl], scenes[sl])
        for i, j, y in targets[sl]:
            correct += int(o.mlm_logits[i - s, j].argmax().item() == y)
    return correct / len(captions)


@torch.no_grad()
def clip_image_embeddings(clip_model, images, batch_size: int = 500) -> torch.Tensor:
    """(n, E) normalised CLIP embeddings of images (n, 3, H, W), in batches: a dual encoder
    embeds a gallery once and reuses it for every caption."""
    return torch.cat([
        clip_model.encode_image(images[s : s + batch_size], normalize=True)
        for s in range(0, len(images), batch_size)
    ])  # fmt: skip


@torch.no_grad()
def clip_itm_scores(clip_model, images, captions, batch_size: int = 500) -> torch.Tensor:
    """(n,) cosine similarity of each (image, caption) pair under a CLIP model.

    images: (n, 3, H, W), or their embeddings (n, E) from `clip_image_embeddings`.
    """
    if isinstance(images, torch.Tensor) and images.ndim == 2:
        image_emb = images
    else:
        image_emb = clip_image_embeddings(clip_model, images, batch_size)  # (n, E)
    if len(image_emb) != len(captions):
        raise ValueError(f"images and captions must have the same length; got {len(image_emb)} "
                         f"and {len(captions)}")  # fmt: skip
    out = []
    for s in range(0, len(captions), batch_size):
        t_e = clip_model.encode_text(
            TOKENIZER(captions[s : s + batch_size], max_length=40), normalize=True
        )  # (b, E)
        out.append((image_emb[s : s + batch_size].to(t_e.device) * t_e).sum(-1).cpu())
    return torch.cat(out)


def alignment_figures(model: ViLBERT | ViLT, data: dict, seed: int) -> dict:
    """Alignment and masked-word figures of a fusion encoder on `itm_pairs` data:
    itm_acc_random / itm_acc_hard (the true caption outscores the negative), itm_binary_acc_hard
    (each of the 2n true and hard pairs on the right side of log-odds 0), mlm_acc and
    itm_acc_relation (the relation caption outscores its relation swap)."""
    images, scenes = data["images"], data["scenes"]
    pos = itm_scores(model, images, scenes, data["positive"])  # (n,) log-odds
    rand = itm_scores(model, images, scenes, data["random"])
    hard = itm_scores(model, images, scenes, data["hard"])
    idx = data["relation_index"] or [0]  # no scene with two objects (tiny n): a tie, 0.0
    rel_images, rel_scenes = images[idx], [scenes[i] for i in idx]
    rel_pos = itm_scores(model, rel_images, rel_scenes, data["relation_positive"] or [""])
    rel_neg = itm_scores(model, rel_images, rel_scenes, data["relation"] or [""])
    return {
        "itm_acc_random": round((pos > rand).float().mean().item(), 4),
        "itm_acc_hard": round((pos > hard).float().mean().item(), 4),
        "itm_binary_acc_hard": round(
            ((pos > 0).float().mean() + (hard < 0).float().mean()).item() / 2, 4
        ),
        "mlm_acc": round(mlm_accuracy(model, images, scenes, data["positive"], seed), 4),
        "itm_acc_relation": round((rel_pos > rel_neg).float().mean().item(), 4),
    }


def crowded_pairs(seed: int, n: int, image_size: int = 32) -> dict:
    """`itm_pairs` of max(1, n // 2) scenes of 5 objects, more than any model saw in training
    (template 3 keeps the caption within 40 tokens): one vector per image has to hold more,
    one token per region does not."""
    return itm_pairs(seed, max(1, n // 2), image_size, min_objects=5, max_objects=5, template=3)


# The relation phase's curriculum: the relation words it trains on, added one stage at a time
# (with one word the label depends on one comparison of positions; with all four at once the
# loss sat at ln 2 in every run tried, see vilbert.json `notes`).
RELATION_CURRICULUM = (
    ("to the left of",),
    ("to the left of", "to the right of"),
    ("to the left of", "to the right of", "above", "below"),
)


def relation_batch(
    step: int, batch_size: int = 64, seed: int = 0, image_size: int = 32, words=RELATIONS
) -> dict:
    """`train` scenes of 2 or 3 objects, each with a relation pair (`relation_negative`, named
    in reading order or the converse, half each): the relation caption, or its swap with
    probability 1/2. Only pairs whose relation is one of `words`. Nothing is masked: a masked
    'left' or 'circle' would leave the label a guess. Keys as `training_batch`'s, less the
    masking targets."""
    rng = np.random.default_rng([seed, step, 12])
    scenes, captions, aligned, draw = [], [], [], 0
    while len(scenes) < batch_size:
        stream = 7 * (1_000_000 * (seed + 1) + step) + draw  # apart from training_batch's
        draw += 1
        for s in sample_scenes("train", batch_size, stream, image_size, min_objects=2):
            pair = relation_negative(s, converse=bool(rng.random() < 0.5))
            # the relation is in the first clause ('a X <relation> a Y [and a Z at ...]')
            if pair is None or not any(f" {w} a " in pair[0].split(" and a ")[0] for w in words):
                continue
            negative = bool(rng.random() < 0.5)
            scenes.append(s)
            captions.append(pair[int(negative)])
            aligned.append(int(not negative))
            if len(scenes) == batch_size:
                break
    tokens = TOKENIZER(captions, max_length=40)
    regions = regions_from_scenes(scenes)
    return {
        "images": to_tensor(render(scenes, image_size)),  # uint8 (B, 3, H, W)
        "input_ids": tokens["input_ids"],
        "attention_mask": tokens["attention_mask"],
        "boxes": regions["boxes"],
        "region_mask": regions["region_mask"],
        "itm_labels": torch.tensor(aligned),  # (B,) 1 = the caption is true
    }


def relation_itm_loss(model: ViLBERT, batch: dict) -> torch.Tensor:
    """Cross-entropy of the alignment head on a `relation_batch`."""
    ids, images, boxes = batch["input_ids"], batch["images"], batch["boxes"]
    out = model(ids, images, boxes, attention_mask=batch["attention_mask"],
                region_mask=batch["region_mask"])  # fmt: skip
    return F.cross_entropy(out.itm_logits, batch["itm_labels"].to(model.device))
