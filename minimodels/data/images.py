"""The one pair of image-range helpers: ShapeWorld's uint8 pictures <-> the tensors models take.

ShapeWorld renders uint8 (B, H, W, 3) arrays in 0..255. Vision encoders (CLIP, ViLBERT, the
judge) take (B, 3, H, W) in [0, 1], or uint8 as it is; generators (U-Net, DiT, the latent
autoencoder) work in [-1, 1]::

    x = to_tensor(images)                         # uint8 (B, 3, H, W), 0..255
    x = to_tensor(images, value_range=(0, 1))     # float32 in [0, 1]
    x = to_tensor(images, value_range=(-1, 1))    # float32 in [-1, 1]
    shown = to_unit(model_output)                 # [-1, 1] -> [0, 1], clamped, on the CPU
"""

from __future__ import annotations

import numpy as np
import torch

RANGES = (None, (0, 1), (-1, 1))


def to_tensor(images, value_range: tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 images (B, H, W, 3) or (B, 3, H, W), numpy or torch -> a (B, 3, H, W) tensor:
    uint8 as they are (value_range=None), or float32 in [0, 1] or [-1, 1]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if hasattr(images, "shape") else images
        raise TypeError(f"images must be uint8 (B, H, W, 3) or (B, 3, H, W); got {got!r:.80}")
    if value_range not in RANGES:
        raise ValueError(f"value_range must be one of {RANGES}; got {value_range!r}")
    if images.shape[1] != 3 and images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)  # (B, H, W, 3) -> (B, 3, H, W)
    if value_range == (0, 1):
        return images.float() / 255.0
    if value_range == (-1, 1):
        return images.float() / 127.5 - 1.0
    return images


def to_unit(x: torch.Tensor, value_range: tuple[int, int] = (-1, 1)) -> torch.Tensor:
    """Float images in `value_range` (a generator's output) -> float in [0, 1], clamped, on
    the CPU: what the judge, CLIP and the plots take."""
    lo, hi = value_range
    return ((x.float().clamp(lo, hi) - lo) / (hi - lo)).cpu()
