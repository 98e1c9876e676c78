"""The book as a course: exercises and their editions, slides, and the lecture map's coverage."""

import json
import re
from pathlib import Path

import coursebook
import jupytext
import pytest

from minimodels.exercises import expect_failure

ROOT = Path(__file__).resolve().parents[1]
SOURCES = coursebook.sources(ROOT)
LECTURE_MAP = (ROOT / "book" / "lecture_map.md").read_text(encoding="utf-8")


def cells(source: Path):
    return jupytext.reads(source.read_text(encoding="utf-8"), fmt="md:myst").cells


def tags(cell) -> list[str]:
    return list(cell.metadata.get("tags", []))


# ---------------------------------------------------------------------------- exercises


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_each_notebook_has_two_to_four_exercises_each_with_a_check(source):
    code = [c for c in cells(source) if c.cell_type == "code"]
    solutions = [i for i, c in enumerate(code) if "solution" in tags(c)]
    assert 2 <= len(solutions) <= 4, (
        f"{source.name}: {len(solutions)} exercises (cells tagged solution); expected 2 to 4"
    )
    for i in solutions:
        assert "# SOLUTION: " in code[i].source, (
            f"{source.name}: a solution cell lacks `# SOLUTION: hint`"
        )
        following = code[i + 1 : i + 3]
        assert any("check" in tags(c) for c in following), (
            f"{source.name}: the solution cell {code[i].source.splitlines()[0]!r} is not "
            "followed by a cell tagged check"
        )
    for c in code:
        if "# SOLUTION" in c.source:
            assert "solution" in tags(c), f"{source.name}: # SOLUTION in a cell not tagged so"


def _solution_lines(code: str) -> list[str]:
    """The lines of a solution cell that the stub replaces (each solution's body)."""
    kept = set(coursebook.stub(code).splitlines())
    return [line for line in code.splitlines() if line.strip() and line not in kept]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_the_student_notebook_holds_stubs_not_solutions(source):
    """notebooks/ (what Colab opens) is the student edition: each exercise keeps its signature
    and docstring and raises NotImplementedError with a hint; no line of a solution is there."""
    notebook = json.loads((ROOT / "notebooks" / f"{source.stem}.ipynb").read_text("utf-8"))
    student = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    code = [c for c in cells(source) if c.cell_type == "code"]
    assert len(student) == len(code)
    for mine, theirs in zip(student, code):
        text = "".join(mine["source"])
        if "solution" not in tags(theirs):
            assert text == theirs.source.replace(coursebook.PLACEHOLDER, coursebook.repo_url(ROOT))
            continue
        assert "raise NotImplementedError(" in text and "# YOUR CODE HERE" in text
        assert "SOLUTION" not in text
        assert re.search(r'^\s+"""', text, flags=re.M), f"{source.name}: a stub with no docstring"
        body = _solution_lines(theirs.source)
        assert body, f"{source.name}: the stub of {text.splitlines()[0]!r} replaced nothing"
        leaked = [line for line in body if line in text.splitlines()]
        assert not leaked, f"{source.name}: solution lines in the student notebook: {leaked}"
        compile(text, source.name, "exec")  # the stub is valid Python


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_each_check_says_not_done_yet_to_a_stub(source):
    """A check cell's checks are wrapped in minimodels.exercises.exercise: on a stub they print
    a hint instead of raising, so that the untouched student notebook runs on."""
    import minimodels.exercises as exercises

    for check in [c for c in cells(source) if c.cell_type == "code" and "check" in tags(c)]:
        called = re.findall(r"^(check_\w+)\(", check.source, flags=re.M)
        assert called, f"{source.name}: a check cell that calls no check_...(answer)"
        for name in called:
            decorated = re.search(rf"^@exercise\ndef {name}\(", check.source, flags=re.M)
            imported = hasattr(getattr(exercises, name, None), "__wrapped__")
            assert decorated or imported, (
                f"{source.name}: {name} is not wrapped in @exercise: on a stub it would raise"
            )


def test_stub_keeps_signature_docstring_and_the_rest_of_the_cell():
    code = (
        "helper = 3\n\n\n"
        "class Twice:\n"
        '    """Doubles."""\n\n'
        "    def __init__(self):\n"
        "        # SOLUTION: remember\n"
        "        # the factor\n"
        "        self.k = 2\n\n"
        "    def __call__(self, x):\n"
        '        """x -> 2 x."""\n'
        "        # SOLUTION: multiply\n"
        "        y = self.k * x\n\n"
        "        return y\n\n\n"
        "after = 1"
    )
    assert coursebook.stub(code) == (
        "helper = 3\n\n\n"
        "class Twice:\n"
        '    """Doubles."""\n\n'
        "    def __init__(self):\n"
        "        # YOUR CODE HERE\n"
        '        raise NotImplementedError("remember the factor")\n\n'
        "    def __call__(self, x):\n"
        '        """x -> 2 x."""\n'
        "        # YOUR CODE HERE\n"
        '        raise NotImplementedError("multiply")\n\n\n'
        "after = 1"
    )
    long_hint = "word " * 40
    stubbed = coursebook.stub(f"def f():\n    # SOLUTION: {long_hint}\n    return 1")
    assert max(len(line) for line in stubbed.splitlines()) <= coursebook.STUB_WIDTH
    namespace: dict = {}
    exec(stubbed, namespace)
    with pytest.raises(NotImplementedError) as err:
        namespace["f"]()
    assert str(err.value) == long_hint.strip()
    with pytest.raises(ValueError, match="inside a function"):
        coursebook.stub("# SOLUTION: at the top\nx = 1")
    with pytest.raises(ValueError, match="hint"):
        coursebook.stub("def f():\n    # SOLUTION\n    return 1")


TESTS_TEXT = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").glob("test_*.py"))


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_each_check_is_shown_to_reject_a_wrong_answer(source):
    """Every check is tried on a wrong answer: by a hidden cell tagged wrong-answer that calls
    expect_failure(check_..., wrong), or by a test in tests/ that runs the check (by its name,
    or by executing the notebook source's check cells)."""
    code = [c for c in cells(source) if c.cell_type == "code"]
    checks = [c for c in code if "check" in tags(c)]
    wrong = "\n".join(c.source for c in code if "wrong-answer" in tags(c))
    for c in code:
        if "wrong-answer" in tags(c):
            assert "remove-cell" in tags(c), f"{source.name}: wrong-answer cells are hidden"
    source_tested = re.search(rf"{re.escape(source.name)}", TESTS_TEXT) is not None
    for check in checks:
        names = set(re.findall(r"^(check_\w+)\(", check.source, flags=re.M))
        for name in names:
            in_cell = re.search(rf"expect_failure\(\s*(?:\w+\.)?{name}\b", wrong)
            in_tests = re.search(rf"\b{name}\b", TESTS_TEXT)
            assert in_cell or in_tests or source_tested, (
                f"{source.name}: nothing tries {name} on a wrong answer (a hidden wrong-answer "
                "cell with expect_failure, or a test in tests/)"
            )


def test_expect_failure_needs_an_assertion_with_a_message():
    def check(fn):
        assert fn(2) == 4, "double the input"

    assert expect_failure(check, lambda x: x).startswith("double the input")
    with pytest.raises(AssertionError, match="accepted a wrong answer"):
        expect_failure(check, lambda x: 2 * x)
    with pytest.raises(AssertionError, match="TypeError"):
        expect_failure(check, lambda: 0)  # the check crashes instead of explaining
    with pytest.raises(TypeError, match="check must be callable"):
        expect_failure("check", lambda x: x)


def test_the_instructors_edition_labels_each_solution():
    source = next(s for s in SOURCES if s.stem.startswith("00"))
    nb = json.loads(coursebook.render(source, "https://example.org/repo", coursebook.INSTRUCTOR))
    shown = coursebook.edition(nb)
    solutions = [i for i, c in enumerate(shown["cells"]) if "solution" in tags_of(c)]
    assert solutions and all(shown["cells"][i - 1]["source"] == coursebook.INSTRUCTOR_NOTE
                             for i in solutions)  # fmt: skip
    assert all("# SOLUTION: " in "".join(shown["cells"][i]["source"]) for i in solutions)
    assert len({c["id"] for c in shown["cells"]}) == len(shown["cells"])
    code = [c["source"] for c in shown["cells"] if c["cell_type"] == "code"]
    assert code == [c["source"] for c in nb["cells"] if c["cell_type"] == "code"]
    note = coursebook.INSTRUCTOR_NOTE  # a MyST directive with no body is an error in the build
    body = [line for line in note.splitlines()[1:-1] if not line.startswith(":")]
    assert note.endswith(":::") and any(line.strip() for line in body), note
    with pytest.raises(ValueError, match="edition"):
        coursebook.render(source, "https://example.org/repo", "teacher")


def tags_of(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def test_the_edition_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(coursebook.SOLUTIONS_ENV, raising=False)
    assert not coursebook.solutions_shown()
    monkeypatch.setenv(coursebook.SOLUTIONS_ENV, "show")
    assert coursebook.solutions_shown()
    makefile = (ROOT / "Makefile").read_text()
    assert "book-instructor" in makefile and coursebook.SOLUTIONS_ENV in makefile
    # the instructors' notebooks are written elsewhere, with the solutions
    coursebook.sync(ROOT, coursebook.INSTRUCTOR, tmp_path)
    written = sorted(p.name for p in tmp_path.glob("*.ipynb"))
    assert written == sorted(f"{s.stem}.ipynb" for s in SOURCES)
    assert all("# SOLUTION: " in p.read_text("utf-8") for p in tmp_path.glob("*.ipynb"))


# ---------------------------------------------------------------------------- slides


def test_slides_start_at_headings_and_skip_the_colab_cell():
    source = SOURCES[0]
    nb = json.loads(coursebook.render(source, "https://example.org/repo"))
    kinds = [c["metadata"]["slideshow"]["slide_type"] for c in coursebook.slide_types(nb)["cells"]]
    assert len(kinds) == len(nb["cells"])
    first_code = next(i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code")
    assert kinds[first_code] == "skip"
    for cell, kind in zip(nb["cells"], kinds):
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and re.match(r"#{1,2} ", text):
            assert kind == "slide"
    assert set(kinds) <= {"slide", "subslide", "-", "skip", "fragment"}
    # no slide runs on for more than MAX_CELLS_PER_SLIDE cells without a break
    run = 0
    for kind in kinds:
        run = 1 if kind in ("slide", "subslide") else run + (kind != "skip")
        assert run <= coursebook.MAX_CELLS_PER_SLIDE
    # metadata written in a source wins
    nb["cells"][-1]["metadata"]["slideshow"] = {"slide_type": "fragment"}
    assert (
        coursebook.slide_types(nb)["cells"][-1]["metadata"]["slideshow"]["slide_type"] == "fragment"
    )


def test_slides_write_out_citations_and_drop_myst_targets():
    bib = coursebook.read_bibliography(ROOT / coursebook.BIBLIOGRAPHY)
    assert bib["vaswani2017attention"] == "Vaswani et al., 2017"
    text = "(clip-loss)=\n## The loss\nSee {cite:p}`vaswani2017attention,devlin2019bert`."
    assert coursebook.myst_for_slides(text, bib) == (
        "## The loss\nSee (Vaswani et al., 2017; Devlin et al., 2019)."
    )
    assert coursebook.myst_for_slides("{ref}`the map <lecture-map>`", bib) == "the map"
    for source in SOURCES:
        nb = json.loads(coursebook.render(source, "https://example.org/repo"))
        for cell in nb["cells"]:
            if cell["cell_type"] != "markdown":
                continue
            out = coursebook.myst_for_slides("".join(cell["source"]), bib)
            assert "{cite" not in out and not re.search(r"^\([\w-]+\)=", out, re.M), source
            # every cited key is in the bibliography (else the raw key would show)
            for keys in re.findall(r"\{cite:p\}`([^`]*)`", "".join(cell["source"])):
                assert {k.strip() for k in keys.split(",")} <= set(bib), (source, keys)


# ---------------------------------------------------------------------------- lecture map


def labels(source: Path) -> set[str]:
    return set(re.findall(r"^\(([\w-]+)\)=\s*$", source.read_text(encoding="utf-8"), re.M))


ALL_LABELS = {label: source.stem for source in SOURCES for label in labels(source)}
ROWS = [
    line
    for line in LECTURE_MAP.splitlines()
    if line.startswith("| ") and line.count("|") == 4 and not line.startswith("| concept")
]


def test_lecture_map_rows_cover_every_notebook_of_the_course():
    # the concepts of ../shared/LECTURE_MAP.md, notebook by notebook (the book words them)
    expected = {
        "00": 1, "01": 2, "02": 5, "03": 6, "04": 3, "05": 6, "06": 6, "07": 6, "08": 6, "09": 3,
        "10": 1, "02b": 4,
    }  # fmt: skip
    found = {}
    for row in ROWS:
        where = row.split("|")[3]
        number = re.search(r"notebook (\d\d)|{ref}`([a-z]+)-", where)
        assert number, f"lecture map row without a notebook: {row}"
        key = number.group(1) or {
            "shapeworld": "00", "attention": "01", "clip": "02", "contrastive": "02b",
            "vilbert": "03", "dalle": "04",
            "ddpm": "05", "cond": "06", "llava": "07", "compose": "08", "capstone": "09",
            "real": "10",
        }.get(number.group(2))  # fmt: skip
        if key is None:  # a label of another prefix: take the notebook that defines it
            label = re.search(r"{ref}`([\w-]+)`", where).group(1)
            key = ALL_LABELS.get(label, "??")[:2]
        found[key] = found.get(key, 0) + 1
    assert found == expected, f"rows per notebook: {found}, expected {expected}"


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.split("|")[1].strip()[:40])
def test_each_lecture_map_row_links_to_a_section_that_exists(row):
    where = row.split("|")[3]
    refs = re.findall(r"{ref}`(?:[^`<]*<)?([\w-]+)>?`", where)
    if "coming in notebook" in where:
        number = re.search(r"notebook (\d\d)", where).group(1)
        have = [s.stem for s in SOURCES if s.stem.startswith(number)]
        assert not have, f"notebook {have} exists: link this row to its section with {{ref}}"
        return
    assert refs, f"the row should link to a notebook section with {{ref}}: {row}"
    for ref in refs:
        assert ref in ALL_LABELS, f"no section labelled ({ref})= in lectures_src/: {row}"


# ---------------------------------------------------------------------------- run time


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_each_opening_says_how_long_the_notebook_runs_from_the_measured_table(source):
    opening = source.read_text(encoding="utf-8").split("```{code-cell}")[0]
    assert coursebook.RUNTIME in opening, (
        f"{source.name}: say how long the notebook runs with {coursebook.RUNTIME} in its opening"
    )
    phrase = coursebook.runtime_phrase(source)
    assert "not measured" not in phrase, f"{source.name} is not in {coursebook.RUNTIMES}"
    notebook = (ROOT / "notebooks" / f"{source.stem}.ipynb").read_text(encoding="utf-8")
    assert coursebook.RUNTIME not in notebook and phrase in notebook


@pytest.mark.parametrize(
    "seconds, words",
    [(14.0, "about 15 seconds"), (41.2, "about 40 seconds"), (66.8, "about a minute"),
     (80.9, "about a minute and a half"), (150.0, "about 2.5 minutes")],
)  # fmt: skip
def test_runtime_phrase_rounds_the_median(tmp_path, seconds, words):
    (tmp_path / "book" / "generated").mkdir(parents=True)
    (tmp_path / "lectures_src").mkdir()
    table = {"notebooks": {"07_x": {"median_s": seconds}}}
    (tmp_path / coursebook.RUNTIMES).write_text(json.dumps(table), encoding="utf-8")
    assert coursebook.runtime_phrase(tmp_path / "lectures_src" / "07_x.md").startswith(words)
    assert "not measured" in coursebook.runtime_phrase(tmp_path / "lectures_src" / "08_y.md")


# ---------------------------------------------------------------------------- figures


def test_figures_in_the_prose_are_glued_not_typed():
    """A figure the prose states comes from the page (myst-nb glue); at most 20 are typed in
    (quoted from a paper, or arithmetic such as log₂ 30 ≈ 4.9)."""
    typed = {s.name: coursebook.typed_figures(s) for s in SOURCES}
    assert sum(map(len, typed.values())) <= 20, typed
    glued = [s.name for s in SOURCES if coursebook.glue_count(s) > 0]
    assert len(glued) > len(SOURCES) / 2, f"glue is used in {glued} only"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_every_glued_figure_in_the_prose_is_glued_on_its_page(source):
    # the structural build does not execute notebooks, so only `make book` would find a
    # {glue:text}`name` with no glue("name", ...) on the page: find it here
    text = source.read_text(encoding="utf-8")
    used = set(re.findall(r"\{glue:\w+\}`([\w]+)", text))
    names = re.findall(r"glue\(\s*(f?)([\"'])(.+?)\2", text)
    literal = {name for f, _, name in names if not f}
    patterns = [
        re.compile(re.sub(r"\\\{.*?\\\}", r"\\w+", re.escape(name)) + "$")
        for f, _, name in names
        if f
    ]  # f"{key}_x" -> r"\w+_x"
    if re.search(r"glue\(\s*[a-z_]\w*\s*,", text):  # glue(name, value) in a loop over names
        literal |= set(re.findall(r"[\"'](\w+)[\"']", text))
    missing = sorted(u for u in used - literal if not any(p.match(u) for p in patterns))
    assert not missing, f"{source.name}: glued in the prose, never glued in a cell: {missing}"


def test_typed_figures_skip_maths_code_glue_and_links(tmp_path):
    source = tmp_path / "99_x.md"
    source.write_text(
        "# Title\n\nIt reached 0.93 and 85 % of the time, or {glue:text}`acc:.2f`; "
        "$x = 0.5$, `lr=2e-3 0.1`, [paper](https://arxiv.org/abs/2210.01936), LLaVA-1.5.\n\n"
        "```{code-cell} ipython3\nprint(0.25)\n```\n",
        encoding="utf-8",
    )
    found = coursebook.typed_figures(source)
    assert [f.split()[0] for f in found] == ["0.93", "85"], found
    assert coursebook.glue_count(source) == 1


def test_slides_show_glued_values_and_cut_long_cells():
    glued = {"acc": "0.9375", "name": "'circle'", "n": "64"}
    text = "{glue:text}`acc:.2f` of {glue:text}`n` ({glue:text}`missing:.1f`)"
    assert coursebook.myst_for_slides(text, {}, glued) == "0.94 of 64 (…)"
    executed = {
        "cells": [
            {
                "cell_type": "code",
                "source": "glue('acc', 0.9375)",
                "metadata": {},
                "outputs": [
                    {
                        "output_type": "display_data",
                        "data": {coursebook.GLUE_TEXT: "0.9375"},
                        "metadata": {"scrapbook": {"name": "acc", "mime_prefix": "x"}},
                    }
                ],
            }
        ]
    }
    assert coursebook.glued_values(executed) == {"acc": "0.9375"}
    paragraphs = ["\n".join(f"line {p}.{i}" for i in range(6)) for p in range(5)]
    maths = "$$\na\n\nb\n$$"  # never cut inside display maths
    long = {"cell_type": "markdown", "metadata": {}, "source": "\n\n".join([*paragraphs, maths])}
    cut = coursebook.split_long_cells({"cells": [long]})["cells"]
    assert len(cut) > 1 and all(len(c["source"].splitlines()) <= 20 for c in cut)
    assert all(c["metadata"]["slideshow"]["slide_type"] == "subslide" for c in cut[1:])
    assert "$$\na\n\nb\n$$" in cut[-1]["source"]
    assert "\n\n".join(c["source"] for c in cut).split() == long["source"].split()
    long["id"] = "cell-007"
    ids = [c["id"] for c in coursebook.split_long_cells({"cells": [long]})["cells"]]
    assert ids[0] == "cell-007" and len(set(ids)) == len(ids)
    hidden = {"cell_type": "code", "metadata": {"tags": ["remove-cell"]}, "source": "glue()"}
    kinds = coursebook.slide_types({"cells": [long, hidden]})["cells"]
    assert kinds[-1]["metadata"]["slideshow"]["slide_type"] == "skip"


MAX_CELL_LINES = 25  # "a cell a student reads in one look"; helpers go into the package


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_code_cells_a_student_reads_are_short(source):
    """Every code cell is at most MAX_CELL_LINES lines, except the imports cell, the exercises'
    check cells (a student runs them, the hints are their point) and hidden cells."""
    code = [c for c in cells(source) if c.cell_type == "code"]
    long = [
        f"{c.source.splitlines()[0][:50]!r}: {len(c.source.splitlines())} lines"
        for c in code[2:]  # code[0]: the Colab install cell, code[1]: the imports
        if len(c.source.splitlines()) > MAX_CELL_LINES
        and not {"check", "remove-cell"} & set(tags(c))
    ]
    assert not long, f"{source.name}: split these cells or move helpers into the package: {long}"
