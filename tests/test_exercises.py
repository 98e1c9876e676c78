"""The exercise checks of minimodels.exercises: each passes the solution and fails wrong answers
with an AssertionError that says what is off."""

import numpy as np
import pytest
import torch
import torch.nn as nn

import minimodels.exercises as exercises
from minimodels.data.captions import colour_exchange, describe, hard_negative
from minimodels.dvae import gumbel_softmax, nearest_code
from minimodels.exercises import (
    check_co_attention,
    check_colour_exchange,
    check_gumbel_softmax,
    check_quantize,
)
from minimodels.vilbert import CoAttentionLayer

# ---- exercise checks: the solution passes, wrong answers fail ----------------------------------


def test_check_co_attention_accepts_the_layer_and_rejects_wrong_ones():
    check_co_attention(CoAttentionLayer)

    class Sequential(CoAttentionLayer):  # regions read the already-updated text
        def forward(self, t, v, text_mask, region_mask):
            t = t + self.text_cross(
                self.ln_text(t), self.ln_vision(v), key_padding_mask=region_mask
            )
            tn = self.ln_text(t)
            v = v + self.vision_cross(self.ln_vision(v), tn, key_padding_mask=text_mask)
            return (
                self.text_block(t, key_padding_mask=text_mask),
                self.vision_block(v, key_padding_mask=region_mask),
            )

    class NoMask(CoAttentionLayer):  # forgets the regions' padding mask
        def forward(self, t, v, text_mask, region_mask):
            tn, vn = self.ln_text(t), self.ln_vision(v)
            t = t + self.text_cross(tn, vn)
            v = v + self.vision_cross(vn, tn, key_padding_mask=text_mask)
            return (
                self.text_block(t, key_padding_mask=text_mask),
                self.vision_block(v, key_padding_mask=region_mask),
            )

    class Missing(nn.Module):
        def __init__(self, *args):
            super().__init__()
            self.ln_text = nn.LayerNorm(32)

    with pytest.raises(AssertionError, match="region stream is not"):
        check_co_attention(Sequential)
    with pytest.raises(AssertionError, match="text stream is not"):
        check_co_attention(NoMask)
    with pytest.raises(AssertionError, match="parameters do not match"):
        check_co_attention(Missing)


def test_check_colour_exchange_accepts_a_solution_and_rejects_wrong_ones():
    check_colour_exchange(colour_exchange)

    def mutates(scene, template):
        objs = scene["objects"]
        if len(objs) < 2 or objs[0]["color"] == objs[1]["color"]:
            return colour_exchange(scene, template)
        objs[0]["color"], objs[1]["color"] = objs[1]["color"], objs[0]["color"]
        return describe(scene, template=template)

    def new_colour(scene, template):
        rng = np.random.default_rng(0)
        return hard_negative(scene, template, rng)[0] if len(scene["objects"]) > 1 else None

    with pytest.raises(AssertionError, match="changed the scene"):
        check_colour_exchange(mutates)
    with pytest.raises(AssertionError):
        check_colour_exchange(new_colour)
    with pytest.raises(AssertionError, match="return None|colours can be exchanged"):
        check_colour_exchange(lambda scene, template: None)


# ---- the exercises' checks: pass the right answer, fail wrong ones ----------------------------


def test_check_quantize(capsys):
    check_quantize(nearest_code)
    assert "match" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="dot product"):
        check_quantize(lambda z, e: (z @ e.T).argmax(1))
    with pytest.raises(AssertionError, match="argmax instead of argmin"):
        check_quantize(lambda z, e: torch.cdist(z, e).argmax(1))
    with pytest.raises(AssertionError, match="integer"):
        check_quantize(lambda z, e: torch.cdist(z, e).argmin(1).float())


def test_check_gumbel_softmax(capsys):
    def right(logits, tau, generator):
        return gumbel_softmax(logits, tau, generator=generator)

    def no_noise(logits, tau, generator):
        return (logits / tau).softmax(-1)

    def no_tau(logits, tau, generator):
        return gumbel_softmax(logits, 1.0, generator=generator)

    def wrong_noise(logits, tau, generator):  # uniform noise instead of Gumbel noise
        return ((logits + torch.rand(logits.shape, generator=generator)) / tau).softmax(-1)

    check_gumbel_softmax(right)
    assert "match" in capsys.readouterr().out
    for wrong in (no_noise, no_tau, wrong_noise):
        with pytest.raises(AssertionError):
            check_gumbel_softmax(wrong)


# ---- the wrapper that lets an untouched student notebook run on -------------------------------


def _check_double(fn):
    assert fn(2) == 4, "double the input"
    print("correct")


def _stub(*args):
    raise NotImplementedError("multiply by two")


def test_exercise_reports_a_stub_and_lets_wrong_answers_fail(capsys, monkeypatch):
    monkeypatch.delenv(exercises.REQUIRE_ENV, raising=False)
    check = exercises.exercise(_check_double)
    assert check.__wrapped__ is _check_double and check.__name__ == "_check_double"
    assert check(_stub) is None
    out = capsys.readouterr().out
    assert "Not done yet: _stub is still the stub" in out and "multiply by two" in out
    with pytest.raises(AssertionError, match="double the input"):
        check(lambda x: x)
    check(lambda x: 2 * x)
    assert capsys.readouterr().out == "correct\n"
    monkeypatch.setenv(exercises.REQUIRE_ENV, "require")  # the instructors' edition, CI
    with pytest.raises(NotImplementedError, match="multiply by two"):
        check(_stub)
    with pytest.raises(TypeError, match="decorates a check"):
        exercises.exercise("check")


def test_the_package_checks_are_wrapped(capsys, monkeypatch):
    monkeypatch.delenv(exercises.REQUIRE_ENV, raising=False)
    for check in (check_co_attention, check_colour_exchange, check_gumbel_softmax, check_quantize):
        assert check(_stub) is None
        assert "Not done yet" in capsys.readouterr().out
