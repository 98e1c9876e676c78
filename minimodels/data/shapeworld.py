"""ShapeWorld scenes: sampling, building by hand, rendering.

A scene holds 1-3 non-overlapping objects on a plain dark background. Each object has

* a shape  : circle, square, triangle, diamond, cross
* a colour : red, green, blue, yellow, purple, cyan
* a size   : small, large
* a position on a 3x3 grid: top left, top, top right, left, center, right,
  bottom left, bottom, bottom right  (one object per cell, so objects never overlap)

A scene is a dict: ``{"image_size", "objects": [{"shape", "color", "size", "position", "bbox",
"center", "radius"}, ...], "caption", "questions", "answers"}``. The bbox is what an object
detector would give ViLBERT; the caption and the question-answer pairs come from
`minimodels.data.captions` and `minimodels.data.questions`.

Splits: ``train`` and ``test`` never contain the colour-shape pairs in ``HELDOUT_PAIRS``;
every ``heldout`` scene contains at least one of them (compositional generalisation).
Determinism: the same (split, n, seed, image_size) gives byte-identical images and text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from minimodels.checks import check_int
from minimodels.data.captions import describe
from minimodels.data.questions import questions_and_answers
from minimodels.data.world import (
    ALL_PAIRS,
    BACKGROUND,
    COLORS,
    HELDOUT_PAIRS,
    MAX_SCENES,
    POSITIONS,
    SHAPES,
    SIZES,
    SPLITS,
    TRAIN_PAIRS,
    check_choice,
    check_image_size,
)

# Shape sizes relative to a grid cell (radius / cell side).
_RADIUS = {"small": 0.26, "large": 0.40}


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
    image_size = check_image_size(image_size)
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
        check_choice(f"objects[{i}]['shape']", spec.get("shape"), SHAPES)
        check_choice(f"objects[{i}]['color']", spec.get("color"), tuple(COLORS))
        size = spec.get("size", "large")
        check_choice(f"objects[{i}]['size']", size, SIZES)
        check_choice(f"objects[{i}]['position']", spec.get("position"), POSITIONS)
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
    check_choice("split", split, SPLITS)
    n = check_int(n, "n", 1, MAX_SCENES)
    seed = check_int(seed, "seed", 0)
    image_size = check_image_size(image_size)
    min_objects = check_int(min_objects, "min_objects", 1, len(POSITIONS))
    max_objects = check_int(max_objects, "max_objects", 1, len(POSITIONS))
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
    size = check_image_size(image_size)
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
            check_choice(f"scenes[{i}]['objects'][{j}]['shape']", o.get("shape"), SHAPES)
            check_choice(f"scenes[{i}]['objects'][{j}]['color']", o.get("color"), tuple(COLORS))
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


def sample_single_objects(
    split: str, n: int, seed: int, image_size: int = 32, sizes: Sequence[str] = ("large",)
) -> list[dict]:
    """n scenes of one object whose size is in `sizes` (the data of the image generators):
    drawn from a longer stream of ShapeWorld scenes and filtered, so positions keep their
    jitter."""
    n, seed = check_int(n, "n", 1, MAX_SCENES), check_int(seed, "seed", 0)
    if isinstance(sizes, str) or not set(sizes) <= set(SIZES) or not sizes:
        raise ValueError(f"sizes must be a non-empty list of sizes from {SIZES}; got {sizes!r}")
    scenes: list[dict] = []
    k = 0
    while len(scenes) < n:
        batch = sample_scenes(split, 2 * n, seed=seed + 7919 * k, image_size=image_size,
                              max_objects=1)  # fmt: skip
        scenes += [s for s in batch if s["objects"][0]["size"] in sizes]
        k += 1
    return scenes[:n]
