"""ShapeWorld: the one toy world every model of the course is trained and measured on.

This module is the name students use; the code lives in `minimodels.data` (one file per
concern: world, shapeworld, captions, questions, hf). A scene holds 1-3 non-overlapping
objects (5 shapes, 6 colours, 2 sizes, a 3x3 grid of positions) on a dark background, and
comes with exact text: captions, the object list with pixel boxes, question-answer pairs.

Quick start::

    from minimodels import shapeworld
    images, scenes = shapeworld.generate("train", 8, seed=0)   # uint8 (8, 32, 32, 3), dicts
    ds = shapeworld.load("train", 1000, seed=0)                 # a datasets.Dataset
    x = shapeworld.as_tensors(ds)                               # uint8 tensor (1000, 3, 32, 32)

Splits: ``train`` and ``test`` never contain the colour-shape pairs in ``HELDOUT_PAIRS``;
every ``heldout`` scene holds at least one of them (compositional generalisation).
"""

from minimodels.data.captions import NUM_TEMPLATES, describe, foil_caption
from minimodels.data.hf import as_tensors, features, load, load_image_text
from minimodels.data.questions import questions_and_answers, referring_expressions
from minimodels.data.shapeworld import (
    generate,
    make_scene,
    render,
    sample_scenes,
    sample_single_objects,
)
from minimodels.data.world import (
    ALL_PAIRS,
    ANSWERS,
    BACKGROUND,
    COLORS,
    HELDOUT_PAIRS,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    NUMBER_WORDS,
    POSITION_PHRASES,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    SPLITS,
    TRAIN_PAIRS,
    vocabulary,
)

__all__ = [
    "ALL_PAIRS", "ANSWERS", "BACKGROUND", "COLORS", "HELDOUT_PAIRS", "MAX_IMAGE_SIZE",
    "MIN_IMAGE_SIZE", "NUMBER_WORDS", "NUM_TEMPLATES", "POSITIONS", "POSITION_PHRASES",
    "RELATIONS", "SHAPES", "SIZES", "SPLITS", "TRAIN_PAIRS", "as_tensors", "describe",
    "features", "foil_caption", "generate", "load", "load_image_text", "make_scene",
    "questions_and_answers", "referring_expressions", "render", "sample_scenes",
    "sample_single_objects", "vocabulary",
]  # fmt: skip
