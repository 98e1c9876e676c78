"""ShapeWorld: the one toy world every model of the course is trained and measured on.

A scene holds 1-3 non-overlapping objects on a plain dark background. Each object has

* a shape  : circle, square, triangle, diamond, cross
* a colour : red, green, blue, yellow, purple, cyan
* a size   : small, large
* a position on a 3x3 grid: top left, top, top right, left, center, right,
  bottom left, bottom, bottom right  (one object per cell, so objects never overlap)

Because the world is symbolic, every image comes with exact text: a caption (several
templates), the object list with pixel boxes (what an object detector would give ViLBERT),
and question-answer pairs (colour, shape, count, position, existence, relation). Every claim
the course makes can therefore be *measured* exactly.

Splits
------
``train`` and ``test`` never contain the colour-shape pairs in ``HELDOUT_PAIRS`` (6 of the 30
pairs, 20 %); every ``heldout`` scene contains at least one of them. Each colour appears in
exactly one held-out pair, so every colour and every shape is still seen in training, only
not in those combinations: the held-out split measures *compositional* generalisation.

Determinism: the same (split, n, seed, image_size) gives byte-identical images and text.

Quick start::

    from minimodels import shapeworld
    images, scenes = shapeworld.generate("train", 8, seed=0)   # uint8 (8, 32, 32, 3), dicts
    ds = shapeworld.load("train", 1000, seed=0)                 # a datasets.Dataset
    x = shapeworld.as_tensors(ds)                               # uint8 tensor (1000, 3, 32, 32)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

import minimodels  # noqa: F401  (sets the Hugging Face offline variables before `datasets`)

# ----------------------------------------------------------------------------------------------
# The world's vocabulary of attributes
# ----------------------------------------------------------------------------------------------

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 100, 240),
    "yellow": (245, 225, 40),
    "purple": (160, 60, 210),
    "cyan": (40, 215, 225),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
SIZES: tuple[str, ...] = ("small", "large")
# 3x3 grid, row-major: index = 3 * row + col.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
BACKGROUND: tuple[int, int, int] = (22, 22, 28)
SPLITS: tuple[str, ...] = ("train", "test", "heldout")

# Colour-shape pairs that never occur in train/test (each colour once: a Latin-square-like
# design, so each attribute is still learnt from other combinations).
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("green", "circle"),
    ("blue", "cross"),
    ("yellow", "square"),
    ("purple", "diamond"),
    ("cyan", "triangle"),
)
ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLORS for s in SHAPES)
TRAIN_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in ALL_PAIRS if p not in HELDOUT_PAIRS)

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 128
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# How a position reads inside a sentence.
POSITION_PHRASES: dict[str, str] = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")

# Every answer a question can have: the answer vocabulary of VQA heads.
# Counts go up to nine: make_scene and sample_scenes(max_objects=9) allow a full grid.
ANSWERS: tuple[str, ...] = ("yes", "no") + NUMBER_WORDS + tuple(COLORS) + SHAPES + POSITIONS

# Shape sizes relative to a grid cell (radius / cell side).
_RADIUS = {"small": 0.26, "large": 0.40}


def _check_choice(name: str, value, allowed: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}; got {value!r}")


def _check_int(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        lo_s = "-inf" if lo is None else lo
        hi_s = "inf" if hi is None else hi
        raise ValueError(f"{name} must be in [{lo_s}, {hi_s}]; got {value}")
    return value


def _check_image_size(image_size) -> int:
    return _check_int("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)


MAX_SCENES = 1_000_000  # per call: more would take minutes and gigabytes


def _check_scene(scene, name: str = "scene") -> dict:
    """A scene dict as sample_scenes / make_scene return it (objects with colour, shape, ...)."""
    if not isinstance(scene, dict) or not isinstance(scene.get("objects"), list):
        raise TypeError(
            f"{name} must be a scene dict with an 'objects' list (from sample_scenes or "
            f"make_scene); got {type(scene).__name__}"
        )
    for o in scene["objects"]:
        if not isinstance(o, dict) or not {"color", "shape", "size", "position"} <= set(o):
            raise ValueError(
                f"{name}['objects'] must hold dicts with color, shape, size and position; got {o!r}"
            )
    return scene


def _check_rng(rng, name: str = "rng", optional: bool = True):
    if rng is None and optional:
        return np.random.default_rng(0)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{name} must be a numpy Generator, e.g. np.random.default_rng(0); got {rng!r}"
        )
    return rng


# ----------------------------------------------------------------------------------------------
# Scenes: symbolic descriptions
# ----------------------------------------------------------------------------------------------


def _object_geometry(shape: str, size: str, cell: int, image_size: int, jitter=(0.0, 0.0)):
    """Centre (pixels), radius (pixels) and bbox of an object in grid cell `cell`."""
    side = image_size / 3
    r = _RADIUS[size] * side
    row, col = divmod(cell, 3)
    cx = (col + 0.5) * side + jitter[0] * side
    cy = (row + 0.5) * side + jitter[1] * side
    hw, hh = _HALF_EXTENT[shape]
    x0 = max(0, math.floor(cx - hw * r))
    y0 = max(0, math.floor(cy - hh * r))
    x1 = min(image_size, math.ceil(cx + hw * r))
    y1 = min(image_size, math.ceil(cy + hh * r))
    return (cx, cy), r, [x0, y0, x1, y1]


def make_scene(objects: Sequence[dict], image_size: int = 32, caption: str | None = None) -> dict:
    """Build a scene from a list of object specs, e.g.
    ``make_scene([{"shape": "circle", "color": "red", "size": "large", "position": "left"}])``.

    Missing ``size`` defaults to "large". Positions (one object per cell) and colour-shape
    pairs must be distinct.
    The caption, questions and answers are derived from the objects.
    """
    image_size = _check_image_size(image_size)
    if isinstance(objects, dict) or not isinstance(objects, Sequence):
        raise TypeError(f"objects must be a list of dicts; got {type(objects).__name__}")
    if not 1 <= len(objects) <= len(POSITIONS):
        raise ValueError(
            f"objects must hold 1 to {len(POSITIONS)} objects (one per grid cell); "
            f"got {len(objects)}"
        )
    out, used, pairs = [], set(), set()
    for i, spec in enumerate(objects):
        if not isinstance(spec, dict):
            raise TypeError(f"objects[{i}] must be a dict; got {type(spec).__name__}")
        _check_choice(f"objects[{i}]['shape']", spec.get("shape"), SHAPES)
        _check_choice(f"objects[{i}]['color']", spec.get("color"), tuple(COLORS))
        size = spec.get("size", "large")
        _check_choice(f"objects[{i}]['size']", size, SIZES)
        _check_choice(f"objects[{i}]['position']", spec.get("position"), POSITIONS)
        cell = POSITIONS.index(spec["position"])
        if cell in used:
            raise ValueError(
                f"objects[{i}]['position'] {spec['position']!r} is already taken: "
                "objects must be at distinct positions"
            )
        used.add(cell)
        if (spec["color"], spec["shape"]) in pairs:
            raise ValueError(
                f"objects[{i}] repeats the pair {spec['color']} {spec['shape']}: colour-shape "
                "pairs must be distinct, so that 'the red circle' names one object"
            )
        pairs.add((spec["color"], spec["shape"]))
        center, r, bbox = _object_geometry(spec["shape"], size, cell, image_size)
        out.append(_object_dict(spec["shape"], spec["color"], size, cell, bbox, center, r))
    rng = np.random.default_rng(0)
    scene = {"image_size": image_size, "objects": out}
    scene["caption"] = caption if caption is not None else describe(scene, template=0)
    scene["questions"], scene["answers"] = questions_and_answers(scene, rng)
    return scene


def _object_dict(shape, color, size, cell, bbox, center, r) -> dict:
    return {
        "shape": shape,
        "color": color,
        "size": size,
        "position": POSITIONS[cell],
        "bbox": bbox,  # [x0, y0, x1, y1] in pixels: the "detector output"
        "center": [round(float(center[0]), 3), round(float(center[1]), 3)],  # pixels
        "radius": round(float(r), 3),  # pixels (for rendering)
    }


def _split_rng(split: str, seed: int) -> np.random.Generator:
    # Mixing the split into the seed makes train/test/heldout disjoint streams.
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), 2024]))


def sample_scenes(
    split: str = "train",
    n: int = 1,
    seed: int = 0,
    image_size: int = 32,
    min_objects: int = 1,
    max_objects: int = 3,
) -> list[dict]:
    """Sample `n` random scenes (symbolic, not rendered) of a split. Deterministic in `seed`."""
    _check_choice("split", split, SPLITS)
    n = _check_int("n", n, 1, MAX_SCENES)
    seed = _check_int("seed", seed, lo=0)
    image_size = _check_image_size(image_size)
    min_objects = _check_int("min_objects", min_objects, 1, len(POSITIONS))
    max_objects = _check_int("max_objects", max_objects, 1, len(POSITIONS))
    if min_objects > max_objects:
        raise ValueError(
            f"min_objects must be <= max_objects; got min_objects={min_objects}, "
            f"max_objects={max_objects}"
        )
    rng = _split_rng(split, seed)
    pairs = ALL_PAIRS if split == "heldout" else TRAIN_PAIRS
    scenes = []
    for _ in range(n):
        k = int(rng.integers(min_objects, max_objects + 1))
        cells = rng.choice(len(POSITIONS), size=k, replace=False)
        # Distinct colour-shape pairs inside a scene, so "the red circle" names one object.
        idx = rng.choice(len(pairs), size=k, replace=False)
        chosen = [pairs[i] for i in idx]
        if split == "heldout" and not any(p in HELDOUT_PAIRS for p in chosen):
            options = [p for p in HELDOUT_PAIRS if p not in chosen]
            chosen[0] = options[int(rng.integers(len(options)))]
        sizes = rng.integers(0, 2, size=k)
        jitter = rng.uniform(-1.0, 1.0, size=(k, 2))
        objects = []
        for (color, shape), cell, s, j in zip(chosen, cells, sizes, jitter):
            size = SIZES[int(s)]
            room = 0.5 - _RADIUS[size] * max(_HALF_EXTENT[shape]) - 0.03  # stay inside the cell
            center, r, bbox = _object_geometry(shape, size, int(cell), image_size, j * room)
            objects.append(_object_dict(shape, color, size, int(cell), bbox, center, r))
        objects.sort(key=lambda o: POSITIONS.index(o["position"]))  # reading order
        scene = {"image_size": image_size, "objects": objects}
        scene["caption"] = describe(scene, rng=rng)
        scene["questions"], scene["answers"] = questions_and_answers(scene, rng)
        scenes.append(scene)
    return scenes


# ----------------------------------------------------------------------------------------------
# Text: captions, questions, referring expressions, FOIL captions
# ----------------------------------------------------------------------------------------------


def _np(obj: dict, with_size: bool = True) -> str:
    """Noun phrase without article: 'small red circle'."""
    return (
        f"{obj['size']} {obj['color']} {obj['shape']}"
        if with_size
        else (f"{obj['color']} {obj['shape']}")
    )


def _holds(rel: str, a: dict, b: dict) -> bool:
    ra, ca = divmod(POSITIONS.index(a["position"]), 3)
    rb, cb = divmod(POSITIONS.index(b["position"]), 3)
    return {
        "to the left of": ca < cb,
        "to the right of": ca > cb,
        "above": ra < rb,
        "below": ra > rb,
    }[rel]


def _relation(a: dict, b: dict) -> str | None:
    """A spatial relation that holds between a and b, preferring left/right (RELATIONS order)."""
    return next((rel for rel in RELATIONS if _holds(rel, a, b)), None)


NUM_TEMPLATES = 4


def describe(scene: dict, template: int | None = None, rng: np.random.Generator | None = None):
    """A caption for the scene. `template` (0-3) picks the wording; None draws one from `rng`.

    0: 'a small red circle on the left and a large blue square at the top'
    1: 'there is a red circle on the left' / 'there are two shapes: ...'
    2: 'a red circle to the left of a blue square' (a relation; falls back to 0 for one object)
    3: 'an image of a small red circle and a large blue square' (no positions)
    """
    objects = _check_scene(scene)["objects"]
    if template is None:
        rng = _check_rng(rng)
        template = int(rng.integers(NUM_TEMPLATES))
    _check_int("template", template, 0, NUM_TEMPLATES - 1)

    def join(parts):
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]

    if template == 2 and len(objects) >= 2:
        a, b = objects[0], objects[1]
        text = f"a {_np(a, False)} {_relation(a, b)} a {_np(b, False)}"
        if len(objects) == 3:
            text += f" and a {_np(objects[2], False)} {POSITION_PHRASES[objects[2]['position']]}"
        return text
    if template == 1:
        parts = [f"a {_np(o, False)} {POSITION_PHRASES[o['position']]}" for o in objects]
        if len(objects) == 1:
            return "there is " + parts[0]
        return f"there are {NUMBER_WORDS[len(objects)]} shapes: " + join(parts)
    if template == 3:
        return "an image of " + join([f"a {_np(o)}" for o in objects])
    return join([f"a {_np(o)} {POSITION_PHRASES[o['position']]}" for o in objects])


def questions_and_answers(scene: dict, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Question-answer pairs about a scene: count, colour, shape, position, existence, relation.

    Every answer is one of `ANSWERS`. Only unambiguous questions are asked (the colour of
    "the circle" is asked only when there is one circle).
    """
    objects = _check_scene(scene)["objects"]
    rng = _check_rng(rng, optional=False)
    qs, ans = [], []

    def add(q, a):
        qs.append(q)
        ans.append(a)

    add("how many shapes are there?", NUMBER_WORDS[len(objects)])
    shapes = [o["shape"] for o in objects]
    colors = [o["color"] for o in objects]
    for o in objects:
        if shapes.count(o["shape"]) == 1:
            add(f"what color is the {o['shape']}?", o["color"])
        if colors.count(o["color"]) == 1:
            add(f"what shape is the {o['color']} object?", o["shape"])
        add(f"where is the {_np(o, False)}?", o["position"])
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    add(f"how many {color} shapes are there?", NUMBER_WORDS[colors.count(color)])
    # Existence: one yes (a present object) and one no (an absent pair).
    present = {(o["color"], o["shape"]) for o in objects}
    o = objects[int(rng.integers(len(objects)))]
    add(f"is there a {_np(o, False)}?", "yes")
    absent = [p for p in ALL_PAIRS if p not in present]
    c, s = absent[int(rng.integers(len(absent)))]
    add(f"is there a {c} {s}?", "no")
    if len(objects) >= 2:
        i, j = rng.choice(len(objects), size=2, replace=False)
        rel = RELATIONS[int(rng.integers(len(RELATIONS)))]
        a, b = objects[int(i)], objects[int(j)]
        add(
            f"is the {_np(a, False)} {rel} the {_np(b, False)}?",
            "yes" if _holds(rel, a, b) else "no",
        )
    return qs, ans


def referring_expressions(scene: dict) -> list[tuple[str, int]]:
    """Phrases that pick out exactly one object, with that object's index.

    E.g. ('the red circle', 0), ('the shape at the top left', 0), ('the only triangle', 1).
    """
    objects = _check_scene(scene)["objects"]
    out = []
    shapes = [o["shape"] for o in objects]
    colors = [o["color"] for o in objects]
    for i, o in enumerate(objects):
        out.append((f"the {_np(o, False)}", i))
        out.append((f"the shape {POSITION_PHRASES[o['position']]}", i))
        if shapes.count(o["shape"]) == 1 and len(objects) > 1:
            out.append((f"the only {o['shape']}", i))
        if colors.count(o["color"]) == 1 and len(objects) > 1:
            out.append((f"the {o['color']} one", i))
    return out


def foil_caption(caption: str, rng: np.random.Generator | None = None) -> tuple[str, int, str]:
    """A FOIL caption: the caption with exactly one colour or shape word replaced by another.

    Returns (foil, index of the replaced word, the original word). A model that truly reads
    the image must tell the two captions apart.
    """
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"caption must be a non-empty string; got {caption!r}")
    rng = _check_rng(rng)
    words = caption.split()
    slots = [i for i, w in enumerate(words) if w.strip(",:") in COLORS or w.strip(",:") in SHAPES]
    if not slots:
        raise ValueError(f"caption names no colour or shape to replace: {caption!r}")
    i = slots[int(rng.integers(len(slots)))]
    word = words[i].strip(",:")
    pool = list(COLORS) if word in COLORS else list(SHAPES)
    others = [w for w in pool if w != word]
    new = others[int(rng.integers(len(others)))]
    words[i] = words[i].replace(word, new)
    return " ".join(words), i, word


# ----------------------------------------------------------------------------------------------
# Rendering: signed distance functions, vectorised over a batch of scenes
# ----------------------------------------------------------------------------------------------

# Half width and half height of each shape's box, in units of its radius r.
_SQUARE_K, _TRI_K, _BAR_K = 0.85, 1.05, 0.34
_HALF_EXTENT = {
    "circle": (1.0, 1.0),
    "square": (_SQUARE_K, _SQUARE_K),
    "triangle": (_TRI_K * math.sqrt(3) / 2, _TRI_K * 0.75),
    "diamond": (1.0, 1.0),
    "cross": (1.0, 1.0),
}


def _sdf(shape: str, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, < 0 inside) from pixel offsets (u, v) to a shape of radius r.

    u, v: (N, H, W) offsets of the pixel centres from the object's centre; r: (N, 1, 1).
    """
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return np.sqrt(u * u + v * v) - r  # ‖p‖ − r
    if shape == "square":
        return np.maximum(au, av) - _SQUARE_K * r  # max(|x|, |y|) − a
    if shape == "diamond":
        return (au + av - r) * (1 / math.sqrt(2))  # (|x| + |y| − r) / √2
    if shape == "triangle":
        # Equilateral, pointing up, circumradius R: the largest signed distance to its three
        # edge lines (outward normals at 90°, −30° and 210°), centred on its bounding box.
        big_r = _TRI_K * r
        vt = v - big_r / 4
        s3 = math.sqrt(3) / 2
        return np.maximum(np.maximum(vt, s3 * u - 0.5 * vt), -s3 * u - 0.5 * vt) - big_r / 2
    if shape == "cross":  # the union of two bars = the min of their distances
        bar = _BAR_K * r
        return np.minimum(np.maximum(au - r, av - bar), np.maximum(au - bar, av - r))
    raise ValueError(f"shape must be one of {list(SHAPES)}; got {shape!r}")


def render(scenes: Sequence[dict], image_size: int | None = None, return_masks: bool = False):
    """Render scenes to RGB uint8 images of shape (N, H, W, 3).

    Edges are anti-aliased from the signed distance d of each pixel centre:
    alpha = clip(0.5 − d, 0, 1). With ``return_masks=True`` also returns exact object masks
    (N, K, H, W) bool, K = the largest object count, True where the pixel centre lies inside
    the object (d < 0).
    """
    if isinstance(scenes, dict):
        scenes = [scenes]
    if not isinstance(scenes, Sequence) or len(scenes) == 0:
        raise ValueError("scenes must be a non-empty list of scene dicts")
    for i, sc in enumerate(scenes):
        if not isinstance(sc, dict) or "objects" not in sc:
            raise TypeError(f"scenes[{i}] must be a scene dict with an 'objects' list")
    if image_size is None:
        image_size = scenes[0].get("image_size", 32)
    size = _check_image_size(image_size)
    n = len(scenes)
    k = max(len(sc["objects"]) for sc in scenes)
    # Per-slot parameters, padded to k objects (invalid slots get radius 0 and no alpha).
    cx = np.zeros((n, k), np.float32)
    cy = np.zeros((n, k), np.float32)
    rad = np.zeros((n, k), np.float32)
    sid = np.zeros((n, k), np.int64)
    rgb = np.zeros((n, k, 3), np.float32)
    valid = np.zeros((n, k), bool)
    for i, sc in enumerate(scenes):
        scale = size / sc.get("image_size", size)
        for j, o in enumerate(sc["objects"]):
            _check_choice(f"scenes[{i}]['objects'][{j}]['shape']", o.get("shape"), SHAPES)
            _check_choice(f"scenes[{i}]['objects'][{j}]['color']", o.get("color"), tuple(COLORS))
            cx[i, j], cy[i, j] = o["center"][0] * scale, o["center"][1] * scale
            rad[i, j] = o["radius"] * scale
            sid[i, j] = SHAPES.index(o["shape"])
            rgb[i, j] = COLORS[o["color"]]
            valid[i, j] = True
    coords = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.zeros((n, k, size, size), bool) if return_masks else None
    chunk = max(1, 262144 // (size * size))  # bound memory: ~1 MB of floats per array
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        img = np.broadcast_to(np.array(BACKGROUND, np.float32), (e - s, size, size, 3)).copy()
        for j in range(k):
            for shape_index, shape in enumerate(SHAPES):
                sel = np.flatnonzero(valid[s:e, j] & (sid[s:e, j] == shape_index)) + s
                if sel.size == 0:
                    continue
                u = coords[None, None, :] - cx[sel, j, None, None]  # (m, 1, W)
                v = coords[None, :, None] - cy[sel, j, None, None]  # (m, H, 1)
                u, v = np.broadcast_arrays(u, v)
                d = _sdf(shape, u, v, rad[sel, j, None, None])  # (m, H, W)
                alpha = np.clip(0.5 - d, 0.0, 1.0)[..., None]  # anti-aliased coverage
                img[sel - s] += alpha * (rgb[sel, j, None, None, :] - img[sel - s])
                if return_masks:
                    masks[sel, j] = d < 0
        images[s:e] = np.rint(img).astype(np.uint8)
    return (images, masks) if return_masks else images


def generate(split: str = "train", n: int = 1, seed: int = 0, image_size: int = 32, **kwargs):
    """Sample and render `n` scenes: returns (images uint8 (n, H, W, 3), scenes list of dicts).

    Extra keyword arguments (`min_objects`, `max_objects`) go to `sample_scenes`.
    """
    scenes = sample_scenes(split, n, seed=seed, image_size=image_size, **kwargs)
    return render(scenes, image_size), scenes


# ----------------------------------------------------------------------------------------------
# Hugging Face datasets
# ----------------------------------------------------------------------------------------------


def features():
    """The `datasets.Features` of a ShapeWorld dataset."""
    import datasets

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
    import datasets
    from PIL import Image

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
    import torch

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
    import os

    import datasets

    image_size = _check_image_size(image_size)
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
        n = _check_int("n", n, lo=1)
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


def vocabulary() -> list[str]:
    """Every word that ShapeWorld captions, questions and answers can use (lower case)."""
    words = set()
    words.update(COLORS)
    words.update(SHAPES)
    words.update(SIZES)
    words.update(NUMBER_WORDS)
    for text in list(POSITION_PHRASES.values()) + list(RELATIONS) + list(POSITIONS):
        words.update(text.split())
    words.update(
        "a an and there is are shapes shape image of how many what color where the object "
        "objects only one is".split()
    )
    words.update([",", ":", "?", ".", "yes", "no"])
    return sorted(words)
