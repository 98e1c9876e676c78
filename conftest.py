"""pytest's hooks for the whole checkout: each notebook's exercises are tested both ways.

``pytest notebooks --nbval-lax`` (in ``make test``) runs each student notebook top to bottom, as
a student meets it: every exercise is a stub, its check says "not done yet", the hidden
wrong-answer cells show that each check rejects a wrong answer, and the notebook runs on. This
file appends to each notebook, run in the same kernel after its last cell, the solutions of the
instructors' edition (rendered from ``lectures_src/``), each followed by its check, with
``MINIMODELS_EXERCISES=require`` so that a stub would fail there. One kernel per notebook does
both, so the notebooks are not executed twice.

Between the two, a cell checks the notebook's budget: the CPU time its kernel has used so far
(``time.process_time()``, the student notebook from kernel start to its last cell) must stay
under ``CPU_BUDGET_S`` seconds (``$MINIMODELS_NOTEBOOK_BUDGET`` overrides it), so a change that
makes a notebook slow fails ``make test`` instead of a student's patience.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
NOTEBOOKS = ROOT / "notebooks"
sys.path.insert(0, str(ROOT / "tools"))
from nbrun import CPU_BUDGET_S  # noqa: E402  about a minute of wall time on 2 cores, and room

BUDGET_ENV = "MINIMODELS_NOTEBOOK_BUDGET"


def budget_cell(name: str, budget: float | None = None):
    """A code cell that fails when the kernel has used more than `budget` s of CPU."""
    from nbformat.v4 import new_code_cell

    budget = float(os.environ.get(BUDGET_ENV, CPU_BUDGET_S)) if budget is None else budget
    return new_code_cell(
        "import time as _time\n"
        f"_cpu = _time.process_time()  # this kernel's CPU seconds, all threads\n"
        f"print(f'{name}: {{_cpu:.1f}} s of CPU (budget {budget:g} s)')\n"
        f"assert _cpu <= {budget!r}, (\n"
        f"    f'{name} used {{_cpu:.1f}} s of CPU, over its budget of {budget:g} s: make it '\n"
        f"    'faster (fewer steps, smaller n) or ship the training as weights')"
    )


def instructor_cells(notebook: Path) -> list:
    """The cells that prove a notebook's solutions: a cell that makes stubs fail their checks,
    then each solution cell of the instructors' edition followed by its check cell."""
    import coursebook
    import nbformat
    from nbformat.v4 import new_code_cell

    from minimodels.exercises import REQUIRE_ENV

    source = ROOT / coursebook.SOURCES / f"{notebook.stem}.md"
    text = coursebook.render(source, coursebook.repo_url(ROOT), coursebook.INSTRUCTOR)
    code = [c for c in nbformat.reads(text, as_version=4).cells if c.cell_type == "code"]
    cells = [new_code_cell(f"import os\nos.environ[{REQUIRE_ENV!r}] = 'require'")]
    for i, cell in enumerate(code):
        if coursebook.SOLUTION_TAG in cell.metadata.get("tags", []):
            check = next(c for c in code[i + 1 :] if "check" in c.metadata.get("tags", []))
            cells += [cell, check]
    return cells


@pytest.hookimpl(hookwrapper=True)
def pytest_collect_file(file_path, parent):
    outcome = yield
    if file_path.suffix != ".ipynb" or file_path.parent != NOTEBOOKS:
        return
    from nbval.plugin import IPyNbFile

    collectors = outcome.get_result()
    if collectors:
        outcome.force_result(
            [
                WithSolutions.from_parent(parent, path=file_path) if type(c) is IPyNbFile else c
                for c in collectors
            ]
        )


def _with_solutions_class():
    from nbval.plugin import IPyNbCell, IPyNbFile

    class WithSolutions(IPyNbFile):
        """nbval's notebook, then its solutions and their checks (see the module docstring)."""

        def collect(self):
            cells = list(super().collect())
            yield from cells
            yield IPyNbCell.from_parent(
                self, name=f"Cell {len(cells)} (CPU budget)", cell_num=len(cells),
                cell=budget_cell(Path(self.path).stem), options=defaultdict(bool, check=False),
            )  # fmt: skip
            cells.append(None)  # the budget cell's number is taken
            for k, cell in enumerate(instructor_cells(Path(self.path))):
                options = defaultdict(bool, check=False)  # run it; outputs are not compared
                name = f"Cell {len(cells) + k} (instructors' edition)"
                yield IPyNbCell.from_parent(
                    self, name=name, cell_num=len(cells) + k, cell=cell, options=options
                )

    return WithSolutions


try:
    WithSolutions = _with_solutions_class()
except ImportError:  # nbval is not installed: there are no notebook tests to extend
    WithSolutions = None
