"""Language as an interface: a question becomes a small program over vision modules.

Neural module networks (Andreas et al., 2016) and visual programming (VisProg, Gupta &
Kembhavi, 2023; ViperGPT, Surís et al., 2023) answer a question in two steps:

1. a *parser* turns the question into a program, a few calls to named modules;
2. an *executor* runs the program on what perception says about the image.

In VisProg the parser is a large language model prompted with examples, and the modules are
other models (a detector, a VQA model, …). Here the parser is a small grammar for ShapeWorld
questions, and perception is any function that lists the objects in an image, for example the
judge's reading (``minimodels.pretrained("judge").read(images)``) or the true scene. Each
step's result can be shown, so a wrong answer can be traced to the module that erred::

    program = parse("is the red circle to the left of the blue square?")
    print(program)
        OBJ0 = find()
        OBJ1 = filter_color(OBJ0, 'blue')
        OBJ2 = filter_shape(OBJ1, 'square')
        OBJ3 = unique(OBJ2)
        OBJ4 = relate(OBJ0, OBJ3, 'to the left of')
        ...
        ANSWER = exists(OBJ7)
    execute(program, judge.read(images[:1])[0])     # 'yes'

The modules (CLEVR's vocabulary): find, filter_color, filter_shape, filter_size, unique,
relate, count, exists, query_color, query_shape, query_position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from minimodels import shapeworld as sw

RELATIONS = sw.RELATIONS  # "to the left of", "to the right of", "above", "below"


class ProgramError(ValueError):
    """A program cannot run on this scene (e.g. `unique` found no object, or two)."""


# ----------------------------------------------------------------------------------------------
# The modules. Objects are dicts with "color", "shape", "size" and "position" (a grid cell).
# ----------------------------------------------------------------------------------------------


def _grid(obj: dict) -> tuple[int, int]:
    return divmod(sw.POSITIONS.index(obj["position"]), 3)  # (row, column)


def find(scene: dict) -> list[dict]:
    """All objects in the scene."""
    return list(scene["objects"])


def filter_color(objects: list[dict], color: str) -> list[dict]:
    return [o for o in objects if o["color"] == color]


def filter_shape(objects: list[dict], shape: str) -> list[dict]:
    return [o for o in objects if o["shape"] == shape]


def filter_size(objects: list[dict], size: str) -> list[dict]:
    return [o for o in objects if o["size"] == size]


def unique(objects: list[dict]) -> dict:
    """The one object of the set; a ProgramError if there are none or several."""
    if len(objects) != 1:
        raise ProgramError(f"unique: expected exactly one object, found {len(objects)}")
    return objects[0]


def relate(objects: list[dict], anchor: dict, relation: str) -> list[dict]:
    """The objects that stand in `relation` to `anchor` ("to the left of" → column smaller)."""
    ra, ca = _grid(anchor)
    test = {
        "to the left of": lambda r, c: c < ca,
        "to the right of": lambda r, c: c > ca,
        "above": lambda r, c: r < ra,
        "below": lambda r, c: r > ra,
    }[relation]
    return [o for o in objects if o is not anchor and test(*_grid(o))]


def count(objects: list[dict]) -> str:
    return sw.NUMBER_WORDS[len(objects)]


def exists(objects: list[dict]) -> str:
    return "yes" if objects else "no"


def query_color(obj: dict) -> str:
    return obj["color"]


def query_shape(obj: dict) -> str:
    return obj["shape"]


def query_position(obj: dict) -> str:
    return obj["position"]


MODULES = {
    f.__name__: f
    for f in (
        find, filter_color, filter_shape, filter_size, unique, relate, count, exists,
        query_color, query_shape, query_position,
    )
}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Programs: a list of steps, each `VAR = module(args)`; args are earlier VARs or constants
# ----------------------------------------------------------------------------------------------


@dataclass
class Step:
    out: str  # the variable this step defines, e.g. "OBJ2" or "ANSWER"
    module: str  # a key of MODULES
    args: tuple = ()  # names of earlier variables (str starting with OBJ) or constants

    def __str__(self) -> str:
        args = ", ".join(a if _is_var(a) else repr(a) for a in self.args)
        return f"{self.out} = {self.module}({args})"


def _is_var(a) -> bool:
    return isinstance(a, str) and re.fullmatch(r"OBJ\d+", a) is not None


@dataclass
class Program:
    steps: list[Step] = field(default_factory=list)
    question: str = ""

    def __str__(self) -> str:
        return "\n".join(str(s) for s in self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def add(self, module: str, *args, out: str | None = None) -> str:
        out = out if out is not None else f"OBJ{len(self.steps)}"
        self.steps.append(Step(out, module, args))
        return out


_COLORS = tuple(sw.COLORS)
_SHAPE_WORDS = {**{s: s for s in sw.SHAPES}, **{s + "s": s for s in sw.SHAPES}, "crosses": "cross"}


def _noun_phrase(program: Program, words: str, source: str) -> str:
    """Add filters for a noun phrase ("large red circles", "blue object", "shapes")."""
    var = source
    for word in words.split():
        if word in _COLORS:
            var = program.add("filter_color", var, word)
        elif word in sw.SIZES:
            var = program.add("filter_size", var, word)
        elif word in _SHAPE_WORDS:  # "circle" or "circles"
            var = program.add("filter_shape", var, _SHAPE_WORDS[word])
        elif word in ("shape", "shapes", "object", "objects", "one", "ones", "thing", "things"):
            continue
        else:
            raise ValueError(
                f"cannot parse the noun phrase {words!r}: {word!r} is not a colour "
                f"{_COLORS}, a size {sw.SIZES} or a shape {sw.SHAPES}"
            )
    return var


_RELATION_RE = "|".join(RELATIONS)
_PATTERNS = (
    (re.compile(r"how many (?P<np>.+?) are there"), "count"),
    (re.compile(r"what (?P<attr>color|shape) is the (?P<np>.+)"), "query"),
    (re.compile(r"where is the (?P<np>.+)"), "where"),
    (re.compile(rf"is the (?P<a>.+?) (?P<rel>{_RELATION_RE}) the (?P<b>.+)"), "relate"),
    (re.compile(r"is there an? (?P<np>.+)"), "exists"),
    (re.compile(r"are there (?:any )?(?P<np>.+)"), "exists"),
)


def parse(question: str) -> Program:
    """Turn a ShapeWorld question into a `Program` (a ValueError if the grammar does not
    cover it). Handles counting, colour/shape/position queries, existence and relations, with
    any mix of size, colour and shape in the noun phrases."""
    if not isinstance(question, str):
        raise TypeError(f"question must be a str; got {type(question).__name__}")
    text = " ".join(question.lower().strip().rstrip("?").split())
    if not text:
        raise ValueError("question must be a non-empty string")
    for pattern, kind in _PATTERNS:
        m = pattern.fullmatch(text)
        if m is None:
            continue
        p = Program(question=question)
        scene = p.add("find")
        if kind == "count":
            p.add("count", _noun_phrase(p, m["np"], scene), out="ANSWER")
        elif kind == "exists":
            p.add("exists", _noun_phrase(p, m["np"], scene), out="ANSWER")
        elif kind in ("query", "where"):
            obj = p.add("unique", _noun_phrase(p, m["np"], scene))
            module = "query_position" if kind == "where" else f"query_{m['attr']}"
            p.add(module, obj, out="ANSWER")
        else:  # "is the A <rel> the B?": is there an A among the objects <rel> B?
            b = p.add("unique", _noun_phrase(p, m["b"], scene))
            related = p.add("relate", scene, b, m["rel"])
            p.add("exists", _noun_phrase(p, m["a"], related), out="ANSWER")
        return p
    raise ValueError(
        f"cannot parse the question {question!r}: expected one of 'how many … are there?', "
        "'what color/shape is the …?', 'where is the …?', 'is there a …?', "
        "'is the … to the left of/to the right of/above/below the …?'"
    )


def _check_scene(scene) -> None:
    if not isinstance(scene, dict) or not isinstance(scene.get("objects"), list):
        raise TypeError(
            "scene must be a dict with an 'objects' list (a ShapeWorld scene or one entry of "
            f"Judge.read); got {type(scene).__name__}"
        )
    for o in scene["objects"]:
        missing = {"color", "shape", "size", "position"} - set(o)
        if missing:
            raise ValueError(f"every object needs color, shape, size and position; {o} lacks "
                             f"{sorted(missing)}")  # fmt: skip


def execute(program: Program, scene: dict, trace: bool = False):
    """Run `program` on `scene` ({"objects": [...]}); returns the answer (a string), or
    (answer, [(step, value), ...]) with ``trace=True``. A ProgramError if a step cannot run."""
    if not isinstance(program, Program):
        raise TypeError(f"program must be a Program (from parse); got {type(program).__name__}")
    _check_scene(scene)
    env, steps = {}, []
    for step in program.steps:
        if step.module not in MODULES:
            raise ValueError(f"unknown module {step.module!r}; expected one of {list(MODULES)}")
        args = []
        for a in step.args:
            if _is_var(a) and a not in env:
                raise ValueError(f"{step}: {a} is used before it is defined")
            args.append(env[a] if _is_var(a) else a)
        value = (
            MODULES[step.module](scene) if step.module == "find" else MODULES[step.module](*args)
        )
        env[step.out] = value
        steps.append((str(step), value))
    if "ANSWER" not in env:
        raise ValueError("program has no ANSWER step")
    return (env["ANSWER"], steps) if trace else env["ANSWER"]


def format_value(value) -> str:
    """A short text for a step's result: objects as 'large red circle (top left)'."""
    if isinstance(value, dict):
        return f"{value['size']} {value['color']} {value['shape']} ({value['position']})"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return repr(value)


def print_trace(question: str, scene: dict) -> str | None:
    """Print the program of `question` step by step with each step's result on `scene`."""
    program = parse(question)
    print(question)
    env_steps = []
    try:
        result, env_steps = execute(program, scene, trace=True)
    except ProgramError as err:
        result = None
        print(f"  (stopped: {err})")
    for line, value in env_steps:
        print(f"  {line:<45} → {format_value(value)}")
    return result


def answer(question: str, scene: dict) -> str | None:
    """Parse and run; None when the program cannot run on this scene (perception erred)."""
    try:
        return execute(parse(question), scene)
    except ProgramError:
        return None
