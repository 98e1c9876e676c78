"""Questions about a scene with their answers, and referring expressions.

The answers come from the symbolic scene, so they are always right: the VQA data of ViLBERT,
LLaVA and the capstone's neuro-symbolic reader.
"""

from __future__ import annotations

import numpy as np

from minimodels.checks import check_rng
from minimodels.data.world import (
    ALL_PAIRS,
    COLORS,
    NUMBER_WORDS,
    POSITION_PHRASES,
    RELATIONS,
    check_scene,
    holds,
    noun_phrase,
)


def questions_and_answers(scene: dict, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Question-answer pairs about a scene: count, colour, shape, position, existence, relation.

    Every answer is one of `ANSWERS`. Only unambiguous questions are asked (the colour of
    "the circle" is asked only when there is one circle).
    """
    objects = check_scene(scene)["objects"]
    rng = check_rng(rng)
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
        add(f"where is the {noun_phrase(o, False)}?", o["position"])
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    add(f"how many {color} shapes are there?", NUMBER_WORDS[colors.count(color)])
    # Existence: one yes (a present object) and one no (an absent pair).
    present = {(o["color"], o["shape"]) for o in objects}
    o = objects[int(rng.integers(len(objects)))]
    add(f"is there a {noun_phrase(o, False)}?", "yes")
    absent = [p for p in ALL_PAIRS if p not in present]
    c, s = absent[int(rng.integers(len(absent)))]
    add(f"is there a {c} {s}?", "no")
    if len(objects) >= 2:
        i, j = rng.choice(len(objects), size=2, replace=False)
        rel = RELATIONS[int(rng.integers(len(RELATIONS)))]
        a, b = objects[int(i)], objects[int(j)]
        add(
            f"is the {noun_phrase(a, False)} {rel} the {noun_phrase(b, False)}?",
            "yes" if holds(rel, a, b) else "no",
        )
    return qs, ans


def referring_expressions(scene: dict) -> list[tuple[str, int]]:
    """Phrases that pick out exactly one object, with that object's index.

    E.g. ('the red circle', 0), ('the shape at the top left', 0), ('the only triangle', 1).
    """
    objects = check_scene(scene)["objects"]
    out = []
    shapes = [o["shape"] for o in objects]
    colors = [o["color"] for o in objects]
    for i, o in enumerate(objects):
        out.append((f"the {noun_phrase(o, False)}", i))
        out.append((f"the shape {POSITION_PHRASES[o['position']]}", i))
        if shapes.count(o["shape"]) == 1 and len(objects) > 1:
            out.append((f"the only {o['shape']}", i))
        if colors.count(o["color"]) == 1 and len(objects) > 1:
            out.append((f"the {o['color']} one", i))
    return out
