"""minimodels.data.hf: ShapeWorld as a `datasets.Dataset`, and any image-caption dataset."""

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from minimodels import shapeworld as sw


@pytest.fixture(scope="module")
def small_ds():
    return sw.load("train", 12, seed=4, image_size=32)


def test_load_matches_generate(small_ds):
    ds = small_ds
    images, scenes = sw.generate("train", 12, seed=4, image_size=32)
    assert isinstance(ds, datasets.Dataset)
    assert set(ds.column_names) == {"image", "caption", "objects", "questions", "answers"}
    assert len(ds) == 12
    for i, row in enumerate(ds):
        assert np.array_equal(np.asarray(row["image"]), images[i])
        assert row["image"].mode == "RGB"
        assert row["caption"] == scenes[i]["caption"]
        assert row["questions"] == scenes[i]["questions"]
        assert row["answers"] == scenes[i]["answers"]
        keys = ("shape", "color", "size", "position", "bbox")
        assert row["objects"] == [{k: o[k] for k in keys} for o in scenes[i]["objects"]]
    heldout = sw.load("heldout", 3, seed=4, image_size=16, max_objects=1)
    assert all(len(objs) == 1 for objs in heldout["objects"])
    assert np.asarray(heldout[0]["image"]).shape == (16, 16, 3)


def test_as_tensors(small_ds):
    images, _ = sw.generate("train", 12, seed=4, image_size=32)
    x = sw.as_tensors(small_ds)
    assert x.dtype == torch.uint8 and x.shape == (12, 3, 32, 32)
    assert torch.equal(x, torch.from_numpy(images).permute(0, 3, 1, 2))
    assert torch.equal(sw.as_tensors(images), x)
    with pytest.raises(ValueError, match="column"):
        sw.as_tensors(small_ds, image_column="picture")
    with pytest.raises(ValueError, match="uint8"):
        sw.as_tensors(images.astype(np.float32))


def test_parquet_round_trip(small_ds, tmp_path):
    path = tmp_path / "x.parquet"
    small_ds.to_parquet(path)
    back = datasets.load_dataset(
        "parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert back["caption"] == small_ds["caption"]
    assert back["answers"] == small_ds["answers"]
    expected = sw.as_tensors(small_ds)
    assert torch.equal(sw.as_tensors(back), expected)
    loaded = sw.load_image_text(path, image_size=32)
    assert loaded.column_names == ["image", "caption"]
    assert loaded["caption"] == small_ds["caption"]
    assert torch.equal(sw.as_tensors(loaded), expected)
    # A folder of parquet files and a save_to_disk folder work as well.
    assert sw.load_image_text(tmp_path, image_size=32, n=5)["caption"] == small_ds["caption"][:5]
    small_ds.save_to_disk(tmp_path / "saved")
    saved = sw.load_image_text(tmp_path / "saved", image_size=32)
    assert torch.equal(sw.as_tensors(saved), expected)


def png_bytes(im):
    import io

    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_load_image_text_bring_your_own(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    green = (40, 190, 60)
    # Non-square RGB: red | green | blue stripes; the centre crop is all green.
    wide = np.zeros((24, 48, 3), np.uint8)
    wide[:, :12] = (255, 0, 0)
    wide[:, 12:36] = green
    wide[:, 36:] = (0, 0, 255)
    # Tall RGBA: the centre square is opaque cyan.
    tall = np.zeros((50, 20, 4), np.uint8)
    tall[15:35] = (40, 215, 225, 255)
    grey = np.full((33, 33), 128, np.uint8)
    images = [Image.fromarray(wide), Image.fromarray(tall, "RGBA"), Image.fromarray(grey, "L")]
    texts = ["a green picture", "A Cyan One!", "grey"]
    table = pa.table(
        {
            "picture": [{"bytes": png_bytes(im), "path": None} for im in images],
            "text": texts,
            "extra": [1, 2, 3],
        }
    )
    path = tmp_path / "mine.parquet"
    pq.write_table(table, path)
    ds = sw.load_image_text(path, image_column="picture", caption_column="text", image_size=16)
    assert ds.column_names == ["image", "caption"]
    assert ds["caption"] == texts
    arrays = [np.asarray(im) for im in ds["image"]]
    assert all(im.mode == "RGB" for im in ds["image"])
    assert all(a.shape == (16, 16, 3) for a in arrays)
    assert (arrays[0] == green).all()
    assert (arrays[1] == (40, 215, 225)).all()
    assert (arrays[2] == 128).all()
    x = sw.as_tensors(ds)
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.uint8
    with pytest.raises(ValueError, match="'caption'"):
        sw.load_image_text(path, image_column="picture")
    with pytest.raises(ValueError, match="'image'"):
        sw.load_image_text(path, caption_column="text")


def test_load_image_text_dataset_and_dict(small_ds):
    other = sw.load("test", 3, seed=0, image_size=16)
    dd = datasets.DatasetDict({"train": small_ds, "test": other})
    out = sw.load_image_text(dd, split="test", image_size=16)
    assert out["caption"] == other["caption"]
    assert torch.equal(sw.as_tensors(out), sw.as_tensors(other))
    up = sw.load_image_text(small_ds, image_size=64, n=2)
    assert len(up) == 2 and sw.as_tensors(up).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="split"):
        sw.load_image_text(dd, split="validation")
    with pytest.raises(ValueError, match="n must"):
        sw.load_image_text(small_ds, n=0)


def test_load_image_text_rejects_bad_source(tmp_path, small_ds):
    with pytest.raises(TypeError, match="source"):
        sw.load_image_text(123)
    with pytest.raises(TypeError, match="source"):
        sw.load_image_text([small_ds])
    with pytest.raises(ValueError, match="source"):
        sw.load_image_text(tmp_path / "missing.parquet")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="source"):
        sw.load_image_text(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="image_size"):
        sw.load_image_text(small_ds, image_size=15)
