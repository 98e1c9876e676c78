"""Recipe of ViLBERT: pre-training batches and losses, training, evaluation, shipped weights.

The model (regions, co-attention, the heads) is in ``minimodels/vilbert.py``. This module holds
what made and measures the shipped ViLBERT::

    from minimodels.recipes.vilbert import train_vilbert
    from minimodels.recipes.alignment import itm_pairs, itm_scores
    model, losses = train_vilbert(steps=150, vqa_steps=0)
    data = itm_pairs(seed=1, n=200)           # true captions, random and hard negatives
    itm_scores(model, data["images"], data["scenes"], data["hard"])

The alignment pairs and scores (`itm_pairs`, `itm_scores`, ...) live in `recipes/alignment.py`,
shared with ViLT and CLIP, so that every model is measured on the same pairs.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from minimodels.checkpoint import load_model, weights_path
from minimodels.data.captions import (
    NUM_TEMPLATES,
    describe,
    hard_negative,
    random_negative,
    relation_negative,
)
from minimodels.data.images import to_tensor
from minimodels.data.shapeworld import generate, render, sample_scenes
from minimodels.data.world import ANSWERS, COLORS, SHAPES
from minimodels.recipes.alignment import (
    RELATION_CURRICULUM,
    TOKENIZER,
    alignment_figures,
    clip_image_embeddings,
    clip_itm_scores,
    crowded_pairs,
    itm_pairs,
    itm_scores,
    relation_batch,
    relation_itm_loss,
)
from minimodels.recipes.clip import load_clip
from minimodels.train import fit, get_device, seed_everything
from minimodels.vilbert import (
    IGNORE_INDEX,
    REGION_CLASSES,
    ViLBERT,
    ViLBERTConfig,
    regions_from_scenes,
)
from minimodels.vilt import ViLT

NUM_COLORS, NUM_SHAPES = len(COLORS), len(SHAPES)

# ----------------------------------------------------------------------------------------------
# Pre-training targets: the soft detector distribution, masking
# ----------------------------------------------------------------------------------------------


def soft_region_targets(
    labels: torch.Tensor, true_mass: float = 0.8, similar_mass: float = 0.15
) -> torch.Tensor:
    """The detector's class distribution for each region, derived from the ground truth.

    A real detector (ViLBERT uses Faster R-CNN) outputs a softmax over classes, not a one-hot:
    it is unsure, and its mistakes are between look-alike classes. We have exact labels, so we
    make that distribution by a structured label smoothing over the 30 colour-shape classes:

        p(true class)                                   = true_mass            (0.8)
        p(each of the 9 classes sharing colour or shape) = similar_mass / 9     (0.15 in all)
        p(each of the 20 other classes)                  = rest / 20            (0.05 in all)

    Why: KL(p_detector ‖ p_model) against a one-hot would be plain cross-entropy and push the
    model to full confidence even when a masked region can't be pinned down from the text
    (a caption without positions, two objects of one colour). The soft target keeps it
    calibrated and, like a real detector, says "a red square is more like a red circle than a
    blue cross". labels (...,) long, IGNORE_INDEX allowed -> (..., 30) rows summing to 1
    (rows of IGNORE_INDEX are all zero).
    """
    rest = 1.0 - true_mass - similar_mass
    if not (0 < true_mass <= 1 and 0 <= similar_mass and rest >= -1e-9):
        raise ValueError(f"need 0 < true_mass, 0 <= similar_mass, true_mass + similar_mass <= 1; "
                         f"got {true_mass}, {similar_mass}")  # fmt: skip
    valid = labels != IGNORE_INDEX
    k = torch.arange(len(REGION_CLASSES), device=labels.device)
    y = labels.clamp(min=0)[..., None]  # (..., 1)
    same_color = (k // NUM_SHAPES) == (y // NUM_SHAPES)  # (..., 30)
    same_shape = (k % NUM_SHAPES) == (y % NUM_SHAPES)
    is_true = k == y
    similar = (same_color | same_shape) & ~is_true  # 4 + 5 = 9 look-alike classes
    n_similar = NUM_COLORS - 1 + NUM_SHAPES - 1
    n_other = len(REGION_CLASSES) - 1 - n_similar
    p = torch.full(is_true.shape, max(rest, 0.0) / n_other, device=labels.device)
    p = torch.where(similar, torch.tensor(similar_mass / n_similar), p)
    p = torch.where(is_true, torch.tensor(float(true_mass)), p)
    return p * valid[..., None]


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask,
    generator: torch.Generator,
    p: float | torch.Tensor = 0.15,
    at_least_one: bool = False,
):
    """BERT masking: each real word (not [CLS]/[SEP]/[PAD]) becomes [MASK] with probability p,
    one p for all or a (B, L) tensor of them, one per token (with at_least_one, one word is
    forced in a text that drew none).
    Returns (masked ids, labels with IGNORE_INDEX elsewhere), both (B, L)."""
    special = torch.tensor(sorted(TOKENIZER.special_ids))
    word = attention_mask.bool() & ~torch.isin(input_ids, special)  # (B, L) maskable
    chosen = (torch.rand(input_ids.shape, generator=generator) < p) & word
    # at least one masked word per text: force a random word where none was drawn
    none = ~chosen.any(dim=1)
    if at_least_one and none.any():
        scores = torch.rand(input_ids.shape, generator=generator).masked_fill(~word, -1.0)
        forced = F.one_hot(scores.argmax(dim=1), input_ids.shape[1]).bool() & word
        chosen = chosen | (forced & none[:, None])
    labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)
    return input_ids.masked_fill(chosen, TOKENIZER.mask_token_id), labels


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def training_batch(
    step: int,
    batch_size: int = 64,
    seed: int = 0,
    image_size: int = 32,
    p_negative: float = 0.5,
    p_hard: float = 0.5,
    mask_prob: float = 0.15,
    vqa: bool = False,
    p_relation: float = 0.0,
) -> dict:
    """Fresh `train` scenes for one step of multimodal pre-training (and VQA with vqa=True).

    Each scene gets a caption (random template); with probability p_negative the caption is
    replaced by a negative, hard (an attribute swap, `hard_negative`) with probability p_hard,
    else random. With probability p_relation a scene that has a relation gets a relation pair
    instead (`relation_negative`, in reading order or the converse, half each): its relation
    caption, or with probability p_negative its swap, the same words in another order.
    Words and regions are masked (mask_prob) in *every* pair, but only aligned pairs keep
    their labels (as in ViLBERT): masking only aligned pairs would let the alignment head
    answer "is there a [MASK]?" instead of looking at the image.
    With vqa=True the batch also holds one question per scene and its answer index.
    """
    stream = 1_000_000 * (seed + 1) + step  # scene seeds apart from evaluation seeds
    scenes = sample_scenes("train", batch_size, seed=stream, image_size=image_size)
    rng = np.random.default_rng([seed, step, 11])
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    captions, aligned = [], []
    for i, s in enumerate(scenes):
        template = int(rng.integers(NUM_TEMPLATES))
        rel = None  # a relation pair, named in reading order or the converse, half each
        if p_relation and rng.random() < p_relation:
            rel = relation_negative(s, converse=bool(rng.random() < 0.5))
        negative = rng.random() < p_negative
        if rel is not None:  # the relation caption or its swap: the same words either way
            captions.append(rel[int(negative)])
            aligned.append(int(not negative))
        elif not negative:
            captions.append(describe(s, template=template))
            aligned.append(1)
        elif rng.random() < p_hard:
            captions.append(hard_negative(s, template, rng)[0])
            aligned.append(0)
        else:
            captions.append(random_negative(scenes, i, template, rng))
            aligned.append(0)
    aligned = torch.tensor(aligned)  # (B,) 1 = the caption describes the image
    tokens = TOKENIZER(captions, max_length=40)
    ids, mlm_labels = mask_tokens(tokens["input_ids"], tokens["attention_mask"], gen, mask_prob)
    mlm_labels = mlm_labels.masked_fill(~aligned[:, None].bool(), IGNORE_INDEX)
    regions = regions_from_scenes(scenes)
    objects = regions["region_mask"].clone()
    objects[:, 0] = False  # [IMG] is never masked
    masked = (torch.rand(objects.shape, generator=gen) < mask_prob) & objects  # (B, R)
    batch = {
        "images": to_tensor(render(scenes, image_size)),  # uint8 (B, 3, H, W)
        "input_ids": ids,
        "attention_mask": tokens["attention_mask"],
        "mlm_labels": mlm_labels,
        "boxes": regions["boxes"],
        "region_mask": regions["region_mask"],
        "masked_regions": masked,
        "region_labels": regions["region_labels"].masked_fill(
            ~masked | ~aligned[:, None].bool(), IGNORE_INDEX
        ),  # targets only for masked regions of aligned pairs
        "itm_labels": aligned,
    }
    if vqa:
        qs, answers = [], []
        for s in scenes:
            k = int(rng.integers(len(s["questions"])))
            qs.append(s["questions"][k])
            answers.append(ANSWERS.index(s["answers"][k]))
        q = TOKENIZER(qs, max_length=40)
        batch["question_ids"], batch["question_mask"] = q["input_ids"], q["attention_mask"]
        batch["answers"] = torch.tensor(answers)
    return batch


def pretraining_losses(model: ViLBERT, batch: dict) -> dict[str, torch.Tensor]:
    """The three pre-training losses (and the VQA loss if the batch has questions)."""
    dev = model.device
    out = model(
        batch["input_ids"], batch["images"], batch["boxes"],
        attention_mask=batch["attention_mask"], region_mask=batch["region_mask"],
        masked_regions=batch["masked_regions"],
    )  # fmt: skip
    losses = {}
    # masked language modelling: cross-entropy on the masked words only
    losses["mlm"] = F.cross_entropy(
        out.mlm_logits.flatten(0, 1),
        batch["mlm_labels"].to(dev).flatten(),
        ignore_index=IGNORE_INDEX,
    )
    # masked region modelling: KL(p_detector ‖ p_model) on the masked regions
    labels = batch["region_labels"].to(dev)
    sel = labels != IGNORE_INDEX
    if sel.any():
        target = soft_region_targets(labels[sel])  # (M, K)
        log_p = out.mrm_logits[sel].log_softmax(dim=-1)  # (M, K)
        losses["mrm"] = F.kl_div(log_p, target, reduction="batchmean")  # Σ p log(p / q)
    else:
        losses["mrm"] = out.mrm_logits.sum() * 0.0
    # alignment prediction: is this caption about this image? (from h_IMG ⊙ h_CLS)
    losses["itm"] = F.cross_entropy(out.itm_logits, batch["itm_labels"].to(dev))
    if "question_ids" in batch:
        q = model(
            batch["question_ids"], batch["images"], batch["boxes"],
            attention_mask=batch["question_mask"], region_mask=batch["region_mask"],
        )  # fmt: skip
        losses["vqa"] = F.cross_entropy(q.vqa_logits, batch["answers"].to(dev))
    return losses


def vilbert_training_loss(model: ViLBERT, batch: dict) -> torch.Tensor:
    """The sum of `pretraining_losses`: what `train_vilbert` minimises."""
    return sum(pretraining_losses(model, batch).values())


def relation_phase(
    model: ViLBERT, steps: int, start: int, batch_size: int = 64, seed: int = 0, lr: float = 5e-4,
    progress: bool = True,
) -> list[float]:  # fmt: skip
    """Fine-tune a pre-trained ViLBERT to read relations: each step adds to a `training_batch`
    (every pre-training loss and VQA, from step `start` of its stream) a `relation_batch`,
    whose words follow RELATION_CURRICULUM in three equal stages. A constant lr after warm-up
    (a cosine decay during the last stage cost 0.12 of itm_acc_relation). Needs a grounded
    model: from scratch the relation loss stays at ln 2. Returns the loss of every step."""
    stage = max(1, steps // len(RELATION_CURRICULUM))

    def batches(step):
        words = RELATION_CURRICULUM[min(step // stage, len(RELATION_CURRICULUM) - 1)]
        return training_batch(start + step, batch_size, seed, vqa=True), relation_batch(
            step, batch_size, seed, words=words
        )

    def loss(model, batch):
        return vilbert_training_loss(model, batch[0]) + relation_itm_loss(model, batch[1])

    return fit(model, loss, batches, steps=steps, lr=lr, warmup=min(50, steps // 2),
               progress=progress, desc="vilbert relation fine-tuning")  # fmt: skip


def train_vilbert(
    steps: int = 2000,
    vqa_steps: int = 1000,
    batch_size: int = 64,
    seed: int = 0,
    lr: float = 2e-3,
    config: ViLBERTConfig | None = None,
    progress: bool = True,
    device=None,
    time_budget: float | None = None,
    p_relation: float = 0.0,
    relation_steps: int = 0,
) -> tuple[ViLBERT, list[float]]:
    """Pre-train on ShapeWorld (MLM + MRM + alignment), then fine-tune the VQA head and the
    whole model on questions while the pre-training losses keep running, then (relation_steps
    > 0) teach it spatial relations (`relation_phase`, at lr / 4).

    steps: pre-training steps; vqa_steps: fine-tuning steps after them (0 = none);
    p_relation: the share of scenes that get a relation pair in those two phases (see
    `training_batch`; the shipped weights use 0: such runs missed the bars, see vilbert.json
    `notes`). Returns the model (eval mode) and the loss of every step.
    """
    seed_everything(seed)
    model = ViLBERT(config or ViLBERTConfig()).to(get_device(device))
    history = fit(
        model, vilbert_training_loss,
        lambda step: training_batch(step, batch_size, seed, p_relation=p_relation),
        steps=steps, lr=lr, warmup=min(50, steps // 2), cosine=True, progress=progress,
        desc="vilbert pre-training", time_budget=time_budget,
    )  # fmt: skip
    if vqa_steps:
        history += fit(
            model, vilbert_training_loss,
            lambda step: training_batch(
                steps + step, batch_size, seed, vqa=True, p_relation=p_relation
            ),
            steps=vqa_steps, lr=lr / 2, warmup=min(50, vqa_steps // 2), cosine=True,
            progress=progress, desc="vilbert VQA fine-tuning",
        )  # fmt: skip
    if relation_steps:
        history += relation_phase(model, relation_steps, steps + vqa_steps, batch_size, seed,
                                  lr / 4, progress)  # fmt: skip
    model.eval()
    return model, history


def pretrain_vilbert(steps: int, seed: int, device=None) -> tuple[ViLBERT, list[float]]:
    """The shipped ViLBERT: `steps` of pre-training, steps // 2 of VQA fine-tuning, then
    steps // 5 of the relation phase."""
    return train_vilbert(steps=steps, vqa_steps=steps // 2, seed=seed, device=device,
                         relation_steps=steps // 5)  # fmt: skip


def load_vilbert(device=None) -> ViLBERT:
    """The shipped ViLBERT (minimodels/weights/vilbert.safetensors)."""
    return load_model(ViLBERT, weights_path("vilbert"), device=device)


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def vqa_accuracy(model: ViLBERT, seed: int = 0, n: int = 1000, image_size: int = 32) -> float:
    """Accuracy over every question of n fresh `test` scenes."""
    images, scenes = generate("test", n, seed=seed + 7, image_size=image_size)
    images = to_tensor(images)  # uint8 (n, 3, H, W)
    idx = [(i, k) for i, s in enumerate(scenes) for k in range(len(s["questions"]))]
    correct = 0
    for s in range(0, len(idx), 500):
        chunk = idx[s : s + 500]
        sc = [scenes[i] for i, _ in chunk]
        r = regions_from_scenes(sc, model.config.max_regions)
        q = TOKENIZER([scenes[i]["questions"][k] for i, k in chunk], max_length=40)
        o = model(q, images[[i for i, _ in chunk]], r["boxes"], region_mask=r["region_mask"])
        pred = o.vqa_logits.argmax(dim=-1).cpu()
        gold = torch.tensor([ANSWERS.index(scenes[i]["answers"][k]) for i, k in chunk])
        correct += int((pred == gold).sum())
    return correct / len(idx)


@torch.no_grad()
def retrieval_timing(model: ViLBERT, clip_model, gallery: int = 1000, seed: int = 0) -> dict:
    """Seconds to rank a gallery of images for one text query, both ways.

    dual encoder (CLIP): embed the gallery once (offline), then per query one text encoding
    and one matrix product; fusion (ViLBERT): one forward pass per (query, image) pair.
    """
    images, scenes = generate("test", gallery, seed=seed, image_size=model.config.image_size)
    images = to_tensor(images)  # uint8 (N, 3, H, W)
    query = scenes[0]["caption"]
    model.eval()
    clip_model.eval()
    t0 = time.perf_counter()
    gallery_emb = clip_image_embeddings(clip_model, images)  # (N, E), once for all queries
    t1 = time.perf_counter()
    q = clip_model.encode_text(TOKENIZER([query]), normalize=True)  # (1, E)
    top_dual = (gallery_emb @ q.T).squeeze(1).argmax().item()  # one matmul ranks the gallery
    t2 = time.perf_counter()
    scores = itm_scores(model, images, scenes, [query] * gallery)  # a forward per pair
    t3 = time.perf_counter()
    return {
        "gallery": gallery,
        "dual_gallery_embed_s": round(t1 - t0, 4),
        "dual_query_s": round(t2 - t1, 5),
        "fusion_query_s": round(t3 - t2, 4),
        "dual_top1_matches": scenes[top_dual]["caption"] == query,
        "fusion_top1_matches": scenes[int(scores.argmax())]["caption"] == query,
    }


@torch.no_grad()
def evaluate_vilbert(
    seed: int = 0, n: int = 1000, device=None, model=None, clip_model=None, vilt_model=None
) -> dict:
    """ViLBERT's figures on fresh `test` scenes, deterministic in the seed (timings aside).

    itm_acc_random / itm_acc_hard / itm_binary_acc_hard / mlm_acc: see `alignment_figures`;
    vqa_acc: every question of n scenes; itm_acc_hard_5_objects: on `crowded_pairs`. The same
    pairs scored by CLIP's cosine (clip_itm_acc_hard, clip_itm_acc_relation,
    clip_itm_acc_hard_5_objects) and by ViLT
    (itm_acc_hard_single_stream); retrieval: `retrieval_timing` over 1000 images.
    model: the ViLBERT to measure; by default the shipped one, with the shipped CLIP and ViLT
    (loaded on `device`). With a model given, only the clip_model / vilt_model given are used.
    """
    if model is None:
        model, clip_model = load_vilbert(device), load_clip(device)
        vilt_model = load_model(ViLT, weights_path("vilt"), device=device)
    model.eval()
    size = model.config.image_size
    data = itm_pairs(seed, n, size)
    out = alignment_figures(model, data, seed)
    out["vqa_acc"] = round(vqa_accuracy(model, seed, n, size), 4)
    crowd = crowded_pairs(seed, n, size)
    p5 = itm_scores(model, crowd["images"], crowd["scenes"], crowd["positive"])
    h5 = itm_scores(model, crowd["images"], crowd["scenes"], crowd["hard"])
    out["itm_acc_hard_5_objects"] = round((p5 > h5).float().mean().item(), 4)
    if clip_model is not None:  # the images are embedded once for both captions
        emb = clip_image_embeddings(clip_model, data["images"])  # (n, E)
        cpos, chard = (clip_itm_scores(clip_model, emb, data[k]) for k in ("positive", "hard"))
        out["clip_itm_acc_hard"] = round((cpos > chard).float().mean().item(), 4)
        rel = emb[data["relation_index"] or [0]]  # the same relation pairs as itm_acc_relation
        rpos, rneg = (
            clip_itm_scores(clip_model, rel, data[k] or [""])
            for k in ("relation_positive", "relation")
        )
        out["clip_itm_acc_relation"] = round((rpos > rneg).float().mean().item(), 4)
        emb = clip_image_embeddings(clip_model, crowd["images"])
        p5, h5 = (clip_itm_scores(clip_model, emb, crowd[k]) for k in ("positive", "hard"))
        out["clip_itm_acc_hard_5_objects"] = round((p5 > h5).float().mean().item(), 4)
    if vilt_model is not None:
        vpos, vhard = (itm_scores(vilt_model, data["images"], data["scenes"], data[k])
                       for k in ("positive", "hard"))  # fmt: skip
        out["itm_acc_hard_single_stream"] = round((vpos > vhard).float().mean().item(), 4)
    out["n_params"] = sum(p.numel() for p in model.parameters())
    if clip_model is not None:
        out["retrieval"] = retrieval_timing(model, clip_model, gallery=1000, seed=seed)
    return out
