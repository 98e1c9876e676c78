"""Recipe of ViLT: training on ViLBERT's batches, evaluation on ViLBERT's pairs, shipped weights.

The model is in ``minimodels/vilt.py``. ViLT is the course's single-stream comparison for
ViLBERT, so it is trained on the same pre-training batches (`recipes.vilbert.training_batch`:
alignment with random and hard negatives, masked words) and measured on the same alignment
pairs (`recipes.vilbert.itm_pairs`)::

    from minimodels.recipes.vilt import evaluate_vilt
    evaluate_vilt(seed=0, n=1000)        # the shipped ViLT's figures
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minimodels.checkpoint import load_model, weights_path
from minimodels.recipes.vilbert import (
    alignment_figures,
    crowded_pairs,
    itm_pairs,
    itm_scores,
    mlm_accuracy,
    training_batch,
)
from minimodels.train import fit, get_device, seed_everything
from minimodels.vilbert import IGNORE_INDEX
from minimodels.vilt import ViLT, ViLTConfig


def vilt_training_loss(model: ViLT, batch: dict) -> torch.Tensor:
    """Alignment (random and hard negatives) + masked language modelling on aligned pairs."""
    dev = model.device
    out = model(batch["input_ids"], batch["images"], attention_mask=batch["attention_mask"])
    itm = F.cross_entropy(out.itm_logits, batch["itm_labels"].to(dev))
    mlm = F.cross_entropy(
        out.mlm_logits.flatten(0, 1), batch["mlm_labels"].to(dev).flatten(),
        ignore_index=IGNORE_INDEX,
    )  # fmt: skip
    return itm + mlm


def train_vilt(
    steps: int = 1500,
    batch_size: int = 64,
    seed: int = 0,
    lr: float = 2e-3,
    config: ViLTConfig | None = None,
    progress: bool = True,
    device=None,
    time_budget: float | None = None,
) -> tuple[ViLT, list[float]]:
    """Train ViLT from scratch on the ViLBERT pre-training batches (alignment + MLM).
    Returns the model (eval mode) and the loss of every step."""
    seed_everything(seed)
    model = ViLT(config or ViLTConfig()).to(get_device(device))
    history = fit(
        model, vilt_training_loss, lambda step: training_batch(step, batch_size, seed),
        steps=steps, lr=lr, warmup=min(50, steps // 2), cosine=True, progress=progress,
        desc="vilt", time_budget=time_budget,
    )  # fmt: skip
    model.eval()
    return model, history


def pretrain_vilt(steps: int, seed: int, device=None) -> tuple[ViLT, list[float]]:
    """The shipped ViLT: the default ViLTConfig (4×4 patches, 4 layers), batch 64."""
    return train_vilt(steps=steps, seed=seed, device=device)


def load_vilt(device=None) -> ViLT:
    """The shipped ViLT (minimodels/weights/vilt.safetensors)."""
    return load_model(ViLT, weights_path("vilt"), device=device)


@torch.no_grad()
def evaluate_vilt(seed: int = 0, n: int = 1000, device=None, model: ViLT | None = None) -> dict:
    """ViLT's figures on the pairs `evaluate_vilbert` uses (same seed, same n: comparable).

    itm_acc_random / itm_acc_hard / itm_binary_acc_hard / mlm_acc: see
    `recipes.vilbert.alignment_figures` (0.5 is chance for the first three; mlm_acc masks one
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
