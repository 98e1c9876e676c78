"""minimodels.data.instructions: LLaVA-style instruction data, exact because the scene is."""

import numpy as np
import pytest

from minimodels import shapeworld as sw
from minimodels.data import instructions


def test_reasoning_answers_follow_the_scene():
    scene = sw.make_scene(
        [
            {"shape": "circle", "color": "red", "size": "small", "position": "top left"},
            {"shape": "square", "color": "blue", "size": "large", "position": "bottom right"},
        ]
    )
    answers = {}
    for k in range(40):
        (q, a), = instructions.reasoning(scene, np.random.default_rng(k))  # fmt: skip
        answers[q] = a
    removal = [a for q, a in answers.items() if "were removed" in q]
    assert removal and set(removal) == {"one"}  # two shapes, one removed
    for q, a in answers.items():
        if "nearer the top" in q or "nearer the left" in q:
            assert a == "the red circle", q
        if "nearer the bottom" in q or "larger" in q:
            assert a == "the blue square", q
    assert any("larger" in q for q in answers)
    for kind in instructions.RESPONSE_TYPES:
        turns = instructions.instruction_data(scene, kind, np.random.default_rng(0))
        assert turns and all(isinstance(q, str) and isinstance(a, str) for q, a in turns)
    with pytest.raises(ValueError, match="kind"):
        instructions.instruction_data(scene, "poetry", np.random.default_rng(0))
