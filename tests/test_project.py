"""Checks of the project's own rules: installs, generated notebooks, the book's sources."""

import re
import sys
from pathlib import Path

import coursebook
import jupytext
import nbformat
import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
SOURCES = coursebook.sources(ROOT)


def dist_name(requirement: str) -> str:
    """The normalised distribution name of a requirement such as ``torch>=2.1``."""
    return re.split(r"[\s\[<>=!~;@]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_installs_the_package_with_its_extras():
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = [line for d in env["dependencies"] if isinstance(d, dict) for line in d["pip"]]

    # pip installs this package, editable, with exactly the extras `make` installs
    assert pip == ["-e .[book,test]"], f"environment.yml's pip section is {pip}"
    assert {"book", "test"} <= set(PYPROJECT["optional-dependencies"])

    # conda adds python and pip, and otherwise nothing the package does not depend on
    python = next(d for d in conda if dist_name(d) == "python")
    assert python.removeprefix("python") == PYPROJECT["requires-python"]
    allowed = {dist_name(r) for r in PYPROJECT["dependencies"]} | {"python", "pip"}
    extra = {dist_name(d) for d in conda} - allowed
    assert not extra, f"environment.yml installs {extra}, which pyproject.toml does not name"


def test_pyproject_has_no_exact_pins():
    requirements = PYPROJECT["dependencies"] + [
        r for extra in PYPROJECT["optional-dependencies"].values() for r in extra
    ]
    pinned = [r for r in requirements if "==" in r]
    assert not pinned, f"pin-free ranges only (students install next to Colab's): {pinned}"


def test_every_source_has_an_up_to_date_notebook():
    problems = coursebook.out_of_date(ROOT)
    assert not problems, "run `make notebooks`:\n" + "\n".join(problems)


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_first_code_cell_is_the_colab_cell(source):
    nb = jupytext.reads(source.read_text(encoding="utf-8"), fmt="md:myst")
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert code, f"{source.name} has no code cell"
    cell = code[0]
    assert coursebook.PLACEHOLDER in cell and "colab" in cell.lower(), (
        f"the first code cell of {source.name} must install minimodels on Colab only, "
        f"from {coursebook.PLACEHOLDER}; it is:\n{cell}"
    )


@pytest.mark.parametrize(
    "notebook", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name
)
def test_notebook_has_no_outputs(notebook):
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{notebook.name} holds outputs: notebooks are generated without them"
            )


def test_toc_lists_every_notebook_and_existing_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]] + [
        chapter["file"] for part in toc["parts"] for chapter in part["chapters"]
    ]
    missing = [f for f in files if not list(ROOT.glob(f"{f}.*"))]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"
    notebooks = {f"notebooks/{s.stem}" for s in SOURCES}
    assert notebooks <= set(files), f"not in _toc.yml: {sorted(notebooks - set(files))}"
