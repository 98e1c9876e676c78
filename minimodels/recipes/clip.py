"""Recipe of CLIP: the ShapeWorld batches, training, evaluation and the shipped weights.

The model and the lecture's maths (`clip_loss`, `zero_shot_classifier`, `recall_at_k`) are in
``minimodels/clip.py``; this module is what it took to make and measure the shipped CLIP::

    from minimodels.recipes.clip import train_clip, evaluate_clip
    model, losses = train_clip(steps=120, batch_size=64)
    evaluate_clip(seed=0, n=1000)        # the shipped model's figures
"""

from __future__ import annotations

import numpy as np
import torch

from minimodels.checkpoint import load_model, weights_path
from minimodels.clip import (
    CLIP,
    TEMPLATES,
    CLIPConfig,
    recall_at_k,
    zero_shot_classifier,
    zero_shot_predict,
)
from minimodels.data.captions import CLASSNAMES, describe, mixed_captions
from minimodels.data.images import to_tensor
from minimodels.data.shapeworld import generate, render, sample_scenes
from minimodels.distributed import clip_loss_gathered
from minimodels.text import Tokenizer
from minimodels.train import fit, get_device, seed_everything

TOKENIZER = Tokenizer()

# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def training_batch(
    step: int,
    batch_size: int = 128,
    seed: int = 0,
    image_size: int = 32,
    short_captions: float = 0.0,
):
    """Fresh `train` scenes for step `step`: uint8 images (B, 3, H, W) and token dict.

    Captions use all four templates (drawn at random per scene), so the text encoder meets
    every wording the zero-shot prompts will use. With probability `short_captions` a scene's
    caption is replaced by a bare list of its objects ('a red circle and a blue cross'): the
    kind of prompt zero-shot classification uses, which the four templates never produce.
    """
    stream = 1_000_000 * (seed + 1) + step  # scene seeds apart from evaluation seeds
    scenes = sample_scenes("train", batch_size, seed=stream, image_size=image_size)
    images = to_tensor(render(scenes, image_size))  # uint8 (B, 3, H, W)
    rng = np.random.default_rng([seed, step, 7])
    captions = mixed_captions(scenes, rng, short_captions)
    return images, TOKENIZER(captions, padding=True)


def clip_training_loss(model: CLIP, batch) -> torch.Tensor:
    """clip_loss of a batch; first clamps t so that exp(t) stays in [1, 100]. Under torchrun
    the batch is this process's shard and the loss gathers the others' embeddings."""
    images, tokens = batch
    model.clamp_logit_scale_()
    image_emb = model.encode_image(images, normalize=True)  # I_e: (B, E)
    text_emb = model.encode_text(tokens, normalize=True)  # T_e: (B, E)
    return clip_loss_gathered(image_emb, text_emb, model.scale())  # clip_loss if 1 process


def train_clip(
    steps: int = 1000,
    batch_size: int = 128,
    seed: int = 0,
    lr: float = 2e-3,
    config: CLIPConfig | None = None,
    warmup: int = 50,
    short_captions: float = 0.5,
    progress: bool = True,
    device=None,
    time_budget: float | None = None,
) -> tuple[CLIP, list[float]]:
    """Train CLIP from scratch on ShapeWorld `train`. Returns the model (in eval mode) and the
    loss of every step.

    short_captions: the share of scenes captioned with a bare object list ('a red circle and
    a blue cross', see `training_batch`), so that zero-shot prompts are in-distribution.
    time_budget: stop after this many seconds even when fewer than `steps` steps have run (a
    cap for live runs in a notebook; the learning-rate schedule is still laid out over `steps`).
    """
    seed_everything(seed)
    model = CLIP(config or CLIPConfig()).to(get_device(device))
    history = fit(
        model, clip_training_loss,
        lambda step: training_batch(step, batch_size, seed, short_captions=short_captions),
        steps=steps, time_budget=time_budget, lr=lr, warmup=min(warmup, steps // 2), cosine=True,
        progress=progress, desc="clip",
    )  # fmt: skip
    model.eval()
    return model, history


def pretrain_clip(steps: int, seed: int, device=None) -> tuple[CLIP, list[float]]:
    """The shipped CLIP: 2×2 patches, batch 128, half of the captions bare object lists."""
    return train_clip(
        steps=steps, batch_size=128, seed=seed, config=CLIPConfig(patch_size=2),
        short_captions=0.5, device=device,
    )  # fmt: skip


def load_clip(device=None) -> CLIP:
    """The shipped CLIP (minimodels/weights/clip.safetensors)."""
    return load_model(CLIP, weights_path("clip"), device=device)


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def recall_gallery(seed: int = 0, n: int = 1000, image_size: int = 32, max_objects: int = 3):
    """The retrieval gallery: n `test` scenes (1 to max_objects objects, as in training), each
    with its canonical caption (template 0: size, colour, shape and position of every object,
    e.g. 'a small red circle on the left and a large blue cross at the top').

    Why canonical: a scene's caption template is drawn at random and cannot be seen in the
    image, so "same caption" over random templates would cap recall far below 1 even for a
    perfect model. Template 0 names everything visible and nothing else, so the caption is a
    function of the image: a perfect model reaches recall 1, and two images share a caption
    exactly when they look alike (a hit on such a twin counts).
    Returns uint8 images (n, 3, H, W) and the n captions.
    """
    images, scenes = generate("test", n, seed=seed, image_size=image_size, max_objects=max_objects)
    captions = [describe(s, template=0) for s in scenes]
    return to_tensor(images), captions


@torch.no_grad()
def evaluate_clip(
    seed: int = 0, n: int = 1000, device=None, model: CLIP | None = None, recall_max_objects=3
) -> dict:
    """CLIP's figures on fresh ShapeWorld images, deterministic in the seed.

    zero_shot_acc / zero_shot_acc_heldout: zero-shot classification of one-object images of
    the `test` split / of colour-shape pairs never seen in training, over the 30 classes with
    the prompt ensemble `TEMPLATES`; recall_at_1_t2i / _i2t: retrieval over `recall_gallery`.
    model: the CLIP to measure (default: the shipped one, loaded on `device`).
    """
    model = load_clip(device) if model is None else model
    model.eval()
    size = model.config.image_size
    classifier = zero_shot_classifier(model, TOKENIZER, CLASSNAMES, TEMPLATES)  # (E, 30)
    out = {}
    for key, split in (("zero_shot_acc", "test"), ("zero_shot_acc_heldout", "heldout")):
        images, scenes = generate(split, n, seed=seed, image_size=size, max_objects=1)
        labels = torch.tensor(
            [CLASSNAMES.index(f"{s['objects'][0]['color']} {s['objects'][0]['shape']}")
             for s in scenes]
        )  # fmt: skip
        pred = zero_shot_predict(model, to_tensor(images), classifier)  # (n,)
        out[key] = round((pred.cpu() == labels).float().mean().item(), 4)
    images, captions = recall_gallery(seed, n, size, recall_max_objects)
    image_emb = torch.cat([model.encode_image(images[s : s + 500]) for s in range(0, n, 500)])
    text_emb = torch.cat(
        [model.encode_text(TOKENIZER(captions[s : s + 500])) for s in range(0, n, 500)]
    )  # (n, E) each
    r = recall_at_k(image_emb, text_emb, captions, k=1)
    out["recall_at_1_t2i"] = round(r["t2i"], 4)
    out["recall_at_1_i2t"] = round(r["i2t"], 4)
    out["n_params"] = sum(p.numel() for p in model.parameters())
    return out
