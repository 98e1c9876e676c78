"""Independent checks of ShapeWorld scenes, used by the data tests: each reads the objects and
the 3x3 grid itself, never the code that produced the scene."""

import re

import numpy as np

from minimodels import shapeworld as sw

RELATION_RE = "|".join(sw.RELATIONS)


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
