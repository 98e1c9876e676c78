"""The notebooks' CPU budget: a cell after each notebook's last cell fails it when its kernel
has used more CPU than the budget (the root conftest.py adds it while nbval runs)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
root_conftest = importlib.util.module_from_spec(spec)
spec.loader.exec_module(root_conftest)


def run_cell(cell) -> str:
    """Run a cell's source as a kernel would (fresh namespace); returns what it printed."""
    code = compile(cell.source, "<budget cell>", "exec")
    out = []
    exec(code, {"print": lambda *a: out.append(" ".join(map(str, a)))})
    return "\n".join(out)


def test_the_budget_cell_passes_under_the_budget_and_prints_the_cpu_time():
    printed = run_cell(root_conftest.budget_cell("05_ddpm", budget=1e9))
    assert printed.startswith("05_ddpm: ") and "s of CPU (budget 1e+09 s)" in printed


def test_the_budget_cell_fails_a_notebook_over_its_budget_and_says_by_how_much():
    with pytest.raises(
        AssertionError, match=r"05_ddpm used [\d.]+ s of CPU, over its budget of 0 s"
    ):
        run_cell(root_conftest.budget_cell("05_ddpm", budget=0.0))


def test_the_budget_comes_from_the_environment_when_set(monkeypatch):
    monkeypatch.setenv(root_conftest.BUDGET_ENV, "7.5")
    assert "<= 7.5" in root_conftest.budget_cell("x").source
    monkeypatch.delenv(root_conftest.BUDGET_ENV)
    assert f"<= {root_conftest.CPU_BUDGET_S!r}" in root_conftest.budget_cell("x").source


def test_every_notebook_gets_its_budget_cell_after_its_own_cells_and_before_the_solutions():
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-o", "addopts=", "notebooks",
         "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    ids = [line for line in res.stdout.splitlines() if ".ipynb::" in line]
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    for nb in notebooks:
        cells = [i.split("::", 1)[1] for i in ids if i.startswith(f"notebooks/{nb.name}::")]
        budget = [k for k, name in enumerate(cells) if name.endswith("(CPU budget)")]
        assert len(budget) == 1, f"{nb.name}: {len(budget)} budget cells"
        before, after = cells[: budget[0]], cells[budget[0] + 1 :]
        assert before and all(not c.endswith(")") for c in before), nb.name  # its own cells
        assert all(c.endswith("(instructors' edition)") for c in after), nb.name
