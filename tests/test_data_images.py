"""minimodels.data.images: the one pair of image-range helpers."""

import numpy as np
import pytest
import torch

from minimodels import shapeworld as sw
from minimodels.data.images import to_tensor, to_unit


def test_to_tensor_layouts_and_ranges():
    images, _ = sw.generate("test", 3, seed=0, image_size=16)  # uint8 (3, 16, 16, 3)
    chw = to_tensor(images)
    assert chw.dtype == torch.uint8 and chw.shape == (3, 3, 16, 16)
    assert torch.equal(chw, torch.from_numpy(images).permute(0, 3, 1, 2))
    assert torch.equal(to_tensor(chw), chw)  # channels first already: unchanged
    unit, signed = to_tensor(images, (0, 1)), to_tensor(images, (-1, 1))
    assert unit.dtype == signed.dtype == torch.float32
    assert torch.equal(unit, chw.float() / 255) and torch.equal(signed, chw.float() / 127.5 - 1)
    assert -1 <= signed.min() and signed.max() <= 1


def test_to_unit_inverts_the_signed_range_and_clamps():
    images, _ = sw.generate("test", 2, seed=1, image_size=16)
    signed = to_tensor(images, (-1, 1))
    torch.testing.assert_close(to_unit(signed), to_tensor(images, (0, 1)), atol=1e-6, rtol=0)
    out = to_unit(torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]))
    assert out.tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]


def test_to_tensor_refuses_what_it_cannot_read():
    with pytest.raises(TypeError, match="uint8"):
        to_tensor(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(TypeError, match="uint8"):
        to_tensor(torch.zeros(8, 8, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="value_range"):
        to_tensor(np.zeros((1, 8, 8, 3), np.uint8), (0, 255))
