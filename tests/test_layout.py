"""The package's layout rules: a model file holds the model, imports run one way, no cycles.

Imports are read from the source (inside functions too), so a hidden import counts."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "minimodels"
MODELS = (
    "clip vilbert vilt dvae dalle unet dit latent gan gpt llava flamingo frozen qformer lora "
    "judge layers diffusion flow contrastive captioner"
).split()
# what a model file is built from (besides torch, numpy and the standard library)
ALLOWED = {"minimodels.checks", "minimodels.layers", "minimodels.diffusion", "minimodels.text",
           "minimodels.data.world"} | {f"minimodels.{m}" for m in MODELS}  # fmt: skip
MAX_MODEL_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str) -> tuple[set[str], list[int]]:
    """The package modules `name` imports, and the lines of imports inside functions."""
    tree = ast.parse(MODULES[name].read_text())
    found, nested = set(), []
    functions = [
        n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    inner = {id(n) for f in functions for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        if id(node) in inner:
            nested.append(node.lineno)
        found |= {t for t in targets if t in MODULES and t not in (name, "minimodels")}
    return found, nested


def test_no_import_inside_a_function():
    nested = {name: lines for name in MODULES if (lines := imports(name)[1])}
    assert not nested, f"imports inside functions (module: lines): {nested}"


def test_no_import_cycles():
    graph = {name: imports(name)[0] for name in MODULES}
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path + [node, nxt])
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


@pytest.mark.parametrize("model", MODELS)
def test_a_model_file_imports_only_what_it_is_built_from(model):
    found, _ = imports(f"minimodels.{model}")
    assert found <= ALLOWED, f"{model}.py imports {sorted(found - ALLOWED)}"


@pytest.mark.parametrize("model", MODELS)
def test_a_model_file_stays_short(model):
    lines = len(MODULES[f"minimodels.{model}"].read_text().splitlines())
    assert lines <= MAX_MODEL_LINES, f"{model}.py has {lines} lines (at most {MAX_MODEL_LINES})"


def test_course_tooling_is_not_in_the_package():
    assert not (PACKAGE / "_book.py").exists() and not (PACKAGE / "bench.py").exists()
    assert (PACKAGE.parent / "tools" / "coursebook.py").exists()
