"""Recipe of the judge: the batches it learns from, its training and its evaluation.

python -m minimodels.pretrain judge      # about 4 min on a 2-core CPU
python -m minimodels.evaluate judge      # colour, shape and count accuracy on fresh scenes
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from minimodels.checkpoint import load_model, weights_path
from minimodels.data.images import to_tensor
from minimodels.data.shapeworld import generate, render, sample_scenes
from minimodels.data.world import BACKGROUND, POSITIONS
from minimodels.judge import COLOR_CLASSES, SHAPE_CLASSES, SIZE_CLASSES, Judge, JudgeConfig
from minimodels.train import fit, get_device, seed_everything


def load_judge(device=None) -> Judge:
    """The shipped judge (minimodels/weights/judge.safetensors)."""
    return load_model(Judge, weights_path("judge"), device=device)


def pretrain_judge(steps: int, seed: int, device=None):
    """The shipped recipe: batches of 128, lr 2e-3 with warm-up and cosine decay."""
    return train_judge(steps=steps, seed=seed, device=device)


def evaluate_judge(seed: int = 0, n: int = 1000, device=None, model: Judge | None = None):
    """Accuracy of colour and shape per object and of the count per image, on n fresh `test`
    scenes (the shipped judge unless `model` is given)."""
    return judge_accuracy(model or load_judge(device), seed=seed, n=n)


def targets(scenes: list[dict]) -> dict[str, torch.Tensor]:
    """Class indices for the judge's heads from symbolic scenes."""
    cells = len(POSITIONS)
    color = torch.zeros(len(scenes), cells, dtype=torch.long)
    shape = torch.zeros_like(color)
    size = torch.zeros_like(color)
    count = torch.zeros(len(scenes), dtype=torch.long)
    for i, sc in enumerate(scenes):
        count[i] = len(sc["objects"])
        for o in sc["objects"]:
            c = POSITIONS.index(o["position"])
            color[i, c] = COLOR_CLASSES.index(o["color"])
            shape[i, c] = SHAPE_CLASSES.index(o["shape"])
            size[i, c] = SIZE_CLASSES.index(o["size"])
    return {"color": color, "shape": shape, "size": size, "count": count}


def judge_loss(model: Judge, batch) -> torch.Tensor:
    """Sum of the cross-entropies of the four heads."""
    images, tgt = batch
    logits = model(images)
    dev = logits["color"].device
    # Shape and size are learnt only where an object is (their "none" comes from colour).
    loss = F.cross_entropy(logits["color"].flatten(0, 1), tgt["color"].to(dev).flatten())
    for k in ("shape", "size"):
        loss = loss + F.cross_entropy(logits[k].flatten(0, 1), tgt[k].to(dev).flatten())
    return loss


def training_batch(step: int, batch_size: int = 128, seed: int = 0, image_size: int = 32):
    """A fresh batch for step `step`: mostly 1-3 objects, some crowded scenes (up to 9) and
    some empty images, from the train and heldout splits, with random noise and blur."""
    rng = np.random.default_rng([seed, step])
    n_crowd, n_empty = batch_size // 8, batch_size // 32
    n_main = batch_size - n_crowd - n_empty
    stream = 1_000_000 * (seed + 1) + step  # scene seeds distinct from evaluation seeds
    split = "heldout" if step % 4 == 3 else "train"
    scenes = sample_scenes(split, n_main, seed=stream, image_size=image_size)
    scenes += sample_scenes(
        "train", n_crowd, seed=stream, image_size=image_size, min_objects=4, max_objects=9
    )
    images = render(scenes, image_size)
    empty = np.broadcast_to(np.array(BACKGROUND, np.uint8), (n_empty, image_size, image_size, 3))
    images = np.concatenate([images, empty])
    tgt = targets(scenes + [{"objects": []}] * n_empty)
    x = to_tensor(images, (0, 1))  # (B, 3, S, S) in [0, 1]
    # Robustness: Gaussian noise of a random strength, and a blur on a quarter of the images.
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    sigma = torch.rand(len(x), 1, 1, 1, generator=gen) * 0.06
    x = x + sigma * torch.randn(x.shape, generator=gen)
    blur = torch.rand(len(x), generator=gen) < 0.25
    if blur.any():
        k = torch.tensor([0.25, 0.5, 0.25])
        kernel = (k[:, None] * k[None, :]).expand(3, 1, 3, 3)
        x[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    return x.clamp(0, 1), tgt


def train_judge(
    steps: int = 300,
    batch_size: int = 128,
    seed: int = 0,
    lr: float = 2e-3,
    progress: bool = True,
    device=None,
) -> tuple[Judge, list[float]]:
    """Train a judge from scratch (what `python -m minimodels.pretrain judge` runs)."""
    seed_everything(seed)
    model = Judge(JudgeConfig()).to(get_device(device))
    history = fit(
        model, judge_loss, lambda step: training_batch(step, batch_size, seed),
        steps=steps, lr=lr, warmup=50, cosine=True, progress=progress, desc="judge",
    )  # fmt: skip
    model.eval()
    return model, history


@torch.no_grad()
def judge_accuracy(model: Judge, seed: int = 0, n: int = 1000, split: str = "test") -> dict:
    """Accuracies on freshly generated images: colour and shape per object, count per image."""
    images, scenes = generate(split, n, seed=seed)
    model.eval()
    tgt = targets(scenes)
    logits = model(images)
    occupied = tgt["color"] > 0
    color = logits["color"].argmax(-1).cpu()
    shape = logits["shape"].argmax(-1).cpu()
    count = logits["count"].cpu()
    return {
        "accuracy_color": round((color == tgt["color"])[occupied].float().mean().item(), 4),
        "accuracy_shape": round((shape == tgt["shape"])[occupied].float().mean().item(), 4),
        "accuracy_count": round((count == tgt["count"]).float().mean().item(), 4),
    }
