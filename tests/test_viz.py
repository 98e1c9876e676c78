"""The plotting helpers return figures and refuse what they cannot draw."""

import numpy as np
import pytest
import torch

from minimodels import shapeworld as sw
from minimodels import viz
from minimodels.data.images import to_tensor


def test_viz_functions_return_figures():
    import matplotlib

    matplotlib.use("Agg")
    images, scenes = sw.generate("train", 5, seed=0)
    fig = viz.show_images(images, [s["caption"] for s in scenes], ncols=3)
    assert len(fig.axes) == 6
    fig = viz.show_images(to_tensor(images, (-1, 1)))
    assert len(fig.axes) == 5
    assert viz.heatmap(torch.eye(3), list("abc"), list("xyz")).axes
    assert viz.loss_curve([3.0, 2.0, 1.0]).axes
    with pytest.raises(ValueError, match="captions"):
        viz.show_images(images, ["one caption"])
    with pytest.raises(ValueError, match="2-d"):
        viz.heatmap(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        viz.show_images(np.full((1, 8, 8, 3), np.nan))


def test_glue_writes_what_myst_nb_reads(monkeypatch):
    shown = []
    monkeypatch.setattr(viz, "display", lambda data, **kw: shown.append((data, kw)))
    viz.glue("acc", 0.875)
    ((data, kw),) = shown
    assert data == {"application/papermill.record/text/plain": "0.875"}
    assert kw["raw"] is True
    assert kw["metadata"]["scrapbook"] == {"name": "acc", "mime_prefix": viz.GLUE_PREFIX}
    with pytest.raises(TypeError, match="name"):
        viz.glue("", 1.0)


def test_glue_matches_myst_nb(monkeypatch):
    glue_module = pytest.importorskip("myst_nb.ext.glue")
    ours, theirs = [], []
    monkeypatch.setattr(viz, "display", lambda data, **kw: ours.append((data, kw["metadata"])))
    monkeypatch.setattr(
        glue_module, "ipy_display", lambda data, **kw: theirs.append((data, kw["metadata"]))
    )
    for value in (0.875, 3, "1/16"):
        viz.glue("x", value)
        glue_module.glue("x", value, display=False)
    assert ours == theirs


def test_check_claims_notes_a_false_claim_and_fails_it_when_strict(capsys, monkeypatch):
    monkeypatch.delenv(viz.CLAIMS_ENV, raising=False)
    assert viz.check_claims({"two is even": 2 % 2 == 0, "three is even": 3 % 2 == 0}) is None
    out = capsys.readouterr().out
    assert "no longer holds here: three is even" in out and "two is even" not in out
    monkeypatch.setenv(viz.CLAIMS_ENV, "strict")
    viz.check_claims({"two is even": True})
    assert capsys.readouterr().out == ""
    with pytest.raises(AssertionError, match="three is even"):
        viz.check_claims({"three is even": False})
    with pytest.raises(TypeError, match="non-empty dict"):
        viz.check_claims({})
