"""Captions made from a scene: its description, short prompts, FOIL captions, hard negatives and
the Italian caption (the second language of PaLI's task prefixes).

A scene is symbolic, so every caption is exact: a model that reads the image can be checked
against it word for word.
"""

from __future__ import annotations

import numpy as np

from minimodels.checks import check_int, check_rng
from minimodels.data.world import (
    ALL_PAIRS,
    COLORS,
    NUMBER_WORDS,
    POSITION_PHRASES,
    SHAPES,
    check_scene,
    holds,
    noun_phrase,
    relation,
)

NUM_TEMPLATES = 4
# The class names of zero-shot classification: "red circle", ..., one per colour-shape pair.
CLASSNAMES: tuple[str, ...] = tuple(f"{c} {s}" for c, s in ALL_PAIRS)


def describe(scene: dict, template: int | None = None, rng: np.random.Generator | None = None):
    """A caption for the scene. `template` (0-3) picks the wording; None draws one from `rng`.

    0: 'a small red circle on the left and a large blue square at the top'
    1: 'there is a red circle on the left' / 'there are two shapes: ...'
    2: 'a red circle to the left of a blue square' (a relation; falls back to 0 for one object)
    3: 'an image of a small red circle and a large blue square' (no positions)
    """
    objects = check_scene(scene)["objects"]
    if template is None:
        rng = np.random.default_rng(0) if rng is None else check_rng(rng)
        template = int(rng.integers(NUM_TEMPLATES))
    check_int(template, "template", 0, NUM_TEMPLATES - 1)

    def join(parts):
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]

    if template == 2 and len(objects) >= 2:
        a, b = objects[0], objects[1]
        text = f"a {noun_phrase(a, False)} {relation(a, b)} a {noun_phrase(b, False)}"
        if len(objects) == 3:
            c = objects[2]
            text += f" and a {noun_phrase(c, False)} {POSITION_PHRASES[c['position']]}"
        return text
    if template == 1:
        parts = [f"a {noun_phrase(o, False)} {POSITION_PHRASES[o['position']]}" for o in objects]
        if len(objects) == 1:
            return "there is " + parts[0]
        return f"there are {NUMBER_WORDS[len(objects)]} shapes: " + join(parts)
    if template == 3:
        return "an image of " + join([f"a {noun_phrase(o)}" for o in objects])
    return join([f"a {noun_phrase(o)} {POSITION_PHRASES[o['position']]}" for o in objects])


def short_prompt(scene: dict) -> str:
    """The bare list of a scene's objects, the wording of a typed prompt: 'a red circle and a
    blue cross' ('a red circle' for one object)."""
    return " and ".join(f"a {o['color']} {o['shape']}" for o in check_scene(scene)["objects"])


def mixed_captions(scenes, rng: np.random.Generator, short: float) -> list[str]:
    """A caption per scene: with probability `short` its short prompt (see `short_prompt`),
    else its own caption (a random template). Models that are prompted with 'a red circle'
    must meet that wording in training too; one draw of `rng` per scene."""
    return [short_prompt(s) if rng.random() < short else s["caption"] for s in scenes]


def foil_caption(caption: str, rng: np.random.Generator | None = None) -> tuple[str, int, str]:
    """A FOIL caption: the caption with exactly one colour or shape word replaced by another.

    Returns (foil, index of the replaced word, the original word). A model that truly reads
    the image must tell the two captions apart.
    """
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"caption must be a non-empty string; got {caption!r}")
    rng = np.random.default_rng(0) if rng is None else check_rng(rng)
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


def hard_negative(scene: dict, template: int, rng: np.random.Generator) -> tuple[str, str]:
    """A caption that reads like the scene's own but is false: the same template, with
    either one object's colour or shape changed, or two objects' colours exchanged (so every
    word of the caption still appears in the image, only bound to the wrong object).

    Returns (caption, kind) with kind "colour", "shape" or "exchange". The change is always a
    colour-shape pair the scene does not contain, so the caption is really false.
    """
    objects = check_scene(scene)["objects"]
    check_rng(rng)
    present = {(o["color"], o["shape"]) for o in objects}
    kinds = ["colour", "shape"]
    pairs = [
        (i, j)
        for i in range(len(objects))
        for j in range(i + 1, len(objects))
        if objects[i]["color"] != objects[j]["color"]
        and objects[i]["shape"] != objects[j]["shape"]
        and (objects[j]["color"], objects[i]["shape"]) not in present
    ]
    if pairs:
        kinds.append("exchange")
    kind = kinds[int(rng.integers(len(kinds)))]
    new = [dict(o) for o in objects]
    if kind == "exchange":
        i, j = pairs[int(rng.integers(len(pairs)))]
        new[i]["color"], new[j]["color"] = objects[j]["color"], objects[i]["color"]
    else:
        i = int(rng.integers(len(objects)))
        o = objects[i]
        if kind == "colour":
            options = [c for c in COLORS if (c, o["shape"]) not in present]
            new[i]["color"] = options[int(rng.integers(len(options)))]
        else:
            options = [s for s in SHAPES if (o["color"], s) not in present]
            new[i]["shape"] = options[int(rng.integers(len(options)))]
    return describe({**scene, "objects": new}, template=template), kind


def colour_exchange(scene: dict, template: int) -> str | None:
    """The caption (in `template`) of the scene with two objects' colours exchanged, the first
    pair whose exchange changes which colour-shape pairs the scene holds; None when none does.

    The same words as the true caption, bound differently: a bag of words cannot tell them
    apart. (Notebook 03's exercise asks for this function; its later cells use this one.)
    """
    objects = check_scene(scene)["objects"]
    present = {(o["color"], o["shape"]) for o in objects}
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            new = [dict(o) for o in objects]
            new[i]["color"], new[j]["color"] = objects[j]["color"], objects[i]["color"]
            if {(o["color"], o["shape"]) for o in new} != present:
                return describe({**scene, "objects": new}, template=template)
    return None


def relation_negative(scene: dict, converse: bool = False) -> tuple[str, str] | None:
    """A relation caption (template 2) and its relation swap: the two related objects exchanged,
    'a red circle to the left of a blue square' -> 'a blue square to the left of a red circle'.

    Same words, same counts, only their order changed: a bag of words cannot tell them apart.
    Template 2 names the objects in reading order, so its true caption names the upper-left
    object first; converse=True names the other one first ('a blue square to the right of a red
    circle' against 'a red circle to the right of a blue square'), so that a model which only
    checks that the first-named object comes first in reading order is wrong on it.
    Returns (true caption, swapped caption), or None when the scene has under two objects or
    the swapped caption is still true (another object of the same colour and shape makes it so).
    """
    objects = check_scene(scene)["objects"]
    if len(objects) < 2:
        return None
    a, b = (objects[1], objects[0]) if converse else (objects[0], objects[1])
    rel = relation(a, b)
    if rel is None:
        return None

    def looks_like(o, p):
        return (o["color"], o["shape"]) == (p["color"], p["shape"])

    # the swap says "some b-looking object is `rel` some a-looking object": false only if none is
    if any(
        holds(rel, x, y)
        for x in objects
        for y in objects
        if x is not y and looks_like(x, b) and looks_like(y, a)
    ):
        return None
    true, swapped = (f"a {noun_phrase(p, False)} {rel} a {noun_phrase(q, False)}"
                     for p, q in ((a, b), (b, a)))  # fmt: skip
    if len(objects) == 3:  # the third object's clause stays as describe writes it
        c = objects[2]
        rest = f" and a {noun_phrase(c, False)} {POSITION_PHRASES[c['position']]}"
        true, swapped = true + rest, swapped + rest
    return true, swapped


def random_negative(scenes: list[dict], i: int, template: int, rng) -> str:
    """The caption (same template) of another scene of the list whose caption differs."""
    own = describe(scenes[i], template=template)
    for _ in range(20):
        j = int(rng.integers(len(scenes)))
        text = describe(scenes[j], template=template)
        if j != i and text != own:
            return text
    return hard_negative(scenes[i], template, rng)[0]  # tiny lists: fall back to a hard one


# ---------------------------------------------------------------------------------- Italian
# The second caption language (PaLI). Plain ASCII, so the word splitter keeps words whole:
# "un piccolo cerchio rosso a sinistra e una grande croce blu in alto".
ITALIAN_SHAPES = {"circle": "cerchio", "square": "quadrato", "triangle": "triangolo",
                  "diamond": "rombo", "cross": "croce"}  # fmt: skip
ITALIAN_FEMININE = {"cross"}  # la croce; the others are masculine
ITALIAN_COLORS = {  # (masculine, feminine)
    "red": ("rosso", "rossa"), "green": ("verde", "verde"), "blue": ("blu", "blu"),
    "yellow": ("giallo", "gialla"), "purple": ("viola", "viola"), "cyan": ("ciano", "ciano"),
}  # fmt: skip
ITALIAN_SIZES = {"small": ("piccolo", "piccola"), "large": ("grande", "grande")}
ITALIAN_POSITIONS = {
    "top left": "in alto a sinistra", "top": "in alto", "top right": "in alto a destra",
    "left": "a sinistra", "center": "al centro", "right": "a destra",
    "bottom left": "in basso a sinistra", "bottom": "in basso", "bottom right": "in basso a destra",
}  # fmt: skip


def italian_words() -> list[str]:
    """Every word an Italian caption can use."""
    words = {"un", "una", "e"}
    words.update(ITALIAN_SHAPES.values())
    for pair in list(ITALIAN_COLORS.values()) + list(ITALIAN_SIZES.values()):
        words.update(pair)
    for phrase in ITALIAN_POSITIONS.values():
        words.update(phrase.split())
    return sorted(words)


def italian_caption(scene: dict) -> str:
    """The scene's caption in Italian (a small grammar with gender agreement), e.g.
    'un piccolo cerchio rosso a sinistra e una grande croce blu in alto'."""
    if not isinstance(scene, dict) or not scene.get("objects"):
        raise ValueError("scene must be a ShapeWorld scene dict with a non-empty 'objects' list")
    parts = []
    for o in scene["objects"]:
        f = int(o["shape"] in ITALIAN_FEMININE)  # 0 masculine, 1 feminine
        article = ("un", "una")[f]
        size = ITALIAN_SIZES[o["size"]][f]
        color = ITALIAN_COLORS[o["color"]][f]
        parts.append(
            f"{article} {size} {ITALIAN_SHAPES[o['shape']]} {color} "
            f"{ITALIAN_POSITIONS[o['position']]}"
        )
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " e " + parts[-1]
