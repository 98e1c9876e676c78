"""The vocabulary of ShapeWorld: attributes, positions, splits, relations and answers.

Everything else in `minimodels.data` (scenes, rendering, captions, questions, instructions) is
written in these words. The spatial relations between two objects are defined here too, since
captions, questions and hard negatives all read them.
"""

from __future__ import annotations

from collections.abc import Sequence

from minimodels.checks import check_int

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


MAX_SCENES = 1_000_000  # per call: more would take minutes and gigabytes


def check_choice(name: str, value, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}; got {value!r}")
    return value


def check_image_size(image_size) -> int:
    return check_int(image_size, "image_size", MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)


def check_scene(scene, name: str = "scene") -> dict:
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


def noun_phrase(obj: dict, with_size: bool = True) -> str:
    """Noun phrase without article: 'small red circle' ('red circle' without the size)."""
    return f"{obj['size']} {obj['color']} {obj['shape']}" if with_size else (
        f"{obj['color']} {obj['shape']}"
    )  # fmt: skip


def holds(rel: str, a: dict, b: dict) -> bool:
    """Whether `a` is `rel` `b` ('to the left of', ...) on the 3×3 grid."""
    ra, ca = divmod(POSITIONS.index(a["position"]), 3)
    rb, cb = divmod(POSITIONS.index(b["position"]), 3)
    return {
        "to the left of": ca < cb,
        "to the right of": ca > cb,
        "above": ra < rb,
        "below": ra > rb,
    }[rel]


def relation(a: dict, b: dict) -> str | None:
    """A spatial relation that holds between a and b, preferring left/right (RELATIONS order)."""
    return next((rel for rel in RELATIONS if holds(rel, a, b)), None)


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
