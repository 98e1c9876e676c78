"""Instruction data made from a scene, as LLaVA made it with GPT-4 from captions and boxes.

LLaVA gave a text-only GPT-4 the caption and the object boxes of an image (`scene_context`)
and asked for three kinds of response: conversations, detailed descriptions and complex
reasoning. A ShapeWorld scene is symbolic, so the same three kinds come out exact, with no
language model in the loop; PaLI's task prefixes ("caption en", "answer en ...") are a fourth.
"""

from __future__ import annotations

import numpy as np

from minimodels.data.captions import describe, italian_caption
from minimodels.data.world import COLORS, NUMBER_WORDS, POSITIONS

# Words of the instruction data and of PaLI-style task prefixes (the LM's vocabulary needs them).
INSTRUCTION_WORDS: tuple[str, ...] = tuple(
    "user assistant describe detail this picture answer caption count en it question "
    "which nearer closer if were removed would remain name all list each colors "
    "first second third than more fewer same nothing none else larger smaller both tell me "
    "about please give short brief".split()
)
BRIEF_PROMPTS = ("describe the image briefly.", "give a short caption.", "what is in this image?")
DETAIL_PROMPTS = (
    "describe the image in detail.",
    "tell me about this picture.",
    "describe each shape: its size, color and where it is.",
)
DIRECTIONS = {"top": (0, -1), "bottom": (0, 1), "left": (1, -1), "right": (1, 1)}


def _name(o: dict) -> str:
    return f"the {o['color']} {o['shape']}"


def scene_context(scene: dict) -> str:
    """What the "GPT-4" sees: the caption and the boxes, as text (LLaVA's Table 1)."""
    lines = [f"caption: {describe(scene, template=0)}"]
    for o in scene["objects"]:
        lines.append(f"{o['color']} {o['shape']} ({o['size']}): box {o['bbox']}")
    return "\n".join(lines)


def conversation(scene: dict, rng: np.random.Generator, max_turns: int = 3):
    """Several question-answer turns about the scene (LLaVA's 'conversation')."""
    k = int(rng.integers(1, max_turns + 1))
    idx = rng.choice(len(scene["questions"]), size=min(k, len(scene["questions"])), replace=False)
    return [(scene["questions"][i], scene["answers"][i]) for i in idx]


def detailed_description(scene: dict, rng: np.random.Generator):
    """One turn asking for everything: size, colour, shape and place of every object."""
    prompt = DETAIL_PROMPTS[int(rng.integers(len(DETAIL_PROMPTS)))]
    return [(prompt, describe(scene, template=0))]


def reasoning(scene: dict, rng: np.random.Generator):
    """One turn that needs a step of reasoning over the objects (LLaVA's 'complex reasoning'):
    a comparison along a direction or of sizes, or a count after removing an object."""
    objs = scene["objects"]
    options = []
    o = objs[int(rng.integers(len(objs)))]
    options.append(
        (
            f"if {_name(o)} were removed, how many shapes would remain?",
            NUMBER_WORDS[len(objs) - 1],
        )
    )
    if len(objs) >= 2:
        i, j = (int(v) for v in rng.choice(len(objs), size=2, replace=False))
        a, b = objs[i], objs[j]
        ra, ca = divmod(POSITIONS.index(a["position"]), 3)
        rb, cb = divmod(POSITIONS.index(b["position"]), 3)
        for word, (axis, sign) in DIRECTIONS.items():
            pa, pb = (ra, rb) if axis == 0 else (ca, cb)
            if pa != pb:
                winner = a if sign * (pa - pb) > 0 else b
                options.append(
                    (f"which is nearer the {word}, {_name(a)} or {_name(b)}?", _name(winner))
                )
        if a["size"] != b["size"]:
            winner = a if a["size"] == "large" else b
            options.append((f"which is larger, {_name(a)} or {_name(b)}?", _name(winner)))
    return [options[int(rng.integers(len(options)))]]


def pali_task(scene: dict, rng: np.random.Generator):
    """PaLI-style: the task is named by a prefix; captions in English or Italian."""
    kind = int(rng.integers(4))
    if kind == 0:
        return [("caption en", describe(scene, template=0))]
    if kind == 1:
        return [("caption it", italian_caption(scene))]
    if kind == 2:
        i = int(rng.integers(len(scene["questions"])))
        return [(f"answer en {scene['questions'][i]}", scene["answers"][i])]
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    if rng.random() < 0.5:
        return [("count shapes", NUMBER_WORDS[len(scene["objects"])])]
    n = sum(o["color"] == color for o in scene["objects"])
    return [(f"count {color} shapes", NUMBER_WORDS[n])]


RESPONSE_TYPES = {
    "conversation": conversation,
    "detailed description": detailed_description,
    "reasoning": reasoning,
    "task prefix": pali_task,
}


def instruction_data(scene: dict, kind: str, rng: np.random.Generator):
    """Generate one conversation [(question, answer), …] of a response type from a scene."""
    if kind not in RESPONSE_TYPES:
        raise ValueError(f"kind must be one of {list(RESPONSE_TYPES)}; got {kind!r}")
    return RESPONSE_TYPES[kind](scene, rng)


def stage1_data(scene: dict, rng: np.random.Generator):
    """Stage 1 (feature alignment): a brief instruction and the scene's caption."""
    return [(BRIEF_PROMPTS[int(rng.integers(len(BRIEF_PROMPTS)))], describe(scene, rng=rng))]
