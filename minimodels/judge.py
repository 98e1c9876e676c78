"""The judge: a small CNN that reads a ShapeWorld image back into symbols.

For each of the 9 grid cells it predicts the colour, shape and size of the object there (or
"none"); the number of occupied cells is its count. The course uses it as its
measuring instrument: a generated image (DALL-E, diffusion) is "faithful" to the prompt
"a red circle" when the judge reads a red circle in it.

    judge = minimodels.pretrained("judge")
    judge.read(images)   # [{"count": 2, "objects": [{"position": "top left", "color": ...}]}]

Trained by ``python -m minimodels.pretrain judge`` on rendered scenes from the train and
heldout splits (all 30 colour-shape pairs, so it can score held-out compositions), with light
noise and blur so that it tolerates the imperfect images of generative models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from minimodels import shapeworld as sw
from minimodels.checks import MAX_IMAGE_SIZE, check_device, check_int

NONE = "none"
COLOR_CLASSES = (NONE,) + tuple(sw.COLORS)  # index 0 = no object in the cell
SHAPE_CLASSES = (NONE,) + sw.SHAPES
SIZE_CLASSES = (NONE,) + sw.SIZES


@dataclass
class JudgeConfig:
    image_size: int = 32  # inputs of another size are resized to this
    crop: int = 16  # each grid cell is read from a crop this wide around its centre
    channels: tuple[int, int, int] = (16, 32, 48)
    hidden: int = 96
    dropout: float = 0.1

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) != 3 or min(self.channels) < 1:
            raise ValueError(f"channels must be 3 positive ints; got {self.channels}")
        if self.crop % 4 or not self.image_size / 3 <= self.crop <= self.image_size:
            raise ValueError(
                "crop must be a multiple of 4 between image_size/3 and image_size; "
                f"got crop={self.crop}, image_size={self.image_size}"
            )


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


def prepare_images(images, image_size: int = 32) -> torch.Tensor:
    """Images → float (B, 3, image_size, image_size) in [0, 1].

    Accepts uint8 (B, 3, H, W) / (B, H, W, 3) tensors or arrays (0..255), or float tensors in
    [0, 1] (B, 3, H, W). Generative models that work in [-1, 1] must convert first:
    ``(x + 1) / 2``.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a tensor or numpy array; got {type(images).__name__}")
    check_device(images, "images", None)
    check_int(image_size, "image_size", 8, MAX_IMAGE_SIZE)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"images must be (B, 3, H, W); got shape {tuple(images.shape)}")
    if images.shape[1] != 3 and images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)
    if images.shape[1] != 3:
        raise ValueError(f"images must have 3 channels; got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images is an empty batch")
    if images.dtype == torch.uint8:
        x = images.float() / 255.0
    elif images.is_floating_point():
        x = images.float()
        if not torch.isfinite(x).all():
            raise ValueError("images contain NaN or inf")
        lo, hi = x.min().item(), x.max().item()
        if lo < -0.02 or hi > 1.02:
            raise ValueError(
                f"float images must lie in [0, 1]; got values in [{lo:.3f}, {hi:.3f}] "
                "(for [-1, 1] images pass (x + 1) / 2)"
            )
        x = x.clamp(0, 1)
    else:
        raise TypeError(f"images must be uint8 or float; got {images.dtype}")
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
        )
    return x


class Judge(nn.Module):
    """One small CNN applied to each of the 9 grid cells (with a margin), with three heads.

    Sharing the CNN across cells makes the reading translation-equivariant: what it learns
    about a red circle at the top left serves at the bottom right too.
    """

    config_class = JudgeConfig

    def __init__(self, config: JudgeConfig | None = None):
        super().__init__()
        self.config = config = config or JudgeConfig()
        c1, c2, c3 = config.channels
        self.cell_cnn = nn.Sequential(
            _conv(3, c1), _conv(c1, c2), nn.MaxPool2d(2),
            _conv(c2, c3), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c3 * (config.crop // 4) ** 2, config.hidden), nn.ReLU(),
            nn.Dropout(config.dropout),
        )  # fmt: skip
        # Top-left corner of each cell's crop in the padded image, row by row.
        size, crop = config.image_size, config.crop
        self.pad = crop // 2
        starts = [round((k + 0.5) * size / 3 - crop / 2) + self.pad for k in range(3)]
        self.corners = [(r, c) for r in starts for c in starts]
        self.color_head = nn.Linear(config.hidden, len(COLOR_CLASSES))
        self.shape_head = nn.Linear(config.hidden, len(SHAPE_CLASSES))
        self.size_head = nn.Linear(config.hidden, len(SIZE_CLASSES))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def cells(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) → the 9 cell crops (B, 9, 3, crop, crop), row by row (POSITIONS)."""
        p, c = self.pad, self.config.crop
        x = F.pad(x, (p, p, p, p), mode="replicate")
        return torch.stack([x[:, :, r : r + c, q : q + c] for r, q in self.corners], dim=1)

    def forward(self, images) -> dict[str, torch.Tensor]:
        """Logits per cell: color (B, 9, 7), shape (B, 9, 6), size (B, 9, 3); index 0 = none.

        Also "count" (B,): the number of cells whose most likely colour is not "none".
        """
        x = prepare_images(images, self.config.image_size).to(self.device)
        b = x.shape[0]
        h = self.cell_cnn(self.cells(x).flatten(0, 1))  # (B·9, hidden)
        color = self.color_head(h).view(b, 9, -1)
        return {
            "color": color,
            "shape": self.shape_head(h).view(b, 9, -1),
            "size": self.size_head(h).view(b, 9, -1),
            "count": (color.argmax(-1) != 0).sum(-1),
        }

    @torch.no_grad()
    def read(self, images, batch_size: int = 512) -> list[dict]:
        """Read images into scenes: {"count": k, "objects": [{position, color, shape, size}]}.

        A cell holds an object when the colour head says so; its shape and size are the most
        likely non-"none" classes.
        """
        check_int(batch_size, "batch_size", 1, 1_000_000)
        was_training = self.training
        self.eval()
        x = prepare_images(images, self.config.image_size)
        out = []
        for s in range(0, len(x), batch_size):
            logits = self(x[s : s + batch_size])
            color = logits["color"].argmax(-1).cpu()
            shape = logits["shape"][..., 1:].argmax(-1).cpu() + 1
            size = logits["size"][..., 1:].argmax(-1).cpu() + 1
            count = logits["count"].cpu()
            for i in range(len(color)):
                objects = [
                    {
                        "position": sw.POSITIONS[c],
                        "color": COLOR_CLASSES[int(color[i, c])],
                        "shape": SHAPE_CLASSES[int(shape[i, c])],
                        "size": SIZE_CLASSES[int(size[i, c])],
                    }
                    for c in range(len(sw.POSITIONS))
                    if color[i, c] != 0
                ]
                out.append({"count": int(count[i]), "objects": objects})
        self.train(was_training)
        return out


def targets(scenes: list[dict]) -> dict[str, torch.Tensor]:
    """Class indices for the judge's heads from symbolic scenes."""
    cells = len(sw.POSITIONS)
    color = torch.zeros(len(scenes), cells, dtype=torch.long)
    shape = torch.zeros_like(color)
    size = torch.zeros_like(color)
    count = torch.zeros(len(scenes), dtype=torch.long)
    for i, sc in enumerate(scenes):
        count[i] = len(sc["objects"])
        for o in sc["objects"]:
            c = sw.POSITIONS.index(o["position"])
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
    scenes = sw.sample_scenes(split, n_main, seed=stream, image_size=image_size)
    scenes += sw.sample_scenes(
        "train", n_crowd, seed=stream, image_size=image_size, min_objects=4, max_objects=9
    )
    images = sw.render(scenes, image_size)
    empty = np.broadcast_to(np.array(sw.BACKGROUND, np.uint8), (n_empty, image_size, image_size, 3))
    images = np.concatenate([images, empty])
    tgt = targets(scenes + [{"objects": []}] * n_empty)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
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
    from minimodels.train import fit, get_device, seed_everything

    seed_everything(seed)
    model = Judge(JudgeConfig()).to(get_device(device))
    history = fit(
        model, judge_loss, lambda step: training_batch(step, batch_size, seed),
        steps=steps, lr=lr, warmup=50, cosine=True, progress=progress, desc="judge",
    )  # fmt: skip
    model.eval()
    return model, history


@torch.no_grad()
def evaluate_judge(model: Judge, seed: int = 0, n: int = 1000, split: str = "test") -> dict:
    """Accuracies on freshly generated images: colour and shape per object, count per image."""
    images, scenes = sw.generate(split, n, seed=seed)
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


def load_pretrained(device=None) -> Judge:
    """The shipped judge (minimodels/weights/judge.safetensors)."""
    from minimodels.checkpoint import load_model, weights_path

    return load_model(Judge, weights_path("judge"), device=device)
