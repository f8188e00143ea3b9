"""The package's structure: its layers are the folders of ``src/duelist``; a folder imports only from itself and the
folders below it (function-local imports included), and nothing imports in a circle."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "duelist"
# lowest first: the README's map of the house
LAYERS = ["core", "data", "runs", "models", "predict", "tasks", "sweeps", "tools"]


def modules() -> dict[str, Path]:
    """``layer.module`` of every module of the package (``__main__`` is the command line above every layer)."""
    found = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] != "__init__":
            found[".".join(parts)] = path
    return found


def imports(path: Path) -> set[str]:
    """The duelist modules ``path`` imports (as ``layer.module``), anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("duelist."):
            module = node.module.removeprefix("duelist.")
            found.update(f"{module}.{a.name}" if module in LAYERS else module for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("duelist.") for a in node.names if a.name.startswith("duelist."))
    return found


def test_the_top_folder_shows_the_layers() -> None:
    top = sorted(p.name for p in SRC.iterdir() if p.name != "__pycache__")
    assert top == sorted(["__init__.py", "__main__.py", "assets", *LAYERS]), top
    for layer in LAYERS:  # every layer says what it holds and what it may use
        assert ast.get_docstring(ast.parse((SRC / layer / "__init__.py").read_text())), layer
    assert all(path.parent.parent == SRC for path in modules().values() if path.name != "__main__.py"), "one level deep"


def test_a_layer_never_imports_a_layer_above_it() -> None:
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    wrong = []
    for module, path in modules().items():
        if module == "__main__":
            continue
        for target in imports(path):
            if rank[target.split(".")[0]] > rank[module.split(".")[0]]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_no_import_cycles() -> None:
    graph = {module: {t for t in imports(path) if t in modules()} - {module} for module, path in modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(dep) :] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_every_import_names_a_module_that_exists() -> None:
    missing = [f"{m} -> {t}" for m, p in modules().items() for t in imports(p) if t not in modules()]
    assert not missing, missing


def test_only_the_two_kinds_ask_which_kind_a_model_is() -> None:
    """The model-kind seam: ``arch == "features"`` (or any test of the model's schema) appears in the config schema
    and in :mod:`duelist.models.kinds` alone; everything else calls the kind's methods."""
    allowed = {"core.config", "models.kinds", "models.trees", "tools.bench"}  # bench: it measures networks only
    asking = re.compile(r"""arch\W*(==|!=)\W*["']features|model_schema\(|is_feature_run""")
    found = [m for m, p in modules().items() if m not in allowed and asking.search(p.read_text())]
    assert not found, found


def test_only_the_heads_ask_which_head_a_model_has() -> None:
    """The head seam: a comparison of ``model.head`` or of a head's name, a test for a reward head's two sequences
    (``isinstance(..., Duo)``) or an array's shape read for it appear in :mod:`duelist.models.heads` alone; everything
    else asks the head of :func:`duelist.models.heads.head_of`."""
    asking = re.compile(
        r"""\.head\b\s*(==|!=)|(==|!=)\s*["'](reward|pair)["']|["'](reward|pair)["']\s*(==|!=)|isinstance\([^)]*\bDuo\b"""
        r"""|\.ndim\b|get\(\s*["']head["']|\bhead\s+in\s*\("""
    )
    found = [m for m, p in modules().items() if m != "models.heads" and asking.search(p.read_text())]
    assert not found, found


def test_only_the_kinds_module_turns_a_kind_into_a_decision() -> None:
    """A kind's name is for display: ``kind_of(...).name == ...`` decides what the kind's methods should."""
    deciding = re.compile(r"""\.name\s*(==|!=)\s*["'](network|trees)["']""")
    found = [
        m for m, p in modules().items() if m not in {"models.kinds", "tools.bench"} and deciding.search(p.read_text())
    ]
    assert not found, found


def test_functions_read_top_to_bottom() -> None:
    """No function runs over 80 lines (docstring included): a long one is split at its natural sections, each a
    function named after what it does."""
    import ast

    long = [
        f"{module}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for module, path in modules().items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80
    ]
    assert not long, long


def test_training_does_not_load_the_inference_tasks() -> None:
    code = (
        "import duelist.tasks.train, sys; "
        "print(sorted(m for m in sys.modules if m in ('duelist.tasks.submit', 'duelist.tasks.pseudolabel', "
        "'duelist.tasks.generate')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
