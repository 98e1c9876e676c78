"""Shared fixtures and settings of the test suite.

The course tooling in tools/ (the book, the benchmarks) is not part of the installed package;
its tests import it from there.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import pytest  # noqa: E402  (after the path set-up above)
import tiny  # noqa: E402
import torch  # noqa: E402

from minimodels import shapeworld as sw  # noqa: E402
from minimodels.data.images import to_tensor  # noqa: E402
from minimodels.llava import LlavaForConditionalGeneration  # noqa: E402
from minimodels.text import Tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tok():
    """The shared word-level tokenizer."""
    return Tokenizer()


@pytest.fixture(scope="session")
def test_data():
    """Four `test` scenes: uint8 images (4, 3, 32, 32) and the scene dicts."""
    images, scenes = sw.generate("test", 4, seed=1)
    return to_tensor(images), scenes


@pytest.fixture(scope="module")
def tiny_llava():
    """A tiny LLaVA (the `tiny.LLAVA` configuration), seeded, in eval mode."""
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(tiny.LLAVA).eval()
