"""Tools that build the course book (for the course's authors; not part of the package's API).

The notebooks in ``notebooks/`` are generated from the MyST-markdown sources in ``lectures_src/``
and are never edited by hand. They are the student edition: each exercise's solution is replaced
by a stub (:func:`stub`). The instructors' edition, with the solutions, is generated from the
same sources. This module holds the one conversion that ``make notebooks``, ``make book`` and
``tests/test_project.py`` share::

    python tools/coursebook.py sync               # lectures_src/NN.md -> notebooks/NN.ipynb
    python tools/coursebook.py sync --edition instructor --out DIR   # with the solutions
    python tools/coursebook.py check              # exit 1, listing notebooks that are out of date
    python tools/coursebook.py vendor-js          # copy widget and maths JavaScript from npm
    python tools/coursebook.py structural-config OUT.yml   # _config.yml with execution turned off
    python tools/coursebook.py slides             # reveal.js slides of every notebook
    python tools/coursebook.py figures            # figures typed into the prose, and glued ones

It is also a small Sphinx extension (listed in ``_config.yml``): once that JavaScript has been
vendored, the book's pages load it from ``_static/`` instead of CDNs, so they work offline; and
when the environment variable ``MINIMODELS_BOOK_SOLUTIONS=show`` is set (``make
book-instructor``) it reads each notebook's instructors' edition instead of the student's.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository checkout
SOURCES = "lectures_src"
NOTEBOOKS = "notebooks"
CONFIG = "_config.yml"
PLACEHOLDER = "{{REPO_URL}}"  # replaced by _config.yml's repository.url
RUNTIME = "{{RUNTIME}}"  # replaced by the notebook's measured run time, from RUNTIMES
RUNTIMES = "book/generated/notebook_runtimes.json"  # written by `python tools/bench.py notebooks`
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
# IPython's lexer, so that cells with `!pip` or `%time` highlight without a warning
LANGUAGE_INFO = {"name": "python", "pygments_lexer": "ipython3"}

# The JavaScript a page needs offline, from npm: require.js and html-manager's embed-amd.js show
# the stored state of ipywidgets (html-manager 1.x renders ipywidgets 8), MathJax 3 the maths.
# Not under _static/: Jupyter Book would add every .js file there to every page.
VENDORED = {"requirejs": "2.3.8", "@jupyter-widgets/html-manager": "1.0.15", "mathjax": "3.2.2"}
VENDOR_DIR = "_build/vendor"  # an html_static_path: its widgets/ and mathjax/ land in _static/
MATHJAX_FILES = ("tex-mml-chtml.js", "output/chtml/fonts/woff-v2/", "input/tex/extensions/")
WIDGET_CDN = "https://cdn.jsdelivr.net/npm/"  # still used for third-party widget modules


# --------------------------------------------------------------------------- notebooks


def repo_url(root: Path = ROOT) -> str:
    """The repository URL, kept in one place: ``repository: url:`` in ``_config.yml``."""
    import yaml

    config = yaml.safe_load((root / CONFIG).read_text(encoding="utf-8"))
    return config["repository"]["url"]


# --------------------------------------------------------------------------- exercises

STUDENT, INSTRUCTOR = "student", "instructor"
EDITIONS = (STUDENT, INSTRUCTOR)
SOLUTION_TAG = "solution"
# Inside an exercise's function, a comment `# SOLUTION: a hint` (the hint may go on over the next
# comment lines) starts the solution, which runs to the end of the block it is in: the lines
# indented at least as far. The student edition keeps everything else (the signature and the
# docstring) and replaces the solution by a stub that raises with the hint.
_SOLUTION = re.compile(r"^(?P<indent>[ \t]+)# SOLUTION(?::[ \t]*(?P<hint>.*?))?[ \t]*$")
STUB_WIDTH = 99  # the hint is wrapped to keep the stub's lines within this


def stub(code: str) -> str:
    """The student's version of a solution cell: each solution becomes

        # YOUR CODE HERE
        raise NotImplementedError("the hint")

    at the solution's indentation. Everything else in the cell is kept. Raises ValueError for a
    `# SOLUTION` line at the top level (the cell itself would then raise) or without a hint.
    """
    import textwrap

    def quoted(text: str) -> str:  # a Python string literal in double quotes
        return json.dumps(text, ensure_ascii=False)

    lines, out, i = code.splitlines(), [], 0
    while i < len(lines):
        match = _SOLUTION.match(lines[i])
        if match is None:
            if lines[i].lstrip().startswith("# SOLUTION"):
                raise ValueError(f"a # SOLUTION line must sit inside a function: {lines[i]!r}")
            out.append(lines[i])
            i += 1
            continue
        indent, hint, end = match["indent"], [match["hint"] or ""], i + 1
        while end < len(lines) and lines[end].startswith(indent + "# "):  # the hint goes on
            hint.append(lines[end][len(indent) + 2 :])
            end += 1
        hint = " ".join(h.strip() for h in hint).strip()
        if not hint:
            raise ValueError(f"write a hint after the marker, `# SOLUTION: hint`: {lines[i]!r}")
        while end < len(lines) and (
            not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) >= len(indent)
        ):
            end += 1
        while end > i + 1 and not lines[end - 1].strip():  # blank lines after the block stay
            end -= 1
        out.append(f"{indent}# YOUR CODE HERE")
        if len(f"{indent}raise NotImplementedError({quoted(hint)})") <= STUB_WIDTH:
            out.append(f"{indent}raise NotImplementedError({quoted(hint)})")
        else:
            width = STUB_WIDTH - len(indent) - 7  # four spaces, the quotes, a space
            parts = textwrap.wrap(hint, width, drop_whitespace=False)
            out.append(f"{indent}raise NotImplementedError(")
            out += [f"{indent}    {quoted(part)}" for part in parts]
            out.append(f"{indent})")
        i = end
    return "\n".join(out)


def notebook_path(source: Path, root: Path = ROOT) -> Path:
    return root / NOTEBOOKS / f"{source.stem}.ipynb"


def sources(root: Path = ROOT) -> list[Path]:
    return sorted((root / SOURCES).glob("*.md"))


def runtime_phrase(source: Path) -> str:
    """How long the notebook of `source` takes, in words, from the measured table RUNTIMES (the
    median of three runs on the course's 2-core CPU): 'about 25 seconds on a laptop CPU'."""
    table = source.parent.parent / RUNTIMES
    runs = json.loads(table.read_text(encoding="utf-8"))["notebooks"] if table.is_file() else {}
    if source.stem not in runs:
        return (
            "a minute or two on a laptop CPU (not measured yet: `python tools/bench.py notebooks`)"
        )
    seconds = runs[source.stem]["median_s"]
    if seconds < 55:
        words = f"about {max(5, 5 * round(seconds / 5))} seconds"
    else:
        halves = max(2, round(seconds / 30))  # to the half minute
        minutes = {2: "a minute", 3: "a minute and a half"}.get(halves, f"{halves / 2:g} minutes")
        words = f"about {minutes}"
    return f"{words} on a laptop CPU (measured: the median of three runs on a 2-core CPU)"


def render(source: Path, url: str, edition: str = STUDENT) -> str:
    """The text of the notebook generated from one MyST-markdown source.

    Deterministic: no outputs, cell ids derived from the cell's index, no jupytext version
    stamp, nbformat 4.5. ``{{REPO_URL}}`` is replaced everywhere by ``url``. In the student
    edition (what ``notebooks/`` holds) each exercise's solution is replaced by its stub
    (:func:`stub`); the instructors' edition keeps the source's solutions.
    """
    import jupytext
    import nbformat

    if edition not in EDITIONS:
        raise ValueError(f"edition must be one of {EDITIONS}; got {edition!r}")
    text = source.read_text(encoding="utf-8").replace(PLACEHOLDER, url)
    if RUNTIME in text:
        text = text.replace(RUNTIME, runtime_phrase(source))
    nb = jupytext.reads(text, fmt="md:myst")
    nb.metadata.pop("jupytext", None)  # holds jupytext's version: changes with the tool
    nb.metadata.setdefault("kernelspec", dict(KERNELSPEC))
    nb.metadata.setdefault("language_info", dict(LANGUAGE_INFO))
    nb.nbformat, nb.nbformat_minor = 4, 5
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:03d}"
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            if edition == STUDENT and SOLUTION_TAG in cell.metadata.get("tags", []):
                cell.source = stub(cell.source)
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def _generated(root: Path, edition: str = STUDENT, out: Path | None = None) -> dict:
    """notebook path -> (its source, the text ``sync`` writes there)."""
    url, folder = repo_url(root), out or root / NOTEBOOKS
    return {
        folder / f"{source.stem}.ipynb": (source, render(source, url, edition))
        for source in sources(root)
    }


def _orphans(folder: Path, generated: dict) -> list[Path]:
    return sorted(set(folder.glob("*.ipynb")) - set(generated))


WEIGHTS = "minimodels/weights"
SHIPPED_PAGE = "book/generated/shipped_models.md"  # included by book/shipped_models.md


def _minutes(seconds: float | None) -> str:
    return (
        ""
        if seconds is None
        else f"{seconds / 60:.0f} min"
        if seconds >= 90
        else f"{seconds:.0f} s"
    )


def shipped_models_page(root: Path = ROOT) -> str:
    """The text of SHIPPED_PAGE: for every shipped model, from the JSON beside its weights
    (minimodels/weights/NAME.json), what it is, the command that trained it, what that cost,
    and the notes on how it was tuned (what was tried, what did not work)."""
    rows, sections = [], []
    for meta_path in sorted((root / WEIGHTS).glob("*.json")):
        meta, name = json.loads(meta_path.read_text(encoding="utf-8")), meta_path.stem
        train = meta.get("training", {})
        weights = meta_path.with_suffix(".safetensors")
        size = f"{weights.stat().st_size / 1e6:.2f} MB" if weights.is_file() else ""
        rows.append(
            f"| `{name}` | {meta['architecture']} | {meta['num_parameters']:,} | {size} | "
            f"{train.get('steps', '')} | {_minutes(train.get('cpu_seconds'))} |"
        )
        notes = "\n".join(f"- {note}" for note in meta.get("notes", []))
        command = train.get("command", "")
        sections.append(
            f"(shipped-{name})=\n## `{name}`\n\n"
            + (f"```bash\n{command}\n```\n\n" if command else "")
            + (notes + "\n" if notes else "")
        )
    header = (
        "<!-- Generated by `make notebooks` (tools/coursebook.py) from "
        f"{WEIGHTS}/*.json: do not edit. -->\n\n"
        "| model | architecture | parameters | weights file | steps | CPU time (one thread) |\n"
        "|---|---|--:|--:|--:|--:|\n"
    )
    return header + "\n".join(rows) + "\n\n" + "\n".join(sections)


def out_of_date(root: Path = ROOT) -> list[str]:
    """One line per notebook (or generated page) that ``sync`` would write or delete; empty
    when all are in sync."""
    generated = _generated(root)
    problems = []
    page = root / SHIPPED_PAGE
    if not page.is_file() or page.read_text(encoding="utf-8") != shipped_models_page(root):
        problems.append(f"{SHIPPED_PAGE}: differs from {WEIGHTS}/*.json")
    for target, (source, text) in generated.items():
        rel, src = target.relative_to(root), source.relative_to(root)
        if not target.exists():
            problems.append(f"{rel}: missing (generated from {src})")
        elif json.loads(target.read_text(encoding="utf-8")) != json.loads(text):
            problems.append(f"{rel}: differs from {src}")
    for orphan in _orphans(root / NOTEBOOKS, generated):
        problems.append(f"{orphan.relative_to(root)}: has no source in {SOURCES}/")
    return problems


def sync(root: Path = ROOT, edition: str = STUDENT, out: Path | None = None) -> list[str]:
    """Write every notebook from its source into ``out`` (default ``notebooks/``), delete
    notebooks there without one; report changes. ``notebooks/`` holds the student edition; the
    instructors' edition goes elsewhere (``make book-instructor`` writes it next to its book)."""
    folder = out or root / NOTEBOOKS
    generated = _generated(root, edition, folder)
    folder.mkdir(parents=True, exist_ok=True)
    changes = []
    for target, (_, text) in generated.items():
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8", newline="\n")
            changes.append(f"wrote {target}")
    for orphan in _orphans(folder, generated):
        orphan.unlink()
        changes.append(f"deleted {orphan} (no source in {SOURCES}/)")
    page, text = root / SHIPPED_PAGE, shipped_models_page(root)
    if edition == STUDENT and (not page.is_file() or page.read_text(encoding="utf-8") != text):
        page.write_text(text, encoding="utf-8", newline="\n")
        changes.append(f"wrote {page}")
    return changes


# --------------------------------------------------------------------------- typed figures

# A decimal (0.93, 2.5) or a percentage (85 %) typed into the prose, outside maths, code and glue.
_TYPED = re.compile(r"(?<![\w.\-/])\d+\.\d+(?![\w.])|(?<![\w.])\d+(?:\.\d+)?\s?%")
_NOT_PROSE = [
    re.compile(r"\{glue(?::\w+)?\}`[^`]*`"),  # {glue:text}`name:.2f`
    re.compile(r"`[^`]*`"),  # inline code
    re.compile(r"\$\$.*?\$\$", re.S),  # display maths
    re.compile(r"\$[^$\n]*\$"),  # inline maths
    re.compile(r"\]\([^)]*\)"),  # a link's target
    re.compile(r"[A-Za-z][\w.]*-\d+\.\d+"),  # a versioned name: LLaVA-1.5
]


def typed_figures(source: Path) -> list[str]:
    """The decimals and percentages typed into a source's markdown cells (figures a reader
    would take as measured), each with a little context. Figures put on the page with glue,
    maths, code and links do not count."""
    import jupytext

    found = []
    for cell in jupytext.reads(source.read_text(encoding="utf-8"), fmt="md:myst").cells:
        if cell.cell_type != "markdown":
            continue
        text = cell.source
        for pattern in _NOT_PROSE:
            text = pattern.sub(" ", text)
        for match in _TYPED.finditer(text):
            context = " ".join(text[max(0, match.start() - 40) : match.end() + 25].split())
            found.append(f"{match.group()}  ({context})")
    return found


def glue_count(source: Path) -> int:
    """How many figures a source's prose takes from its cells through {glue} roles."""
    return len(re.findall(r"\{glue(?::\w+)?\}`", source.read_text(encoding="utf-8")))


# --------------------------------------------------------------------------- book config


def structural_config(out: Path, root: Path = ROOT) -> None:
    """Write a copy of ``_config.yml`` that builds the book without executing notebooks."""
    import yaml

    config = yaml.safe_load((root / CONFIG).read_text(encoding="utf-8"))
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    # Unexecuted notebooks hold no glued values: their {glue} references are expected to dangle.
    sphinx_config = config.setdefault("sphinx", {}).setdefault("config", {})
    sphinx_config["suppress_warnings"] = [
        *sphinx_config.get("suppress_warnings", []),
        "mystnb.glue",
    ]
    extensions = config.get("sphinx", {}).get("local_extensions", {})
    for name, path in extensions.items():  # relative to the config file, which moves to `out`
        extensions[name] = str((root / path).resolve())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")


# --------------------------------------------------------------------------- offline JavaScript


def vendor_js(root: Path = ROOT) -> bool:
    """Copy the widget and MathJax JavaScript from npm into VENDOR_DIR, once per version.

    Returns False, leaving the book on the CDN copies, when npm is missing or fails.
    """
    dest = root / VENDOR_DIR
    stamp = dest / "VERSIONS"
    versions = " ".join(f"{name}@{version}" for name, version in VENDORED.items())
    if stamp.exists() and stamp.read_text().strip() == versions:
        print(f"{VENDOR_DIR} already holds {versions}")
        return True
    npm = shutil.which("npm")
    if npm is None:
        print("npm not found: the book will load its widget and maths JavaScript from CDNs")
        return False
    with tempfile.TemporaryDirectory() as tmp:
        specs = [f"{name}@{version}" for name, version in VENDORED.items()]
        cmd = [npm, "pack", "--json", "--pack-destination", tmp, *specs]
        result = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if result.returncode != 0:
            print(f"npm pack failed; the book will use CDNs:\n{result.stderr}")
            return False
        tarball = {e["name"]: Path(tmp) / e["filename"] for e in json.loads(result.stdout)}
        if dest.exists():
            shutil.rmtree(dest)
        with tarfile.open(tarball["requirejs"]) as tar:
            _extract(tar, "package/require.js", dest / "widgets/require.js")
        with tarfile.open(tarball["@jupyter-widgets/html-manager"]) as tar:
            embed = _extract(tar, "package/dist/embed-amd.js", dest / "widgets/embed-amd.js")
            # embed-amd.js is one bundle; the files it loads from its own folder (icon fonts)
            # appear in it as webpack assets: publicPath + "name"
            for name in set(re.findall(r'\.p\+"([\w.-]+)"', embed.read_text(encoding="utf-8"))):
                _extract(tar, f"package/dist/{name}", dest / "widgets" / name)
        with tarfile.open(tarball["mathjax"]) as tar:
            # the component Sphinx loads, its fonts, and the TeX extensions it loads on demand
            for member in tar.getmembers():
                rel = member.name.removeprefix("package/es5/")
                if member.isfile() and rel.startswith(MATHJAX_FILES):
                    _extract(tar, member.name, dest / "mathjax" / rel)
    stamp.write_text(versions + "\n")
    print(f"vendored {versions} into {VENDOR_DIR}")
    return True


def _extract(tar: tarfile.TarFile, member: str, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tar.extractfile(member) as src:
        out.write_bytes(src.read())
    return out


# --------------------------------------------------------------------------- book editions

SOLUTIONS_ENV = "MINIMODELS_BOOK_SOLUTIONS"  # "show": the instructors' edition
INSTRUCTOR_NOTE = (
    ":::{admonition} Solution (instructors' edition)\n:class: tip\nThe cell below is a worked "
    "solution. Students see its stub: the signature, the docstring and `raise "
    "NotImplementedError(hint)`.\n:::"
)  # an admonition needs a body: an empty one is an error in the build


def solutions_shown() -> bool:
    """Whether this build is the instructors' edition (solutions shown)."""
    import os

    return os.environ.get(SOLUTIONS_ENV, "").strip().lower() == "show"


def edition(notebook: dict) -> dict:
    """The instructors' edition of a notebook as the book shows it: a "Solution" label above
    each solution cell. Returns a new notebook dict (the student edition needs no change: its
    stubs are the page)."""
    cells = []
    for cell in notebook["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if cell["cell_type"] == "code" and SOLUTION_TAG in tags:
            cells.append({"cell_type": "markdown", "metadata": {}, "source": INSTRUCTOR_NOTE})
        cells.append(cell)
    return {**notebook, "cells": [{**c, "id": f"ed-{i:03d}"} for i, c in enumerate(cells)]}


def _exercise_edition(app, docname: str, source: list) -> None:
    """Sphinx ``source-read``: in the instructors' build, read each notebook's instructors'
    edition (rendered from its source in lectures_src/) instead of the student's stubs."""
    path = Path(app.env.doc2path(docname))
    if not solutions_shown() or not docname.startswith(NOTEBOOKS + "/") or path.suffix != ".ipynb":
        return
    root = Path(app.srcdir)
    text = render(root / SOURCES / f"{path.stem}.md", repo_url(root), INSTRUCTOR)
    source[0] = json.dumps(edition(json.loads(text)))


def _use_vendored_js(app, config) -> None:
    """Sphinx ``config-inited``: load widget and maths JavaScript from _static/ if vendored."""
    vendor = Path(app.srcdir) / VENDOR_DIR
    if not (vendor / "VERSIONS").is_file():
        return  # Sphinx's and myst-nb's defaults: the same files from CDNs
    config.html_static_path = [*config.html_static_path, str(vendor)]
    config.mathjax_path = "mathjax/tex-mml-chtml.js"
    config.nb_ipywidgets_js = {
        "widgets/require.js": {},
        "widgets/embed-amd.js": {"data-jupyter-widgets-cdn": WIDGET_CDN},
    }


def _course_css(app, config) -> None:
    """Sphinx ``config-inited``: serve book/_static (course.css widens the text column)."""
    config.html_static_path = [*config.html_static_path, str(Path(app.srcdir) / "book" / "_static")]


def setup(app):
    """Sphinx extension entry point (see ``sphinx: extra_extensions`` in _config.yml)."""
    import nbrun

    nbrun.install()  # myst-nb's NotebookClient: sliced waits, no stall after widget cells
    app.connect("config-inited", _use_vendored_js, priority=400)
    app.connect("config-inited", _course_css, priority=410)
    app.add_css_file("course.css")
    app.connect("source-read", _exercise_edition)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


# --------------------------------------------------------------------------- slides

SLIDES_DIR = "_build/slides"
REVEAL = "reveal.js@4.0.2"  # the version nbconvert's reveal template is written for
EXECUTED_DIR = "_build/jupyter_execute/notebooks"  # where `make book` leaves executed copies
MAX_CELLS_PER_SLIDE = 2
# nbconvert's template configures MathJax 2; the vendored MathJax 3 reads this instead
MATHJAX3_CONFIG = (
    "<script>window.MathJax = {tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], "
    "processEscapes: true}};</script>"
)


def slide_types(notebook: dict) -> dict:
    """Give each cell without ``slideshow`` metadata a slide type; returns a new notebook.

    A source may set ``slideshow: {slide_type: ...}`` on any cell (jupytext keeps it), and that
    wins. Otherwise a cell hidden in the book (tag remove-cell) is skipped, a level-1 or level-2
    heading starts a slide, a level-3 heading a sub-slide
    (below it, in reveal.js), a slide that already holds MAX_CELLS_PER_SLIDE cells continues on
    a sub-slide, and the Colab install cell is skipped.
    """
    cells, on_slide, first_code = [], 0, True
    for cell in notebook["cells"]:
        cell = {**cell, "metadata": dict(cell.get("metadata", {}))}
        text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        kind = cell["metadata"].get("slideshow", {}).get("slide_type")
        if kind is None:
            if cell["cell_type"] == "code" and first_code and "google.colab" in text:
                kind = "skip"
            elif "remove-cell" in cell["metadata"].get("tags", []):
                kind = "skip"  # hidden in the book (glue, pins, wrong answers): not lecture
            elif cell["cell_type"] == "markdown" and re.match(r"#{1,2} ", text.lstrip()):
                kind = "slide"
            elif cell["cell_type"] == "markdown" and re.match(r"### ", text.lstrip()):
                kind = "subslide"
            elif on_slide >= MAX_CELLS_PER_SLIDE:
                kind = "subslide"
            else:
                kind = "-"
            cell["metadata"]["slideshow"] = {"slide_type": kind}
        if cell["cell_type"] == "code":
            first_code = False
        on_slide = 1 if kind in ("slide", "subslide") else on_slide + (kind != "skip")
        cells.append(cell)
    return {**notebook, "cells": cells}


BIBLIOGRAPHY = "book/references.bib"
_ROLE = re.compile(r"\{([a-z:-]+)\}`([^`]*)`")  # a MyST role: {cite:p}`key1,key2`
_LABEL = re.compile(r"^\([A-Za-z0-9_-]+\)=[ \t]*\n?", re.MULTILINE)  # a target line: (label)=


def read_bibliography(path: Path) -> dict[str, str]:
    """BibTeX keys -> short author-year citations: 'Vaswani et al., 2017'."""
    text = path.read_text(encoding="utf-8")
    out = {}
    for match in re.finditer(r"@\w+\{([^,\s]+),(.*?)\n\}", text, re.DOTALL):
        key, body = match.groups()
        author = re.search(r"author\s*=\s*\{(.*?)\},?\s*\n", body, re.DOTALL)
        year = re.search(r"year\s*=\s*\{?(\d{4})", body)
        names = [n.strip() for n in author.group(1).split(" and ")] if author else ["?"]
        surnames = [n.split(",")[0].replace("{", "").replace("}", "").strip() for n in names]
        who = surnames[0] if len(surnames) == 1 else (
            " and ".join(surnames) if len(surnames) == 2 else f"{surnames[0]} et al."
        )  # fmt: skip
        out[key] = f"{who}, {year.group(1) if year else 'n.d.'}"
    return out


GLUE_TEXT = "application/papermill.record/text/plain"  # where myst-nb's glue keeps a value


def glued_values(notebook: dict) -> dict[str, str]:
    """name -> the text/plain value a cell of an executed notebook glued under that name."""
    values = {}
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            if name and GLUE_TEXT in output.get("data", {}):
                values[name] = output["data"][GLUE_TEXT]
    return values


def _glue_text(body: str, glued: dict[str, str]) -> str:
    """What {glue:text}`name:spec` shows: the glued value, formatted with spec if it has one."""
    name, _, spec = body.partition(":")
    if name not in glued:
        return "…"  # not executed (slides --no-execute): no value to show
    value = glued[name]
    if spec:
        try:
            return format(float(value), spec)
        except ValueError:
            return value
    return value


def myst_for_slides(text: str, bibliography: dict[str, str], glued: dict | None = None) -> str:
    """Markdown that nbconvert can show: MyST target lines dropped, citations written out
    ('(Vaswani et al., 2017)'), glued figures replaced by their values (from ``glued``, see
    :func:`glued_values`), any other role reduced to its text. Jupyter Book renders these
    itself; nbconvert's slides would show them raw."""

    def role(match: re.Match) -> str:
        name, body = match.groups()
        if name.startswith("cite"):
            cited = "; ".join(bibliography.get(k.strip(), k.strip()) for k in body.split(","))
            return f"({cited})" if name != "cite:t" else cited
        if name.startswith("glue"):
            return _glue_text(body, glued or {})
        return re.sub(r"\s*<[^>]*>$", "", body)  # {ref}`text <target>` -> text

    return _ROLE.sub(role, _LABEL.sub("", text))


MAX_SLIDE_LINES = 14  # a markdown cell longer than this is cut at paragraphs onto sub-slides


def split_long_cells(notebook: dict, max_lines: int = MAX_SLIDE_LINES) -> dict:
    """Cut each markdown cell longer than ``max_lines`` at blank lines (never inside a fenced
    block or display maths) into chunks of at most about that length, each after the first on
    its own sub-slide, so that no slide runs off its frame. Returns a new notebook."""
    cells = []
    for cell in notebook["cells"]:
        text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] != "markdown" or len(text.splitlines()) <= max_lines:
            cells.append(cell)
            continue
        chunks, current, fenced = [], [], False
        for line in text.splitlines():
            s = line.strip()  # a fence opens or closes; a one-line $$ … $$ does neither
            if s.startswith(("```", ":::")) or (s.startswith("$$") and not s[2:].endswith("$$")):
                fenced = not fenced
            if not line.strip() and not fenced and len(current) >= max_lines // 2:
                chunks.append("\n".join(current))
                current = []
                continue
            current.append(line)
        chunks.append("\n".join(current))
        for k, chunk in enumerate(c for c in chunks if c.strip()):
            metadata = dict(cell.get("metadata", {}))
            part = {**cell, "metadata": metadata, "source": chunk}
            if k > 0:
                metadata["slideshow"] = {"slide_type": "subslide"}
                if "id" in cell:
                    part["id"] = f"{cell['id']}-{k}"  # cell ids must stay unique
            cells.append(part)
    return {**notebook, "cells": cells}


def _vendor_reveal(static: Path) -> bool:
    """reveal.js from npm into ``static/reveal.js`` (once); False when npm is unavailable."""
    if (static / "reveal.js" / "VERSION").is_file():
        return True
    npm = shutil.which("npm")
    if npm is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [npm, "pack", "--json", "--pack-destination", tmp, REVEAL]
        result = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if result.returncode != 0:
            print(f"npm pack {REVEAL} failed; the slides will load reveal.js from a CDN")
            return False
        tarball = Path(tmp) / json.loads(result.stdout)[0]["filename"]
        with tarfile.open(tarball) as tar:
            for member in tar.getmembers():
                rel = member.name.removeprefix("package/")
                if member.isfile() and rel.startswith(("dist/", "plugin/notes/")):
                    _extract(tar, member.name, static / "reveal.js" / rel)
    (static / "reveal.js" / "VERSION").write_text(REVEAL + "\n")
    return True


def slides(root: Path = ROOT, execute: bool = True, pattern: str = "*.ipynb") -> list[Path]:
    """Write reveal.js slides of every notebook into SLIDES_DIR; returns the files written.

    Outputs come from the executed copies `make book` leaves in EXECUTED_DIR when they are newer
    than the notebook and its prose shows no glued figure (myst-nb keeps those out of its
    copies); otherwise the notebook is executed here (unless ``execute`` is False).
    JavaScript is vendored next to the slides, so they also work offline.
    """
    import nbformat
    from nbconvert import SlidesExporter

    out = root / SLIDES_DIR
    static = out / "_static"
    static.mkdir(parents=True, exist_ok=True)
    exporter = SlidesExporter()
    if _vendor_reveal(static):
        exporter.reveal_url_prefix = "_static/reveal.js"
    if vendor_js(root):
        vendor = root / VENDOR_DIR
        shutil.copy2(vendor / "widgets" / "require.js", static / "require.js")
        if not (static / "mathjax").exists():
            shutil.copytree(vendor / "mathjax", static / "mathjax")
        exporter.require_js_url = "_static/require.js"
        exporter.mathjax_url = "_static/mathjax/tex-mml-chtml.js"
    bib_path = root / BIBLIOGRAPHY
    bibliography = read_bibliography(bib_path) if bib_path.is_file() else {}
    written = []
    for path in sorted((root / NOTEBOOKS).glob(pattern)):
        executed = root / EXECUTED_DIR / path.name
        # myst-nb keeps glued values out of the executed copies it writes: a notebook whose
        # prose shows glued figures is executed here, so that its slides show them too
        glues = "{glue" in path.read_text(encoding="utf-8")
        if executed.exists() and executed.stat().st_mtime >= path.stat().st_mtime and not glues:
            notebook = json.loads(executed.read_text(encoding="utf-8"))
        elif execute:
            from bench import run_notebook

            nb = nbformat.read(path, as_version=4)
            run_notebook(path, notebook=nb)
            notebook = json.loads(nbformat.writes(nb))
        else:
            notebook = json.loads(path.read_text(encoding="utf-8"))
        glued = glued_values(notebook)
        for cell in notebook["cells"]:
            if cell["cell_type"] == "markdown":
                cell["source"] = myst_for_slides("".join(cell["source"]), bibliography, glued)
        notebook = split_long_cells(notebook)
        nb = nbformat.reads(json.dumps(slide_types(notebook)), as_version=4)
        html, _ = exporter.from_notebook_node(nb)
        if exporter.mathjax_url.startswith("_static/"):
            html = html.replace(
                f'<script src="{exporter.mathjax_url}">',
                f'{MATHJAX3_CONFIG}\n<script src="{exporter.mathjax_url}">',
                1,
            )
        target = out / f"{path.stem}.slides.html"
        target.write_text(html, encoding="utf-8")
        written.append(target)
        print(f"wrote {target.relative_to(root)}", flush=True)
    return written


# --------------------------------------------------------------------------- screenshots

SCREENSHOT_DIR = Path("_build") / "screenshots"
# (name, page of the built book, window height): the title page, one page per lecture (A: CLIP,
# B: DDPM, C: conditional diffusion, D: the capstone, E: LLaVA), pages with widgets (attention,
# CLIP), the slides, and the instructors' build (solutions shown)
SCREENSHOT_PAGES = [
    ("title", "_build/html/book/intro.html"),
    ("lecture_A_clip", "_build/html/notebooks/02_clip.html"),
    ("lecture_B_ddpm", "_build/html/notebooks/05_ddpm.html#sampling-from-noise-to-an-image"),
    ("lecture_C_guidance", "_build/html/notebooks/06_conditional_diffusion.html#cond-guidance"),
    ("lecture_D_capstone", "_build/html/notebooks/09_capstone.html"),
    ("lecture_E_llava", "_build/html/notebooks/07_llava.html"),
    ("widgets_attention", "_build/html/notebooks/01_attention.html#a-knob-the-softmax-temperature"),
    ("lecture_map", "_build/html/book/lecture_map.html"),
    ("student_exercise", "_build/html/notebooks/02_clip.html#exercises"),
    ("instructor_exercise", "_build/instructor/_build/html/notebooks/02_clip.html#exercises"),
    ("slides_clip", "_build/slides/02_clip.slides.html"),
    ("slides_clip_citations", "_build/slides/02_clip.slides.html#/1"),
    ("slides_ddpm_glue", "_build/slides/05_ddpm.slides.html#/11"),
    ("layout_dit_equation", "_build/html/notebooks/06_conditional_diffusion.html#cond-dit"),
    ("layout_alignment_legend", "_build/html/notebooks/03_vilbert.html#vilbert-alignment"),
]


def find_chromium() -> str | None:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def screenshots(root: Path = ROOT, width: int = 1280, height: int = 1400) -> list[Path]:
    """PNG screenshots of built pages, as a reader's browser shows them, into _build/screenshots/.

    Uses Playwright (``pip install playwright``; `make screenshots` installs it) driving the
    system's Chromium: it runs the pages' JavaScript (widgets, MathJax) and scrolls to anchors.
    Pages whose build is missing are skipped with a note (build them with `make book`,
    `make book-instructor`, `make slides`).
    """
    try:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SystemExit("screenshots need Playwright: pip install playwright") from None
    browser_path = find_chromium()
    if browser_path is None:
        raise SystemExit("no Chromium found: install it (Debian: apt-get install chromium)")
    out = root / SCREENSHOT_DIR
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": height})
        for name, target in SCREENSHOT_PAGES:
            file, _, anchor = target.partition("#")
            if not (root / file).exists():
                print(f"skip {name}: {file} is not built", file=sys.stderr)
                continue
            url = (root / file).resolve().as_uri() + (f"#{anchor}" if anchor else "")
            try:  # offline, a page's few external links (fonts, launch buttons) never load
                page.goto(url, wait_until="load", timeout=30_000)
            except PlaywrightTimeout:
                print(f"{name}: the page did not finish loading in 30 s; picture taken anyway",
                      file=sys.stderr)  # fmt: skip
            page.wait_for_timeout(2000)  # widgets and MathJax render after the load event
            png = out / f"{name}.png"
            page.screenshot(path=str(png))
            written.append(png)
            print(f"wrote {png}")
        browser.close()
    return written


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/coursebook.py", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sync_cmd = sub.add_parser("sync", help="write notebooks/*.ipynb from lectures_src/*.md")
    sync_cmd.add_argument(
        "--edition", choices=EDITIONS, default=STUDENT, help="student (stubs) or instructor"
    )
    sync_cmd.add_argument("--out", type=Path, help="folder to write (default: notebooks/)")
    sub.add_parser("check", help="exit 1 if a notebook is not what sync would write")
    sub.add_parser("vendor-js", help="copy widget and maths JavaScript from npm")
    structural = sub.add_parser("structural-config", help="_config.yml without execution")
    structural.add_argument("out", type=Path)
    slides_cmd = sub.add_parser("slides", help=f"reveal.js slides into {SLIDES_DIR}")
    slides_cmd.add_argument(
        "--no-execute", action="store_true", help="slides without outputs when none are cached"
    )
    slides_cmd.add_argument("--pattern", default="*.ipynb", help="which notebooks (glob)")
    sub.add_parser("screenshots", help=f"headless Chromium screenshots into {SCREENSHOT_DIR}")
    sub.add_parser("figures", help="figures typed into the prose, and glued figures, per source")
    args = parser.parse_args(argv)

    if args.command == "sync":
        if args.edition == INSTRUCTOR and args.out is None:
            parser.error("notebooks/ holds the student edition: give --out for the instructors'")
        changes = sync(edition=args.edition, out=args.out)
        print("\n".join(changes) if changes else "notebooks/ already matches lectures_src/")
    elif args.command == "check":
        problems = out_of_date()
        if problems:
            print("notebooks/ is out of date; run `make notebooks`:", file=sys.stderr)
            print("\n".join(f"  {p}" for p in problems), file=sys.stderr)
            return 1
        print(f"notebooks/ matches lectures_src/ ({len(sources())} notebooks)")
    elif args.command == "vendor-js":
        vendor_js()
    elif args.command == "structural-config":
        structural_config(args.out)
    elif args.command == "slides":
        written = slides(execute=not args.no_execute, pattern=args.pattern)
        if not written:
            print(f"no notebooks match {args.pattern!r}", file=sys.stderr)
            return 1
        print(f"Slides: {ROOT / SLIDES_DIR}/ (open NN.slides.html in a browser)")
    elif args.command == "figures":
        total_typed = total_glued = 0
        for source in sources():
            typed, glued = typed_figures(source), glue_count(source)
            total_typed, total_glued = total_typed + len(typed), total_glued + glued
            print(f"{source.name}: {len(typed)} typed, {glued} glued")
            print("".join(f"    {figure}\n" for figure in typed), end="")
        print(f"in all: {total_typed} figures typed into the prose, {total_glued} glued")
    elif args.command == "screenshots":
        if not screenshots():
            print("nothing to screenshot: run `make book` first", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
