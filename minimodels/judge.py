"""The judge: a small CNN that reads a ShapeWorld image back into symbols.

For each of the 9 grid cells it predicts the colour, shape and size of the object there (or
"none"); the number of occupied cells is its count. The course uses it as its
measuring instrument: a generated image (DALL-E, diffusion) is "faithful" to the prompt
"a red circle" when the judge reads a red circle in it.

    judge = minimodels.pretrained("judge")
    judge.read(images)   # [{"count": 2, "objects": [{"position": "top left", "color": ...}]}]

Trained by ``python -m minimodels.pretrain judge`` (minimodels/recipes/judge.py) on rendered
scenes of the train and heldout splits (all 30 colour-shape pairs, so it can score held-out
compositions), with light noise and blur so that it tolerates the imperfect images of
generative models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from minimodels.checks import MAX_IMAGE_SIZE, check_images, check_int
from minimodels.data.world import COLORS, POSITIONS, SHAPES, SIZES

NONE = "none"
COLOR_CLASSES = (NONE,) + tuple(COLORS)  # index 0 = no object in the cell
SHAPE_CLASSES = (NONE,) + SHAPES
SIZE_CLASSES = (NONE,) + SIZES


@dataclass
class JudgeConfig:
    image_size: int = 32  # inputs of another size are resized to this
    crop: int = 16  # each grid cell is read from a crop this wide around its centre
    channels: tuple[int, int, int] = (16, 32, 48)
    hidden: int = 96
    dropout: float = 0.1

    def __post_init__(self):
        self.channels = tuple(self.channels)  # JSON gives a list


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


def prepare_images(images, image_size: int = 32) -> torch.Tensor:
    """Images -> float (B, 3, image_size, image_size) in [0, 1], what the judge reads.

    uint8 (0..255) or float in [0, 1], channels first or last, numpy or torch; a single image
    (3 dimensions) is a batch of one; other sizes are resized. Generative models that work in
    [-1, 1] must convert first: ``(x + 1) / 2``.
    """
    check_int(image_size, "image_size", 8, MAX_IMAGE_SIZE)
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if isinstance(images, torch.Tensor) and images.ndim == 3:
        images = images[None]
    if isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2) if images.shape[-1] == 3 else images  # HWC -> CHW
    x = check_images(images, "images", atol=0.02).clamp(0, 1)
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
                        "position": POSITIONS[c],
                        "color": COLOR_CLASSES[int(color[i, c])],
                        "shape": SHAPE_CLASSES[int(shape[i, c])],
                        "size": SIZE_CLASSES[int(size[i, c])],
                    }
                    for c in range(len(POSITIONS))
                    if color[i, c] != 0
                ]
                out.append({"count": int(count[i]), "objects": objects})
        self.train(was_training)
        return out
