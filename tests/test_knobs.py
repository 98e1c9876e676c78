"""The knobs a student turns: the live-training cells of notebooks 02, 03, 05 and 07, run with
another seed and half the steps, and the student notebook must still run top to bottom.

The notebooks promise that students can change things. An assert that holds only for the
shipped setting would greet a student who changes a seed with an AssertionError in a teaching
cell; here each notebook is rendered from its source with its knobs turned and executed.
"""

from __future__ import annotations

from pathlib import Path

import coursebook
import nbformat
import pytest
from nbrun import Client

from minimodels.viz import CLAIMS_ENV

ROOT = Path(__file__).resolve().parents[1]

# notebook -> (what its source says, what a student might change it to): another seed, half
# the steps. A replacement that is no longer in the source fails the test: keep this in step.
KNOBS = {
    "02_clip": [
        (
            "train_clip(steps=120, batch_size=64, seed=0,",
            "train_clip(steps=60, batch_size=64, seed=1,",
        ),
    ],
    "03_vilbert": [
        (
            "train_vilbert(steps=150, vqa_steps=0, batch_size=32, seed=0,",
            "train_vilbert(steps=75, vqa_steps=0, batch_size=32, seed=1,",
        ),
    ],
    "05_ddpm": [
        (
            "torch.manual_seed(0)\nsmall = UNet2DModel(",
            "torch.manual_seed(1)\nsmall = UNet2DModel(",
        ),
        (
            "lambda step: training_batch(step, batch_size=16), steps=120,",
            "lambda step: training_batch(step + 10**5, batch_size=16), steps=60,",
        ),
        (
            "torch.manual_seed(0)\ngan = ConditionalGAN()",
            "torch.manual_seed(1)\ngan = ConditionalGAN()",
        ),
        (
            "train_gan(gan, **NOTEBOOK_GAN, progress=False)",
            'train_gan(gan, steps=NOTEBOOK_GAN["steps"] // 2, '
            'batch_size=NOTEBOOK_GAN["batch_size"], seed=1, progress=False)',
        ),
    ],
    "07_llava": [
        (
            "instructions.stage1_data, seed=5),\n              steps=40,",
            "instructions.stage1_data, seed=6),\n              steps=20,",
        ),
    ],
}


def turned(name: str, tmp_path: Path) -> Path:
    """The source of notebook `name` with its knobs turned, written under tmp_path."""
    text = (ROOT / coursebook.SOURCES / f"{name}.md").read_text(encoding="utf-8")
    for old, new in KNOBS[name]:
        assert text.count(old) == 1, f"{name}: the knob {old!r} is not in the source once"
        text = text.replace(old, new)
    source = tmp_path / coursebook.SOURCES / f"{name}.md"
    source.parent.mkdir(parents=True)
    source.write_text(text, encoding="utf-8")
    return source


@pytest.mark.parametrize("name", sorted(KNOBS))
def test_the_notebook_runs_with_another_seed_and_half_the_steps(name, tmp_path, monkeypatch):
    monkeypatch.delenv(CLAIMS_ENV, raising=False)  # as a student runs it: claims print notes
    source = turned(name, tmp_path)
    nb = nbformat.reads(coursebook.render(source, coursebook.repo_url(ROOT)), as_version=4)
    client = Client(  # nbclient's, without its stall after widget cells (tools/nbrun.py)
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on a failure
