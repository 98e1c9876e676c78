"""Figures used across the notebooks: image grids, heatmaps, loss curves.

All functions take numpy arrays or torch tensors and return the matplotlib Figure, so a
notebook shows it (last expression) or saves it.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display


def to_numpy_images(images) -> np.ndarray:
    """Images as uint8 (N, H, W, 3) numpy.

    Accepts uint8 or float arrays/tensors in (N, H, W, 3) or (N, 3, H, W) layout (also a
    single image without N). Floats must lie in [0, 1] (or [-1, 1], then they are rescaled).
    """
    if hasattr(images, "detach"):
        if images.device.type == "meta":
            raise ValueError("images is on the meta device (no data); pass a real tensor")
        images = (
            images.detach().cpu().float().numpy()
            if images.is_floating_point()
            else (images.detach().cpu().numpy())
        )
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"images must have 3 or 4 dimensions; got shape {images.shape}")
    if images.shape[-1] not in (1, 3) and images.shape[1] in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
    if images.shape[-1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels; got shape {images.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"images is an empty batch; got shape {images.shape}")
    if images.shape[-1] == 1:
        images = images.repeat(3, axis=-1)
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"images must be uint8 or float; got {images.dtype}")
    if not np.isfinite(images).all():
        raise ValueError("images contain NaN or inf")
    if images.min() < -1e-3:  # [-1, 1] convention of generative models
        images = (images + 1) / 2
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def show_images(
    images,
    captions: Sequence[str] | None = None,
    ncols: int = 8,
    scale: float = 1.6,
    title: str | None = None,
    wrap: int = 22,
):
    """A grid of images with optional captions under each (wrapped to `wrap` characters)."""
    images = to_numpy_images(images)
    n = len(images)
    if n == 0:
        raise ValueError("images is empty")
    if captions is not None and len(captions) != n:
        raise ValueError(f"captions must have one entry per image ({n}); got {len(captions)}")
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive int; got {ncols!r}")
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    extra = 0.45 * scale if captions is not None else 0.0
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(ncols * scale, nrows * (scale + extra)), squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], interpolation="nearest")
            if captions is not None:
                ax.set_title("\n".join(textwrap.wrap(str(captions[i]), wrap)), fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def heatmap(
    matrix,
    xlabels: Sequence[str] | None = None,
    ylabels: Sequence[str] | None = None,
    title: str | None = None,
    ax=None,
    cmap: str = "viridis",
    annotate: bool = False,
    colorbar: bool = True,
):
    """A heatmap of a 2-d matrix (similarities, attention weights), labels optional."""
    if hasattr(matrix, "detach"):
        matrix = matrix.detach().cpu().float().numpy()
    matrix = np.asarray(matrix, dtype=float)
    if matrix.ndim != 2:
        raise ValueError(f"matrix must be 2-d; got shape {matrix.shape}")
    if xlabels is not None and len(xlabels) != matrix.shape[1]:
        raise ValueError(f"xlabels must have {matrix.shape[1]} entries; got {len(xlabels)}")
    if ylabels is not None and len(ylabels) != matrix.shape[0]:
        raise ValueError(f"ylabels must have {matrix.shape[0]} entries; got {len(ylabels)}")
    if ax is None:
        h, w = matrix.shape
        fig, ax = plt.subplots(figsize=(min(12, 1.5 + 0.45 * w), min(10, 1 + 0.4 * h)))
    else:
        fig = ax.figure
    im = ax.imshow(matrix, cmap=cmap, aspect="auto")
    if xlabels is not None:
        ax.set_xticks(
            range(len(xlabels)), labels=list(xlabels), rotation=60, ha="right", fontsize=8
        )
    if ylabels is not None:
        ax.set_yticks(range(len(ylabels)), labels=list(ylabels), fontsize=8)
    if annotate:
        for (r, c), v in np.ndenumerate(matrix):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w")
    if title:
        ax.set_title(title)
    if colorbar:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return fig


def loss_curve(history, title: str = "training loss", smooth: int = 10, ax=None, label=None):
    """Plot a loss history (list of floats): raw values faint, a moving average on top."""
    values = np.asarray(list(history), dtype=float)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError("history must be a non-empty 1-d sequence of numbers")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.2))
    else:
        fig = ax.figure
    line = ax.plot(values, alpha=0.3)[0]
    k = max(1, min(int(smooth), len(values)))
    avg = np.convolve(values, np.ones(k) / k, mode="valid")
    ax.plot(np.arange(k - 1, len(values)), avg, color=line.get_color(), label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if label:
        ax.legend()
    fig.tight_layout()
    return fig


GLUE_PREFIX = "application/papermill.record/"  # where myst-nb looks for glued values


def glue(name: str, value) -> None:
    """Hand a value computed in a notebook to the prose, where {glue:text}`name:.2f` shows it.

    Writes what ``myst_nb.glue(name, value, display=False)`` writes, without importing myst-nb
    (seconds to import, and not installed on Colab). In a notebook the cell shows nothing.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string; got {name!r}")
    metadata = {"scrapbook": {"name": name, "mime_prefix": GLUE_PREFIX}}
    display({GLUE_PREFIX + "text/plain": repr(value)}, raw=True, metadata=metadata)


CLAIMS_ENV = "MINIMODELS_CLAIMS"  # "strict" (make test): a false claim fails the notebook


def check_claims(claims: dict[str, bool]) -> None:
    """Check what the text says of the figures on a page: ``{"sentence": holds, ...}``.

    The prose describes the page run with its own settings. A student who turns a knob (a
    seed, a step count) may get figures for which a sentence no longer holds: that is a finding,
    not an error, so it is printed as a note and the notebook runs on. Under
    ``MINIMODELS_CLAIMS=strict`` (set by `make test`, which runs the page's own settings) a
    false claim raises AssertionError. Returns None, so that a cell ending with it shows nothing.
    """
    if not isinstance(claims, dict) or not claims:
        raise TypeError(f"claims must be a non-empty dict of sentence -> bool; got {claims!r}")
    false = [text for text, holds in claims.items() if not bool(holds)]
    if false and os.environ.get(CLAIMS_ENV, "").strip().lower() == "strict":
        raise AssertionError("the text says what these figures do not show: " + "; ".join(false))
    for text in false:
        print(f"Note: with these settings the text no longer holds here: {text}")
