"""Recipe of the GPT: ShapeWorld text, the pre-training loop, its evaluation and the weights.

The model is in ``minimodels/gpt.py``; this module is what it took to make and measure the
shipped GPT, which has read ShapeWorld text only (no image)::

    from minimodels.recipes.gpt import train_gpt, evaluate_gpt
    model, losses = train_gpt(steps=200)
    evaluate_gpt(seed=0, n=500)            # the shipped model's test loss and perplexity

    python -m minimodels.pretrain gpt      # the shipped recipe
    python -m minimodels.evaluate gpt
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from minimodels.checkpoint import load_model, weights_path
from minimodels.data.captions import describe, italian_caption
from minimodels.data.shapeworld import sample_scenes
from minimodels.gpt import GPT, IGNORE_INDEX, TOKENIZER, GPTConfig
from minimodels.train import fit, get_device, seed_everything


def load_gpt(device=None) -> GPT:
    """The shipped GPT (minimodels/weights/gpt.safetensors)."""
    return load_model(GPT, weights_path("gpt"), device=device)


def pretrain_gpt(steps: int, seed: int, device=None) -> tuple[GPT, list[float]]:
    """The shipped recipe: batches of 64 texts, lr 3e-3, warm-up and cosine decay."""
    return train_gpt(steps=steps, seed=seed, device=device)


def evaluate_gpt(seed: int = 0, n: int = 500, device=None, model: GPT | None = None) -> dict:
    """Next-token loss and perplexity on the text of n fresh `test` scenes (the shipped GPT
    unless `model` is given). Perplexity exp(loss): how many words it hesitates between."""
    model = (model or load_gpt(device)).eval()
    scenes = sample_scenes("test", n, seed=seed)
    batch = encode_batch(pretraining_texts(scenes, np.random.default_rng([seed, 5])))
    with torch.no_grad():
        loss = model(**batch).loss.item()
    return {"test_loss": round(loss, 4), "test_perplexity": round(float(np.exp(loss)), 3)}


# ----------------------------------------------------------------------------------------------
# The text it reads: ShapeWorld captions and questions, no image
# ----------------------------------------------------------------------------------------------


def pretraining_texts(scenes: Sequence[dict], rng: np.random.Generator) -> list[str]:
    """One plain-text document per scene: a caption (any English template, 40 %; the Italian
    one, 15 %), or one of its questions followed by the answer (45 %). No image is involved."""
    texts = []
    for s in scenes:
        kind = rng.random()
        if kind < 0.4:
            text = describe(s, rng=rng)
        elif kind < 0.55:
            text = italian_caption(s)
        else:
            i = int(rng.integers(len(s["questions"])))
            text = f"{s['questions'][i]} {s['answers'][i]}"
        texts.append(f"<bos> {text} <eos>")
    return texts


def encode_batch(texts: Sequence[str]) -> dict:
    """Right-padded ids (B, T) with labels = ids, and −100 at the padding."""
    batch = TOKENIZER(list(texts), add_special_tokens=False, padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    return {**batch, "labels": labels}


def training_batch(step: int, batch_size: int = 64, seed: int = 0) -> dict:
    """Fresh ShapeWorld text for step `step` (scene seeds apart from evaluation seeds)."""
    stream = 2_000_000 * (seed + 1) + step
    scenes = sample_scenes("train", batch_size, seed=stream)
    return encode_batch(pretraining_texts(scenes, np.random.default_rng([seed, step, 11])))


def lm_training_loss(model: GPT, batch: dict) -> torch.Tensor:
    """The mean next-token loss of a batch (GPT.forward shifts the labels)."""
    return model(**batch).loss


def train_gpt(
    steps: int = 1200,
    batch_size: int = 64,
    seed: int = 0,
    lr: float = 3e-3,
    config: GPTConfig | None = None,
    progress: bool = True,
    device=None,
) -> tuple[GPT, list[float]]:
    """Pre-train a GPT on ShapeWorld text from scratch; returns (model in eval mode, losses)."""
    seed_everything(seed)
    model = GPT(config or GPTConfig()).to(get_device(device))
    history = fit(
        model, lm_training_loss, lambda step: training_batch(step, batch_size, seed),
        steps=steps, lr=lr, warmup=min(50, steps // 2), cosine=True, weight_decay=0.01,
        progress=progress, desc="gpt",
    )  # fmt: skip
    model.eval()
    return model, history
