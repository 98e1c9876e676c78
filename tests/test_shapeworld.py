"""Tests for minimodels.shapeworld: scenes, the split rule, rendering, text, datasets loaders.

Every answer, caption and mask is checked against the symbolic objects (or their geometry),
not against the code that produced it.
"""

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from minimodels import shapeworld as sw
from minimodels.text import Tokenizer

REPO = Path(__file__).resolve().parents[1]
SIZES_TO_TEST = (16, 32, 64, 128)
BG = np.array(sw.BACKGROUND, np.uint8)
PHRASE_TO_POSITION = {v: k for k, v in sw.POSITION_PHRASES.items()}
RELATION_RE = "|".join(sw.RELATIONS)


# ------------------------------------------------------------------------------------------
# Helpers: independent checks against the objects and the 3x3 grid
# ------------------------------------------------------------------------------------------


def cell_of(obj, image_size):
    """(row, col) of the grid cell holding the object's bbox centre."""
    x0, y0, x1, y1 = obj["bbox"]
    side = image_size / 3
    return int(((y0 + y1) / 2) // side), int(((x0 + x1) / 2) // side)


def relation_holds(rel, a, b, image_size):
    (ra, ca), (rb, cb) = cell_of(a, image_size), cell_of(b, image_size)
    return {
        "to the left of": ca < cb,
        "to the right of": ca > cb,
        "above": ra < rb,
        "below": ra > rb,
    }[rel]


def find(objects, color=None, shape=None):
    return [
        o
        for o in objects
        if (color is None or o["color"] == color) and (shape is None or o["shape"] == shape)
    ]


def check_answer(q, a, objects, image_size):
    """Assert that answer `a` to question `q` is true of `objects`."""
    assert a in sw.ANSWERS, (q, a)
    if q == "how many shapes are there?":
        assert a == sw.NUMBER_WORDS[len(objects)]
    elif m := re.fullmatch(r"how many (\w+) shapes are there\?", q):
        assert a == sw.NUMBER_WORDS[len(find(objects, color=m[1]))]
    elif m := re.fullmatch(r"what color is the (\w+)\?", q):
        (o,) = find(objects, shape=m[1])  # asked only when unambiguous
        assert a == o["color"]
    elif m := re.fullmatch(r"what shape is the (\w+) object\?", q):
        (o,) = find(objects, color=m[1])
        assert a == o["shape"]
    elif m := re.fullmatch(r"where is the (\w+) (\w+)\?", q):
        (o,) = find(objects, m[1], m[2])
        assert a == o["position"]
        row, col = cell_of(o, image_size)
        assert sw.POSITIONS[3 * row + col] == a  # the geometry agrees with the name
    elif m := re.fullmatch(r"is there a (\w+) (\w+)\?", q):
        assert a == ("yes" if find(objects, m[1], m[2]) else "no")
    elif m := re.fullmatch(rf"is the (\w+) (\w+) ({RELATION_RE}) the (\w+) (\w+)\?", q):
        (oa,) = find(objects, m[1], m[2])
        (ob,) = find(objects, m[4], m[5])
        assert oa is not ob
        assert a == ("yes" if relation_holds(m[3], oa, ob, image_size) else "no"), q
    else:
        raise AssertionError(f"unexpected question form: {q!r}")


def check_scene(scene, image_size, min_objects=1, max_objects=3):
    objects = scene["objects"]
    assert scene["image_size"] == image_size
    assert min_objects <= len(objects) <= max_objects
    positions = [o["position"] for o in objects]
    assert len(set(positions)) == len(positions)
    pairs = [(o["color"], o["shape"]) for o in objects]
    assert len(set(pairs)) == len(pairs)
    side = image_size / 3
    for o in objects:
        assert o["shape"] in sw.SHAPES and o["color"] in sw.COLORS and o["size"] in sw.SIZES
        x0, y0, x1, y1 = o["bbox"]
        assert 0 <= x0 < x1 <= image_size and 0 <= y0 < y1 <= image_size
        # The bbox lies in the grid cell its position names (up to pixel rounding).
        row, col = divmod(sw.POSITIONS.index(o["position"]), 3)
        assert x0 >= np.floor(col * side) and x1 <= np.ceil((col + 1) * side)
        assert y0 >= np.floor(row * side) and y1 <= np.ceil((row + 1) * side)
    assert len(scene["questions"]) == len(scene["answers"]) > 0
    for q, a in zip(scene["questions"], scene["answers"]):
        check_answer(q, a, objects, image_size)


def spec(shape, color, position, size="large"):
    return {"shape": shape, "color": color, "position": position, "size": size}


@pytest.fixture(scope="module")
def train_scenes():
    return sw.sample_scenes("train", 3000, seed=0)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


# ------------------------------------------------------------------------------------------
# Attributes and the split rule
# ------------------------------------------------------------------------------------------


def test_attributes():
    assert len(set(sw.SHAPES)) == len(sw.SHAPES) >= 5
    assert len(set(sw.COLORS)) == len(sw.COLORS) >= 6
    assert len(set(sw.COLORS.values())) == len(sw.COLORS)  # colours are distinguishable
    assert all(c != sw.BACKGROUND for c in sw.COLORS.values())
    assert set(sw.SIZES) == {"small", "large"}
    assert len(set(sw.POSITIONS)) == 9
    assert set(sw.POSITION_PHRASES) == set(sw.POSITIONS)
    answers = set(sw.ANSWERS)
    assert len(answers) == len(sw.ANSWERS)
    assert {"yes", "no", "one", "two", "three"} <= answers
    assert set(sw.COLORS) | set(sw.SHAPES) | set(sw.POSITIONS) <= answers


def test_heldout_pairs_design():
    assert len(sw.ALL_PAIRS) == len(sw.COLORS) * len(sw.SHAPES)
    assert set(sw.HELDOUT_PAIRS) <= set(sw.ALL_PAIRS)
    assert len(sw.HELDOUT_PAIRS) == 0.2 * len(sw.ALL_PAIRS)
    assert set(sw.TRAIN_PAIRS) == set(sw.ALL_PAIRS) - set(sw.HELDOUT_PAIRS)
    # Each colour is held out exactly once; every colour and shape is still seen in training.
    assert Counter(c for c, _ in sw.HELDOUT_PAIRS) == Counter(dict.fromkeys(sw.COLORS, 1))
    assert {c for c, _ in sw.TRAIN_PAIRS} == set(sw.COLORS)
    assert {s for _, s in sw.TRAIN_PAIRS} == set(sw.SHAPES)


def test_split_rule(train_scenes):
    heldout = set(sw.HELDOUT_PAIRS)
    test_scenes = sw.sample_scenes("test", 2000, seed=0)
    for scene in train_scenes + test_scenes:
        assert not {(o["color"], o["shape"]) for o in scene["objects"]} & heldout
    seen_heldout, seen_other = set(), set()
    for scene in sw.sample_scenes("heldout", 2000, seed=0):
        pairs = {(o["color"], o["shape"]) for o in scene["objects"]}
        assert pairs & heldout, scene["objects"]
        seen_heldout |= pairs & heldout
        seen_other |= pairs - heldout
    assert seen_heldout == heldout  # every held-out pair is actually tested
    assert seen_other == set(sw.TRAIN_PAIRS)


def test_train_scenes_are_valid_and_varied(train_scenes):
    for scene in train_scenes[:500]:
        check_scene(scene, 32)
    objects = [o for sc in train_scenes for o in sc["objects"]]
    assert {len(sc["objects"]) for sc in train_scenes} == {1, 2, 3}
    assert {o["size"] for o in objects} == set(sw.SIZES)
    assert {o["position"] for o in objects} == set(sw.POSITIONS)
    assert {(o["color"], o["shape"]) for o in objects} == set(sw.TRAIN_PAIRS)
    # The caption is one of the four templates, and all four are used.
    used = set()
    for sc in train_scenes[:400]:
        matches = [
            t for t in range(sw.NUM_TEMPLATES) if sw.describe(sc, template=t) == sc["caption"]
        ]
        assert matches, sc["caption"]
        used.update(matches)
    assert used == set(range(sw.NUM_TEMPLATES))


def test_objects_in_reading_order(train_scenes):
    for sc in train_scenes[:300]:
        cells = [sw.POSITIONS.index(o["position"]) for o in sc["objects"]]
        assert cells == sorted(cells)


@settings(max_examples=12, deadline=None)
@given(
    split=st.sampled_from(sw.SPLITS),
    n=st.integers(1, 4),
    seed=st.integers(0, 2**63),
    image_size=st.integers(sw.MIN_IMAGE_SIZE, sw.MAX_IMAGE_SIZE),
    bounds=st.tuples(st.integers(1, 9), st.integers(1, 9)).map(sorted),
)
def test_any_valid_arguments_give_valid_scenes(split, n, seed, image_size, bounds):
    lo, hi = bounds
    images, scenes = sw.generate(split, n, seed, image_size, min_objects=lo, max_objects=hi)
    assert images.dtype == np.uint8 and images.shape == (n, image_size, image_size, 3)
    assert len(scenes) == n
    for scene in scenes:
        check_scene(scene, image_size, lo, hi)
        if split == "heldout":
            assert {(o["color"], o["shape"]) for o in scene["objects"]} & set(sw.HELDOUT_PAIRS)


def test_full_grid_answers_are_in_answers():
    # Regression: counts above three ("four" ... "nine") used to be missing from ANSWERS.
    for scene in sw.sample_scenes("train", 20, seed=1, min_objects=9, max_objects=9):
        check_scene(scene, 32, 9, 9)
        assert "nine" in scene["answers"]


# ------------------------------------------------------------------------------------------
# Images and determinism
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", SIZES_TO_TEST)
def test_generate_images(image_size):
    images, scenes = sw.generate("train", 6, seed=3, image_size=image_size)
    assert isinstance(images, np.ndarray)
    assert images.dtype == np.uint8 and images.shape == (6, image_size, image_size, 3)
    for im, sc in zip(images, scenes):
        check_scene(sc, image_size)
        assert (im != BG).any(-1).sum() > 0  # something is drawn


def test_determinism():
    a_img, a_sc = sw.generate("train", 16, seed=7, image_size=32)
    b_img, b_sc = sw.generate("train", 16, seed=7, image_size=32)
    assert a_img.tobytes() == b_img.tobytes()
    assert a_sc == b_sc
    assert json.dumps(a_sc) == json.dumps(b_sc)  # JSON-serialisable, identical text
    c_img, c_sc = sw.generate("train", 16, seed=8, image_size=32)
    assert not np.array_equal(a_img, c_img)
    assert [s["caption"] for s in a_sc] != [s["caption"] for s in c_sc]
    d_img, d_sc = sw.generate("test", 16, seed=7, image_size=32)
    assert not np.array_equal(a_img, d_img)
    assert [s["objects"] for s in a_sc] != [s["objects"] for s in d_sc]


# ------------------------------------------------------------------------------------------
# Masks and pixels
# ------------------------------------------------------------------------------------------


def eroded(mask):
    """Pixels whose 3x3 neighbourhood lies inside the mask (their disk of radius 1/2 does)."""
    out = np.zeros_like(mask)
    inner = np.ones_like(mask[1:-1, 1:-1])
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            inner &= mask[1 + dy : mask.shape[0] - 1 + dy, 1 + dx : mask.shape[1] - 1 + dx]
    out[1:-1, 1:-1] = inner
    return out


@pytest.mark.parametrize("image_size", SIZES_TO_TEST)
def test_masks_agree_with_pixels_and_boxes(image_size):
    n = 40 if image_size <= 64 else 15
    scenes = sw.sample_scenes("train", n, seed=11, image_size=image_size)
    images, masks = sw.render(scenes, return_masks=True)
    k = max(len(s["objects"]) for s in scenes)
    assert masks.dtype == bool and masks.shape == (n, k, image_size, image_size)
    assert np.array_equal(images, sw.render(scenes))  # masks do not change the image
    interior_checked = 0
    for im, ms, sc in zip(images, masks, scenes):
        objs = sc["objects"]
        assert not ms[len(objs) :].any()  # padding slots are empty
        assert (ms.sum(0) <= 1).all()  # masks do not overlap
        drawn = (im != BG).any(-1)
        near_some_box = np.zeros_like(drawn)
        for m, o in zip(ms, objs):
            x0, y0, x1, y1 = o["bbox"]
            box = np.zeros_like(m)
            box[y0:y1, x0:x1] = True
            assert not (m & ~box).any(), "mask leaves its bbox"
            if image_size >= 32:
                assert m.any(), o
            near_some_box[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = True
            rgb = np.array(sw.COLORS[o["color"]], np.uint8)
            # Fully covered pixels have exactly the object's colour.
            inner = eroded(m)
            assert (im[inner] == rgb).all()
            interior_checked += int(inner.sum())
            # Pixels whose centre is inside are closer to the object's colour than to the
            # background (coverage > 1/2).
            px = im[m].astype(float)
            d_obj = np.linalg.norm(px - rgb, axis=-1)
            d_bg = np.linalg.norm(px - BG, axis=-1)
            assert (d_obj <= d_bg + 2).all()  # (+2: rounding at coverage ~1/2)
            # Pixels next to the object whose centre is outside: coverage <= 1/2.
            ring = np.zeros_like(m)
            ring[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = True
            px = im[ring & ~ms.any(0)].astype(float)
            d_obj = np.linalg.norm(px - rgb, axis=-1)
            d_bg = np.linalg.norm(px - BG, axis=-1)
            assert (d_bg <= d_obj + 2).all()
        # Everything drawn is near some object (1 px slack for anti-aliasing).
        assert not (drawn & ~near_some_box).any()
    assert interior_checked > 0


@pytest.mark.parametrize("shape", sw.SHAPES)
@pytest.mark.parametrize("color", list(sw.COLORS))
def test_single_object_has_the_colour_asked(shape, color):
    scene = sw.make_scene([spec(shape, color, "center")], image_size=32)
    (im,), (ms,) = sw.render(scene, return_masks=True)
    (o,) = scene["objects"]
    cx, cy = o["center"]
    assert tuple(im[int(cy), int(cx)]) == sw.COLORS[color]
    drawn = (im != BG).any(-1)
    colours = Counter(map(tuple, im[drawn]))
    assert colours.most_common(1)[0][0] == sw.COLORS[color]
    # Outside the centre cell (plus 1 px) the image is background.
    outside = np.ones_like(drawn)
    outside[9:23, 9:23] = False
    assert not drawn[outside].any()


@pytest.mark.parametrize("size", sw.SIZES)
def test_mask_area_matches_shape_geometry(size):
    r = 0.4 if size == "large" else 0.26
    r *= 96 / 3  # radius in pixels at image_size 96
    bar = 0.34 * r
    area = {
        "circle": np.pi * r**2,
        "square": (2 * 0.85 * r) ** 2,
        "diamond": 2 * r**2,
        "triangle": 3 * np.sqrt(3) / 4 * (1.05 * r) ** 2,  # equilateral, circumradius 1.05 r
        "cross": 2 * (2 * r) * (2 * bar) - (2 * bar) ** 2,
    }
    specs = [spec(s, "red", p, size) for s, p in zip(sw.SHAPES, sw.POSITIONS)]
    scene = sw.make_scene(specs, image_size=96)
    _, (ms,) = sw.render(scene, return_masks=True)
    for m, o in zip(ms, scene["objects"]):
        assert m.sum() == pytest.approx(area[o["shape"]], rel=0.1), o["shape"]
        ys, xs = np.nonzero(m)
        # The mask is centred on the object's centre (its bbox centre).
        assert xs.mean() + 0.5 == pytest.approx(o["center"][0], abs=1.0)
        if o["shape"] != "triangle":  # a triangle's centroid lies below its bbox centre
            assert ys.mean() + 0.5 == pytest.approx(o["center"][1], abs=1.0)
        else:
            assert ys.mean() + 0.5 > o["center"][1]


def test_masks_are_scale_invariant():
    scenes = sw.sample_scenes("train", 30, seed=5, image_size=32)
    _, m32 = sw.render(scenes, 32, return_masks=True)
    img64, m64 = sw.render(scenes, 64, return_masks=True)
    assert img64.shape == (30, 64, 64, 3)
    down = m64.reshape(*m64.shape[:2], 32, 2, 32, 2).mean((3, 5)) >= 0.5
    inter = (down & m32).sum((2, 3))
    union = (down | m32).sum((2, 3))
    valid = union > 0
    iou = inter[valid] / union[valid]
    assert iou.min() > 0.5 and iou.mean() > 0.8


def test_render_accepts_single_scene_and_rejects_bad_input():
    scene = sw.make_scene([spec("circle", "red", "left")])
    assert sw.render(scene).shape == (1, 32, 32, 3)
    assert sw.render([scene], image_size=48).shape == (1, 48, 48, 3)
    with pytest.raises(ValueError, match="scenes"):
        sw.render([])
    with pytest.raises(TypeError, match=r"scenes\[0\]"):
        sw.render([{"caption": "no objects"}])
    with pytest.raises(ValueError, match="image_size"):
        sw.render(scene, image_size=200)
    bad = {"image_size": 32, "objects": [dict(scene["objects"][0], color="orange")]}
    with pytest.raises(ValueError, match="color"):
        sw.render(bad)


# ------------------------------------------------------------------------------------------
# Text: captions, questions, referring expressions, FOIL
# ------------------------------------------------------------------------------------------


def test_all_text_tokenizes_without_unk(tok, train_scenes):
    scenes = train_scenes[:300] + sw.sample_scenes("heldout", 100, seed=2, max_objects=9)
    for sc in scenes:
        texts = [sc["caption"], *sc["questions"], *sc["answers"]]
        texts += [sw.describe(sc, t) for t in range(sw.NUM_TEMPLATES)]
        texts += [e for e, _ in sw.referring_expressions(sc)]
        for text in texts:
            assert "[UNK]" not in tok.tokenize(text), text
    for a in sw.ANSWERS:
        assert "[UNK]" not in tok.tokenize(a)


def test_questions_cover_all_kinds(train_scenes):
    kinds = Counter()
    for sc in train_scenes[:300]:
        for q in sc["questions"]:
            kinds[" ".join(q.split()[:2])] += 1
    for k in ("how many", "what color", "what shape", "where is", "is there", "is the"):
        assert kinds[k] > 0, k
    answers = Counter(a for sc in train_scenes[:300] for a in sc["answers"])
    assert answers["yes"] > 0 and answers["no"] > 0


def test_describe_templates(train_scenes):
    for sc in train_scenes[:200]:
        objs = sc["objects"]
        for t in range(sw.NUM_TEMPLATES):
            text = sw.describe(sc, template=t)
            words = re.findall(r"\w+", text)
            for o in objs:
                assert o["color"] in words and o["shape"] in words, (t, text)
            if t in (0, 1):
                for o in objs:
                    assert sw.POSITION_PHRASES[o["position"]] in text
            if t in (0, 3):
                assert [w for w in words if w in sw.SIZES] == [o["size"] for o in objs]
            if t == 3:
                assert not any(p in text for p in sw.POSITION_PHRASES.values())
            if t == 1 and len(objs) > 1:
                assert text.startswith(f"there are {sw.NUMBER_WORDS[len(objs)]} shapes")
            if t == 2 and len(objs) >= 2:
                m = re.match(rf"a (\w+) (\w+) ({RELATION_RE}) a (\w+) (\w+)", text)
                assert m, text
                (oa,) = find(objs, m[1], m[2])
                (ob,) = find(objs, m[4], m[5])
                assert relation_holds(m[3], oa, ob, 32), text
    with pytest.raises(ValueError, match="template"):
        sw.describe(train_scenes[0], template=4)


def matching_objects(expr, objects):
    """Indices of the objects that a referring expression describes (parsed independently)."""
    if m := re.fullmatch(r"the shape (.+)", expr):
        hit = [o["position"] == PHRASE_TO_POSITION[m[1]] for o in objects]
    elif m := re.fullmatch(r"the only (\w+)", expr):
        hit = [o["shape"] == m[1] for o in objects]
    elif m := re.fullmatch(r"the (\w+) one", expr):
        hit = [o["color"] == m[1] for o in objects]
    elif m := re.fullmatch(r"the (\w+) (\w+)", expr):
        hit = [(o["color"], o["shape"]) == (m[1], m[2]) for o in objects]
    else:
        raise AssertionError(f"unexpected expression {expr!r}")
    return [i for i, h in enumerate(hit) if h]


def test_referring_expressions_pick_one_object(train_scenes):
    forms = Counter()
    for sc in train_scenes[:400]:
        exprs = sw.referring_expressions(sc)
        assert {i for _, i in exprs} == set(range(len(sc["objects"])))
        for expr, i in exprs:
            assert matching_objects(expr, sc["objects"]) == [i], expr
            forms[expr.split()[1]] += 1
    assert forms["shape"] > 0 and forms["only"] > 0


def test_foil_caption(train_scenes):
    vocab = set(sw.COLORS) | set(sw.SHAPES)
    for k, sc in enumerate(train_scenes[:300]):
        cap = sc["caption"]
        foil, i, word = sw.foil_caption(cap, np.random.default_rng(k))
        a, b = cap.split(), foil.split()
        assert len(a) == len(b)
        diff = [j for j in range(len(a)) if a[j] != b[j]]
        assert diff == [i]
        old, new = a[i].strip(",:"), b[i].strip(",:")
        assert old == word and old != new
        assert {old, new} <= set(sw.COLORS) or {old, new} <= set(sw.SHAPES)
        assert old in vocab
        assert a[i].replace(old, "") == b[i].replace(new, "")  # punctuation kept
    cap = train_scenes[0]["caption"]
    assert sw.foil_caption(cap, np.random.default_rng(3)) == sw.foil_caption(
        cap, np.random.default_rng(3)
    )
    for bad in ("", "   ", None):
        with pytest.raises(ValueError, match="caption"):
            sw.foil_caption(bad)
    with pytest.raises(ValueError, match="caption"):
        sw.foil_caption("a small thing on the left")


# ------------------------------------------------------------------------------------------
# make_scene
# ------------------------------------------------------------------------------------------


def test_make_scene_builds_what_it_is_given():
    specs = [
        spec("triangle", "green", "bottom right", "small"),
        {"shape": "cross", "color": "yellow", "position": "top left"},  # size defaults
        spec("diamond", "cyan", "center", "small"),
    ]
    scene = sw.make_scene(specs, image_size=64)
    check_scene(scene, 64)
    got = [(o["shape"], o["color"], o["position"], o["size"]) for o in scene["objects"]]
    assert got == [
        ("triangle", "green", "bottom right", "small"),
        ("cross", "yellow", "top left", "large"),
        ("diamond", "cyan", "center", "small"),
    ]
    assert scene["caption"] == sw.describe(scene, template=0)
    assert "a small green triangle at the bottom right" in scene["caption"]
    assert sw.make_scene(specs, caption="hello")["caption"] == "hello"
    # Rendered: each object is drawn in its own colour, in its own cell.
    (im,), (ms,) = sw.render(scene, return_masks=True)
    for m, o in zip(ms, scene["objects"]):
        assert m.any() and (im[eroded(m)] == sw.COLORS[o["color"]]).all()
    # A large object is larger than a small one of the same shape.
    small = sw.make_scene([spec("circle", "red", "left", "small")])
    large = sw.make_scene([spec("circle", "red", "left", "large")])
    assert (
        sw.render(small, return_masks=True)[1].sum() < sw.render(large, return_masks=True)[1].sum()
    )


def test_make_scene_full_grid():
    pairs = sw.TRAIN_PAIRS[:9]
    scene = sw.make_scene([spec(s, c, p) for (c, s), p in zip(pairs, sw.POSITIONS)])
    check_scene(scene, 32, 9, 9)


@pytest.mark.parametrize(
    "objects, exc, match",
    [
        ([spec("circle", "orange", "left")], ValueError, r"objects\[0\]\['color'\]"),
        ([spec("hexagon", "red", "left")], ValueError, r"objects\[0\]\['shape'\]"),
        ([spec("circle", "red", "left", "medium")], ValueError, r"objects\[0\]\['size'\]"),
        ([spec("circle", "red", "middle")], ValueError, r"objects\[0\]\['position'\]"),
        ([{"shape": "circle", "color": "red"}], ValueError, r"position"),
        (
            [spec("circle", "red", "left"), spec("square", "blue", "left")],
            ValueError,
            r"objects\[1\]\['position'\]",
        ),
        (
            [spec("circle", "red", "left"), spec("circle", "red", "right")],
            ValueError,
            r"objects\[1\].*pair",
        ),
        ([spec(s, c, "left") for c, s in sw.ALL_PAIRS[:10]], ValueError, "objects"),
        ([], ValueError, "objects"),
        (spec("circle", "red", "left"), TypeError, "objects"),
        (["circle"], TypeError, r"objects\[0\]"),
    ],
)
def test_make_scene_rejects_bad_input(objects, exc, match):
    with pytest.raises(exc, match=match):
        sw.make_scene(objects)


@pytest.mark.parametrize(
    "image_size, exc", [(15, ValueError), (129, ValueError), ("32", TypeError)]
)
def test_bad_image_size(image_size, exc):
    with pytest.raises(exc, match="image_size"):
        sw.make_scene([spec("circle", "red", "left")], image_size=image_size)
    with pytest.raises(exc, match="image_size"):
        sw.generate("train", 2, image_size=image_size)
    with pytest.raises(exc, match="image_size"):
        sw.load("train", 2, image_size=image_size)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"n": 0}, ValueError, "n must"),
        ({"n": -1}, ValueError, "n must"),
        ({"n": 2.0}, TypeError, "n must"),
        ({"split": "validation"}, ValueError, "split"),
        ({"split": None}, ValueError, "split"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": True}, TypeError, "seed"),
        ({"max_objects": 10}, ValueError, "max_objects"),
        ({"min_objects": 0}, ValueError, "min_objects"),
        ({"min_objects": 3, "max_objects": 2}, ValueError, "min_objects"),
    ],
)
def test_sampling_rejects_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sw.sample_scenes(**kwargs)
    with pytest.raises(exc, match=match):
        sw.generate(**kwargs)


# ------------------------------------------------------------------------------------------
# Hugging Face datasets
# ------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------
# No network
# ------------------------------------------------------------------------------------------

_NO_NETWORK = """
import os, socket, sys, tempfile

def refuse(*args, **kwargs):
    raise RuntimeError("network access attempted")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

import minimodels
print(os.environ.get("HF_HUB_OFFLINE"), os.environ.get("HF_DATASETS_OFFLINE"))
if "--load" in sys.argv:
    from minimodels import shapeworld
    ds = shapeworld.load("train", 3, seed=0)
    path = os.path.join(tempfile.mkdtemp(), "x.parquet")
    ds.to_parquet(path)
    back = shapeworld.load_image_text(path)
    assert back["caption"] == ds["caption"]
    print("loaded", len(back))
"""


def run_python(env_updates, *args):
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    }
    env.update(env_updates)
    res = subprocess.run(
        [sys.executable, "-c", _NO_NETWORK, *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.split("\n")


def test_package_is_offline(tmp_path):
    out = run_python({"HF_HOME": str(tmp_path / "hf")}, "--load")
    assert out[0] == "1 1"
    assert out[1] == "loaded 3"


def test_explicit_offline_setting_is_kept():
    assert run_python({"HF_HUB_OFFLINE": "0"})[0] == "0 1"
    assert run_python({"HF_DATASETS_OFFLINE": "0"})[0] == "1 0"
