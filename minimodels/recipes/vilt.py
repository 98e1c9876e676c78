"""Recipe of ViLT: training on ViLBERT's scenes and captions, evaluation on ViLBERT's pairs.

The model is in ``minimodels/vilt.py``. ViLT is the course's single-stream comparison for
ViLBERT, so it is trained on the same pre-training scenes and captions
(`recipes.vilbert.training_batch`: alignment with random and hard negatives, masked words) and
measured on the same alignment pairs (`recipes.alignment.itm_pairs`)::

    from minimodels.recipes.vilt import evaluate_vilt
    evaluate_vilt(seed=0, n=1000)        # the shipped ViLT's figures

Each step runs two forward passes over the same scenes, as ViLT's own code does: alignment on
unmasked captions (true, random negative or hard negative), and masked words on true captions
in which the colour and shape words, the words only the image can tell, are masked more often
(`mask_attribute_words`). With ViLBERT's single masked pass ViLT sat at chance for thousands of
steps: the few masked colour words were its only first-order reason to read the patches.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from minimodels.checkpoint import load_model, weights_path
from minimodels.data.world import COLORS, SHAPES
from minimodels.recipes.alignment import (
    TOKENIZER,
    alignment_figures,
    crowded_pairs,
    itm_pairs,
    itm_scores,
    mlm_accuracy,
)
from minimodels.recipes.vilbert import mask_tokens, training_batch
from minimodels.train import fit, get_device, seed_everything
from minimodels.vilbert import IGNORE_INDEX
from minimodels.vilt import ViLT, ViLTConfig

COLOUR_IDS = torch.tensor(TOKENIZER.convert_tokens_to_ids(list(COLORS)))
SHAPE_IDS = torch.tensor(TOKENIZER.convert_tokens_to_ids(list(SHAPES)))


def mask_attribute_words(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    generator: torch.Generator,
    p_attribute: float = 1.0,
    p: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking aimed at the words only the image can tell. In each caption either its
    colour words or its shape words (one of the two, at random) are masked, each with
    probability p_attribute; the other real words with p ([CLS], [SEP], [PAD] never).

    "a [MASK] circle and a [MASK] square" can only be filled by finding which object is the
    circle and reading its colour: binding, with no other colour word left to rule one out.
    It is the counterpart of ViLT's whole-word masking, which stops a word from being read
    off its own sub-word pieces. Returns (masked ids, labels with IGNORE_INDEX elsewhere),
    both (B, L)."""
    colours = torch.isin(input_ids, COLOUR_IDS)
    shapes = torch.isin(input_ids, SHAPE_IDS)
    mask_colours = torch.rand(input_ids.shape[0], 1, generator=generator) < 0.5  # (B, 1)
    target = torch.where(mask_colours, colours, shapes)  # (B, L): this caption's kind
    prob = torch.where(target, p_attribute, torch.where(colours | shapes, 0.0, p))  # (B, L)
    return mask_tokens(input_ids, attention_mask, generator, p=prob)


def vilt_training_batch(
    step: int, batch_size: int = 64, seed: int = 0, p_attribute: float = 1.0
) -> dict:
    """Two batches over the same fresh `train` scenes (those of `training_batch(step, ...)`):
    "itm": a caption per scene, aligned or a random or hard negative, none masked;
    "mlm": a true caption per scene, masked by `mask_attribute_words`."""
    itm = training_batch(step, batch_size, seed, mask_prob=0.0)
    mlm = training_batch(step, batch_size, seed, p_negative=0.0, mask_prob=0.0)
    rng = np.random.default_rng([seed, step, 13])  # apart from training_batch's [seed, step, 11]
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    ids, labels = mask_attribute_words(mlm["input_ids"], mlm["attention_mask"], gen, p_attribute)
    return {"itm": itm, "mlm": {**mlm, "input_ids": ids, "mlm_labels": labels}}


def vilt_training_loss(model: ViLT, batch: dict) -> torch.Tensor:
    """Alignment on the "itm" pass + masked language modelling on the "mlm" pass."""
    dev = model.device
    b = batch["itm"]
    out = model(b["input_ids"], b["images"], attention_mask=b["attention_mask"])
    itm = F.cross_entropy(out.itm_logits, b["itm_labels"].to(dev))
    b = batch["mlm"]
    out = model(b["input_ids"], b["images"], attention_mask=b["attention_mask"])
    mlm = F.cross_entropy(
        out.mlm_logits.flatten(0, 1), b["mlm_labels"].to(dev).flatten(),
        ignore_index=IGNORE_INDEX,
    )  # fmt: skip
    return itm + mlm


def train_vilt(
    steps: int = 1500,
    batch_size: int = 64,
    seed: int = 0,
    lr: float = 1e-3,
    config: ViLTConfig | None = None,
    progress: bool = True,
    device=None,
    time_budget: float | None = None,
    p_attribute: float = 1.0,
) -> tuple[ViLT, list[float]]:
    """Train ViLT from scratch on ViLBERT's pre-training scenes (alignment + masked words,
    `vilt_training_batch`). Returns the model (eval mode) and the loss of every step."""
    seed_everything(seed)
    model = ViLT(config or ViLTConfig()).to(get_device(device))
    history = fit(
        model, vilt_training_loss,
        lambda step: vilt_training_batch(step, batch_size, seed, p_attribute),
        steps=steps, lr=lr, warmup=min(50, steps // 2), cosine=True, progress=progress,
        desc="vilt", time_budget=time_budget,
    )  # fmt: skip
    model.eval()
    return model, history


def pretrain_vilt(steps: int, seed: int, device=None) -> tuple[ViLT, list[float]]:
    """The shipped ViLT: the default ViLTConfig (4×4 patches, 4 layers), batch 64 in each of
    the two passes, lr 1e-3 with cosine decay; its 4800 steps take about the CPU time of the
    shipped ViLBERT's training."""
    return train_vilt(steps=steps, seed=seed, lr=1e-3, device=device)


def load_vilt(device=None) -> ViLT:
    """The shipped ViLT (minimodels/weights/vilt.safetensors)."""
    return load_model(ViLT, weights_path("vilt"), device=device)


@torch.no_grad()
def evaluate_vilt(seed: int = 0, n: int = 1000, device=None, model: ViLT | None = None) -> dict:
    """ViLT's figures on the pairs `evaluate_vilbert` uses (same seed, same n: comparable).

    itm_acc_random / itm_acc_hard / itm_binary_acc_hard / mlm_acc: see
    `recipes.alignment.alignment_figures` (0.5 is chance for the first three; mlm_acc masks one
    colour or shape word, which the image tells and the other words mostly do not);
    itm_acc_hard_<kind>: the hard negatives by kind (one colour changed, one shape changed,
    two colours exchanged);
    mlm_acc_wrong_image: mlm_acc with each caption shown another scene's image (about mlm_acc
    when the model does not read the image); itm_acc_hard_5_objects: on crowded scenes
    (`crowded_pairs`). model: default the shipped ViLT.
    """
    model = load_vilt(device) if model is None else model
    model.eval()
    size = model.config.image_size
    data = itm_pairs(seed, n, size)
    out = alignment_figures(model, data, seed)
    pos = itm_scores(model, data["images"], data["scenes"], data["positive"])  # (n,) log-odds
    hard = itm_scores(model, data["images"], data["scenes"], data["hard"])
    kinds = data["hard_kind"]
    for kind in ("colour", "shape", "exchange"):
        sel = torch.tensor([k == kind for k in kinds])
        if sel.any():  # a small n may draw no negative of a kind
            out[f"itm_acc_hard_{kind}"] = round((pos[sel] > hard[sel]).float().mean().item(), 4)
    other = torch.arange(n).roll(-1)  # scene i's caption with scene i+1's image
    wrong = [data["scenes"][i] for i in other.tolist()]
    out["mlm_acc_wrong_image"] = round(
        mlm_accuracy(model, data["images"][other], wrong, data["positive"], seed), 4
    )
    crowd = crowded_pairs(seed, n, size)
    p5, h5 = (itm_scores(model, crowd["images"], crowd["scenes"], crowd[k])
              for k in ("positive", "hard"))  # fmt: skip
    out["itm_acc_hard_5_objects"] = round((p5 > h5).float().mean().item(), 4)
    out["n_params"] = sum(p.numel() for p in model.parameters())
    return out
