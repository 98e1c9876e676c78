"""ShapeWorld as a Hugging Face `datasets.Dataset`, and any image-caption dataset as ours.

Generated locally (no download). `minimodels/__init__.py`, which runs before this module, switches
the Hugging Face libraries offline before `datasets` is imported.
"""

from __future__ import annotations

import os

import datasets
import numpy as np
import torch
from PIL import Image

from minimodels.checks import check_int
from minimodels.data.shapeworld import generate
from minimodels.data.world import check_image_size


def features():
    """The `datasets.Features` of a ShapeWorld dataset."""
    obj = {
        "shape": datasets.Value("string"),
        "color": datasets.Value("string"),
        "size": datasets.Value("string"),
        "position": datasets.Value("string"),
        "bbox": datasets.Sequence(datasets.Value("int32"), length=4),
    }
    return datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "objects": [obj],
            "questions": datasets.Sequence(datasets.Value("string")),
            "answers": datasets.Sequence(datasets.Value("string")),
        }
    )


def load(split: str = "train", n: int = 1000, seed: int = 0, image_size: int = 32, **kwargs):
    """ShapeWorld as a `datasets.Dataset` with columns image, caption, objects, questions,
    answers. Generated locally (no download), deterministic in `seed`.
    """
    images, scenes = generate(split, n, seed=seed, image_size=image_size, **kwargs)
    keys = ("shape", "color", "size", "position", "bbox")
    data = {
        "image": [Image.fromarray(im) for im in images],
        "caption": [sc["caption"] for sc in scenes],
        "objects": [[{k: o[k] for k in keys} for o in sc["objects"]] for sc in scenes],
        "questions": [sc["questions"] for sc in scenes],
        "answers": [sc["answers"] for sc in scenes],
    }
    return datasets.Dataset.from_dict(data, features=features(), split=split)


def as_tensors(dataset, image_column: str = "image"):
    """Decode a dataset's images once into a uint8 tensor (N, 3, H, W) for fast training.

    Accepts a `datasets.Dataset` (images of one size) or a numpy array (N, H, W, 3).
    """
    if isinstance(dataset, np.ndarray):
        arr = dataset
    else:
        if not hasattr(dataset, "column_names") or image_column not in dataset.column_names:
            raise ValueError(
                f"dataset must be a datasets.Dataset with a column {image_column!r}; got "
                f"{type(dataset).__name__} with columns {getattr(dataset, 'column_names', None)}"
            )
        if len(dataset) == 0:
            raise ValueError("dataset is empty: expected at least one image")
        arrays = [np.asarray(im.convert("RGB")) for im in dataset[image_column]]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"images must all have one size to stack; got sizes {sorted(shapes)}")
        arr = np.stack(arrays)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 of shape (N, H, W, 3); got {arr.dtype} {tuple(arr.shape)}"
        )
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


def load_image_text(
    source,
    image_column: str = "image",
    caption_column: str = "caption",
    image_size: int = 32,
    split: str = "train",
    n: int | None = None,
):
    """Load any image-caption dataset (bring your own data, e.g. on Colab).

    `source` is a `datasets.Dataset`, a `DatasetDict` (then `split` is used), a path to a
    parquet file (or a folder of them), or a folder written by `Dataset.save_to_disk`.
    Returns a `datasets.Dataset` with columns image (RGB, centre-cropped and resized to
    image_size x image_size) and caption, ready for `as_tensors`.
    """
    image_size = check_image_size(image_size)
    if isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise ValueError(f"split must be one of {list(source)}; got {split!r}")
        ds = source[split]
    elif isinstance(source, datasets.Dataset):
        ds = source
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ValueError(f"source path does not exist: {path!r}")
        if os.path.isdir(path) and os.path.exists(os.path.join(path, "dataset_info.json")):
            ds = datasets.load_from_disk(path)
        elif path.endswith(".parquet") or os.path.isdir(path):
            files = path if os.path.isfile(path) else os.path.join(path, "*.parquet")
            ds = datasets.load_dataset("parquet", data_files=files, split="train")
        else:
            raise ValueError(f"source must be a .parquet file or a dataset folder; got {path!r}")
    else:
        raise TypeError(
            f"source must be a datasets.Dataset, DatasetDict or a path; got {type(source).__name__}"
        )
    for col in (image_column, caption_column):
        if col not in ds.column_names:
            raise ValueError(f"column {col!r} not found; the dataset has {ds.column_names}")
    if n is not None:
        n = check_int(n, "n", 1)
        ds = ds.select(range(min(n, len(ds))))
    if not isinstance(ds.features[image_column], datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image())

    def prepare(batch):
        out = []
        for im in batch[image_column]:
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            out.append(im.crop((left, top, left + s, top + s)).resize((image_size, image_size)))
        return {"image": out, "caption": [str(c) for c in batch[caption_column]]}

    keep = [c for c in ds.column_names]
    ds = ds.map(
        prepare,
        batched=True,
        remove_columns=keep,
        features=datasets.Features(
            {"image": datasets.Image(), "caption": datasets.Value("string")}
        ),
    )
    return ds
