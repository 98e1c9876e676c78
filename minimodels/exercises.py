"""Helpers for the notebooks' exercises, and the checks that need more than a cell.

Each exercise in a notebook has an answer cell (tag ``solution``), a check cell (tag ``check``)
that calls a ``check_...(fn)`` function on the student's answer, and a hidden cell (tags
``wrong-answer`` and ``remove-cell``) that proves the check is not a rubber stamp::

    expect_failure(check_count_color, lambda scene, color: 0)

In the student's notebook the answer cell is a stub that raises ``NotImplementedError(hint)``;
every check is wrapped in :func:`exercise`, which turns that into a friendly "not done yet" so
that the rest of the notebook runs on. The instructors' edition holds the solutions, and `make
test` runs each solution through its check as well (see ``conftest.py``), so every check is
tested both ways: the solution passes it, a wrong answer fails it. Most checks are written in
their notebook; the few below compare against the package's own modules.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os

import numpy as np
import torch
import torch.nn.functional as F

from minimodels.data.captions import NUM_TEMPLATES, describe
from minimodels.data.shapeworld import sample_scenes
from minimodels.dvae import nearest_code
from minimodels.vilbert import CoAttentionLayer

REQUIRE_ENV = "MINIMODELS_EXERCISES"  # "require": a stub fails its check (solution runs, CI)


def exercise(check):
    """Decorate an exercise's check: while the answer is still the stub, say so and return None.

    The stub raises ``NotImplementedError(hint)``. Instead of a traceback the student reads
    "not done yet" and the hint, and the notebook runs on. Any other failure (a wrong answer's
    AssertionError) propagates. With ``MINIMODELS_EXERCISES=require`` in the environment a stub
    fails too: that is how the instructors' edition proves that every solution is really there.
    """
    if not callable(check):
        raise TypeError(f"exercise() decorates a check function; got {type(check).__name__}")

    @functools.wraps(check)
    def run(answer, *args, **kwargs):
        try:
            return check(answer, *args, **kwargs)
        except NotImplementedError as err:
            if os.environ.get(REQUIRE_ENV, "").strip().lower() == "require":
                raise
            name = getattr(answer, "__name__", "your answer")
            print(
                f"Not done yet: {name} is still the stub. Hint: {err}\n"
                "Write it in the cell above, run that cell, then run this check again."
            )
            return None

    return run


def expect_failure(check, wrong, *args, **kwargs) -> str:
    """Run ``check(wrong, *args, **kwargs)`` and return the message it fails with.

    Raises AssertionError when the check accepts the wrong answer, or when it fails with
    anything but an AssertionError (a student would then see a traceback, not a hint).
    """
    if not callable(check):
        raise TypeError(f"check must be callable; got {type(check).__name__}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            check(wrong, *args, **kwargs)
    except AssertionError as err:
        message = str(err) or "(no message)"
        print(f"{getattr(check, '__name__', 'check')} rejects a wrong answer: {message}")
        return message
    except Exception as err:  # noqa: BLE001 - the point is to report what escaped
        raise AssertionError(
            f"{getattr(check, '__name__', 'check')} failed with {type(err).__name__}: {err}; "
            "a check should fail with an AssertionError that says what is off"
        ) from err
    raise AssertionError(f"{getattr(check, '__name__', 'check')} accepted a wrong answer")


# ----------------------------------------------------------------------------------------------
# Notebook 03 (ViLBERT): a co-attention layer and a hard negative by colour exchange
# ----------------------------------------------------------------------------------------------


def _rel_error(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return ((a - b).norm() / max(a.norm().item(), b.norm().item(), 1e-12)).item()


@exercise
def check_co_attention(layer_cls) -> None:
    """Exercise: a co-attention layer built from `MultiHeadAttention` and `TransformerBlock`.

    `layer_cls(text_width, vision_width, num_heads, mlp_ratio)` must have the submodules of
    `CoAttentionLayer` (ln_text, ln_vision, text_cross, vision_cross, text_block,
    vision_block) and `forward(t, v, text_mask, region_mask) -> (t, v)`.
    """
    torch.manual_seed(0)
    ref = CoAttentionLayer(32, 48, 4, 2.0).eval()
    mine = layer_cls(32, 48, 4, 2.0).eval()
    try:
        mine.load_state_dict(ref.state_dict())
    except RuntimeError as err:
        raise AssertionError(
            "your layer's parameters do not match CoAttentionLayer's: use the same six "
            f"submodules with the same widths ({err.__class__.__name__}: {str(err)[:200]})"
        ) from None
    t, v = torch.randn(3, 7, 32), torch.randn(3, 4, 48)
    text_mask = torch.ones(3, 7, dtype=torch.bool)
    text_mask[0, 5:] = False
    region_mask = torch.ones(3, 4, dtype=torch.bool)
    region_mask[1, 2:] = False
    with torch.no_grad():
        expected = ref(t, v, text_mask, region_mask)
        got = mine(t, v, text_mask, region_mask)
    assert isinstance(got, tuple) and len(got) == 2, "forward should return (t, v)"
    for name, g, e in (("text", got[0], expected[0]), ("region", got[1], expected[1])):
        assert g.shape == e.shape, (
            f"{name} stream: expected shape {tuple(e.shape)}, got {tuple(g.shape)}"
        )
    err_t, err_v = _rel_error(got[0], expected[0]), _rel_error(got[1], expected[1])
    print(f"relative error: text stream {err_t:.1e}, region stream {err_v:.1e}")
    if err_t < 1e-5 and err_v > 1e-5:
        raise AssertionError(
            "the text stream is right but the region stream is not: do the regions read the "
            "text *before* this layer's update (both cross-attentions use the old t and v)?"
        )
    if err_v < 1e-5 and err_t > 1e-5:
        raise AssertionError(
            "the region stream is right but the text stream is not: words should attend to "
            "regions (queries LN(t), keys/values LN(v)), with region_mask as key padding"
        )
    assert err_t < 1e-5 and err_v < 1e-5, (
        "not the same numbers yet: cross-attention (keys and values from the *other* stream, "
        "with that stream's padding mask), residual add, then each stream's TransformerBlock"
    )
    print("co-attention check passed.")


@exercise
def check_colour_exchange(fn) -> None:
    """Exercise: `fn(scene, template)` returns a caption in which two objects' colours are
    exchanged (a false caption with the true caption's words), or None if no exchange of two
    objects' colours changes what the scene contains."""
    rng = np.random.default_rng(3)
    scenes = sample_scenes("test", 60, seed=3, max_objects=3)
    for s in scenes:
        before = [dict(o) for o in s["objects"]]
        t = int(rng.integers(NUM_TEMPLATES))
        got = fn(s, t)
        assert [dict(o) for o in s["objects"]] == before, (
            "your function changed the scene it was given: copy the objects (dict(o)) first"
        )
        present = {(o["color"], o["shape"]) for o in s["objects"]}
        valid = set()
        for i in range(len(s["objects"])):
            for j in range(i + 1, len(s["objects"])):
                new = [dict(o) for o in s["objects"]]
                new[i]["color"], new[j]["color"] = new[j]["color"], new[i]["color"]
                if {(o["color"], o["shape"]) for o in new} != present:
                    valid.add(describe({**s, "objects": new}, template=t))
        true_caption = describe(s, template=t)
        if not valid:
            assert got is None, (
                f"no exchange makes a false caption for {true_caption!r}, so return None "
                f"(got {got!r})"
            )
            continue
        assert got is not None, f"{true_caption!r} has objects whose colours can be exchanged"
        assert got != true_caption, f"{got!r} is the true caption: exchange two *different* colours"
        assert sorted(got.split()) == sorted(true_caption.split()), (
            f"{got!r} does not use the same words as {true_caption!r}: exchange colours, "
            "do not draw new ones, and keep the template"
        )
        assert got in valid, f"{got!r} is not the caption of a colour exchange of {true_caption!r}"
    print("colour exchange check passed on 60 scenes.")


# ----------------------------------------------------------------------------------------------
# Notebook 04 (DALL-E): the quantisation step of VQ-VAE and the Gumbel-softmax sample
# ----------------------------------------------------------------------------------------------


@exercise
def check_quantize(fn) -> None:
    """Check a student's `fn(z_e (N, D), codebook (K, D)) -> codes (N,)` against argmin ‖z − e‖."""
    g = torch.Generator().manual_seed(123)
    codebook = torch.randn(16, 4, generator=g)
    z_e = torch.randn(50, 4, generator=g) * 1.5
    got = fn(z_e, codebook)
    assert isinstance(got, torch.Tensor), f"return a tensor of code indices; got {type(got)}"
    assert got.shape == (50,), (
        f"expected one code per row of z_e, shape (50,); got {tuple(got.shape)}"
    )
    assert not got.is_floating_point(), (
        f"codes are indices: return an integer tensor (argmin gives int64); got {got.dtype}"
    )
    want = nearest_code(z_e, codebook)
    wrong = (got.long() != want).float().mean().item()
    if wrong > 0:
        by_dot = (z_e @ codebook.T).argmax(1)
        hint = (
            " It matches the largest dot product z·e: the distance also has the ‖e‖² term."
            if torch.equal(got.long(), by_dot)
            else " Did you take argmax instead of argmin, or the wrong dimension?"
        )
        raise AssertionError(f"{wrong:.0%} of the codes differ from argmin_j ‖z − e_j‖.{hint}")
    print("quantize: all 50 codes match argmin_j ‖z − e_j‖. Well done!")


@exercise
def check_gumbel_softmax(fn) -> None:
    """Check a student's `fn(logits, tau, generator) -> y` (soft Gumbel-softmax sample)."""
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0]])
    y = fn(logits, 1.0, torch.Generator().manual_seed(0))
    assert isinstance(y, torch.Tensor) and y.shape == logits.shape, (
        f"return a tensor shaped like logits {tuple(logits.shape)}; got "
        f"{getattr(y, 'shape', type(y))}"
    )
    total = y.sum(-1)
    assert torch.allclose(total, torch.ones(1), atol=1e-4), (
        f"each row must sum to 1 (a softmax); got {total.item():.4f}"
    )
    assert (y >= 0).all(), "probabilities cannot be negative"
    # The sampled class frequencies must follow softmax(logits) (the Gumbel-max trick).
    g = torch.Generator().manual_seed(1)
    many = fn(logits.expand(4000, 4), 0.05, g)
    freq = F.one_hot(many.argmax(-1), 4).float().mean(0)
    p = logits.softmax(-1)[0]
    rel = ((freq - p).abs() / p).max().item()
    assert rel < 0.25, (
        f"argmax of your samples should follow softmax(logits) = {p.numpy().round(3)}; got "
        f"frequencies {freq.numpy().round(3)} (largest relative error {rel:.2f}). Check the "
        "noise: g = -log(-log(u)) with u ~ U(0, 1), added to the logits before dividing by τ."
    )
    sharp = fn(logits.expand(500, 4), 0.05, torch.Generator().manual_seed(2)).max(-1).values
    soft = fn(logits.expand(500, 4), 5.0, torch.Generator().manual_seed(2)).max(-1).values
    assert sharp.mean() > 0.9 > soft.mean(), (
        f"small τ should give nearly one-hot samples and large τ smooth ones; mean largest "
        f"entry {sharp.mean():.2f} at τ=0.05 and {soft.mean():.2f} at τ=5. Divide by τ."
    )
    print(f"gumbel_softmax: frequencies match softmax(logits) (max relative error {rel:.2f}).")
