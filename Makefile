# Vision–Language Models from Scratch: build the book, run the tests.
#
#   make book        execute every notebook and build the HTML book into _build/html
#   make book-instructor   the book and notebooks with the exercises' solutions (_build/instructor)
#   make slides      reveal.js slides of every notebook (_build/slides), for lecturing
#   make screenshots headless Chromium pictures of built pages (_build/screenshots)
#   make test        lint, package tests, every notebook (nbval), sync check, structural book build
#   make test-torch-next   the package tests and notebooks under torch 2.14.1 (.venv-torch-next)
#   make test-oldest the same under the oldest versions pyproject.toml allows (.venv-oldest)
#   make lab         JupyterLab on the notebooks
#   make notebooks   regenerate notebooks/*.ipynb from lectures_src/*.md
#   make clean       remove _build and caches (make distclean also removes .venv)
#
# The first target that needs it creates .venv and installs into it; it reinstalls only when
# pyproject.toml changes. PyTorch is installed first and explicitly, because an unpinned torch
# pulls a multi-GB CUDA build. TORCH_SPEC is passed to pip unquoted, so it may carry options:
#     make test TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cpu"

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PYTEST_WORKERS ?= 2

BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
BOOK := $(PY) tools/coursebook.py
JB_FLAGS := --all -W -n --keep-going  # --all: a fresh environment, so every page is checked
STRUCTURAL := _build/structural

.PHONY: help book book-instructor slides screenshots test test-torch-next test-oldest lint pytest structural lab notebooks check-notebooks vendor-js clean distclean

help:
	@sed -n "s/^#   make/make/p" Makefile

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[book,test]"
	@# the reference that tests/test_contrastive.py checks siglip_loss against: only its loss.py
	@# is loaded (the package's __init__ needs torchvision, which would pull another torch)
	$(PY) -m pip install -q --no-deps "open_clip_torch>=2.24"
	touch $@

# ---------------------------------------------------------------------------- book

book: check-notebooks vendor-js | $(STAMP)
	MINIMODELS_CLAIMS=strict $(BIN)/jupyter-book build . $(JB_FLAGS)
	@echo "The book: $(CURDIR)/_build/html/index.html"

# notebooks/ holds the student edition (stubs). With MINIMODELS_BOOK_SOLUTIONS=show the book reads
# each notebook's instructors' edition from lectures_src/ instead (see tools/coursebook.py), and
# MINIMODELS_EXERCISES=require makes a check fail on a stub. The instructors' notebooks, for
# JupyterLab or Colab, are written next to that book.
book-instructor: check-notebooks vendor-js | $(STAMP)
	$(BOOK) sync --edition instructor --out _build/instructor/notebooks
	MINIMODELS_BOOK_SOLUTIONS=show MINIMODELS_EXERCISES=require MINIMODELS_CLAIMS=strict \
		$(BIN)/jupyter-book build . \
		--path-output _build/instructor $(JB_FLAGS)
	@echo "The instructors' book: $(CURDIR)/_build/instructor/_build/html/index.html"
	@echo "The instructors' notebooks: $(CURDIR)/_build/instructor/notebooks/"

# Outputs come from `make book`'s executed notebooks when they are current and show no glued
# figure (myst-nb keeps glued values out of them); the others are executed here, minutes.
slides: check-notebooks | $(STAMP)
	$(BOOK) slides

# Pictures of the title page, a page per lecture, widgets, slides and the instructors' build, as
# a reader sees them (needs Chromium, and the builds above).
screenshots: | $(STAMP)
	$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install -q playwright
	$(BOOK) screenshots

check-notebooks: | $(STAMP)
	$(BOOK) check

vendor-js: | $(STAMP)
	$(BOOK) vendor-js

notebooks: | $(STAMP)
	$(BOOK) sync

# ---------------------------------------------------------------------------- tests

test: lint structural pytest  # quick checks first; pytest's summary is the closing line

lint: | $(STAMP)
	$(BIN)/ruff check minimodels tests tools conftest.py
	$(BIN)/ruff format --check minimodels tests tools conftest.py

# The package's tests, the checks of tests/test_project.py (notebooks in sync with their
# sources, no outputs, ...) and every notebook run top to bottom by nbval, in one session: the
# student notebook as it is (stubs), then in the same kernel each solution of the instructors'
# edition and its check (conftest.py). MINIMODELS_CLAIMS=strict: what a page's text says of its
# figures must hold (minimodels.viz.check_claims); a student who turns a knob gets a note instead.
# One math thread per worker: two workers with two threads each oversubscribe two cores and
# slow torch down many times over.
pytest: | $(STAMP)
	OMP_NUM_THREADS=1 MINIMODELS_CLAIMS=strict $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile \
		tests notebooks --nbval-lax --nbval-current-env

# The version range, tested: the same pytest run in a venv of its own, under the newest torch on
# this machine's disk (a CUDA build, run on the CPU; Colab is ahead of our pin) and under the
# lower bounds of pyproject.toml (tools/oldest.py pins each `>=` to its bound).
test-torch-next:
	$(MAKE) pytest VENV=.venv-torch-next TORCH_SPEC="torch==2.14.1"

test-oldest:
	$(PYTHON) tools/oldest.py > .oldest-constraints.txt
	PIP_CONSTRAINT=$(CURDIR)/.oldest-constraints.txt $(MAKE) pytest VENV=.venv-oldest

# The book built from the notebooks as they are (no outputs, no execution), warnings as errors:
# catches broken links, citations and toc entries in seconds.
structural: | $(STAMP)
	$(BOOK) structural-config $(STRUCTURAL)/_config.yml
	$(BIN)/jupyter-book build . --config $(STRUCTURAL)/_config.yml \
		--path-output $(STRUCTURAL) $(JB_FLAGS)

# ---------------------------------------------------------------------------- other

lab: | $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

clean:
	rm -rf _build .pytest_cache .ruff_cache .hypothesis .jupyter_cache
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name .ipynb_checkpoints \) \
		-type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .venv-torch-next .venv-oldest .oldest-constraints.txt *.egg-info
