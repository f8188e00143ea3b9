"""The package's structure: no import cycles (function-local imports included), lower layers never import higher ones."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

SRC = Path(__file__).resolve().parents[1] / "src" / "duelist"
# the layers of the README's layout table, lowest first; a module may import only from its own layer or below
LAYERS = [
    {"errors", "logs", "languages", "files", "config", "metrics", "plots", "batching", "tracking", "tiny_tokenizer"},
    {
        "data",
        "features",
        "feature_model",
        "stacking",
        "formatting",
        "rundir",
        "resume",
        "modeling",
        "runs",
        "ensemble",
        "distributed",
    },
    {"scoring"},
    {
        "training",
        "submission",
        "pseudolabel",
        "generation",
        "translation",
        "export",
        "kaggle",
        "bench",
        "eda",
        "review",
        "example_data",
        "sweeper",
    },
]


def imports() -> dict[str, set[str]]:
    graph = {}
    for path in SRC.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("duelist"):
                names = [node.module.split(".")[1]] if "." in node.module else [a.name for a in node.names]
                found.update(names)
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("duelist."))
        graph[path.stem] = found - {path.stem}
    return graph


def test_every_module_has_a_layer() -> None:
    placed = set().union(*LAYERS)
    assert set(imports()) - {"__init__"} <= placed, "add new modules to LAYERS and the README's layout table"


def test_lower_layers_never_import_higher_ones() -> None:
    layer = {m: i for i, mods in enumerate(LAYERS) for m in mods}
    wrong = [f"{m} -> {d}" for m, deps in imports().items() for d in deps if m in layer and layer.get(d, 0) > layer[m]]
    assert not wrong, wrong


def test_no_import_cycles() -> None:
    graph = imports()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                raise AssertionError(
                    "import cycle: " + " -> ".join(path[path.index(dep) :] + [dep]) if dep in path else dep
                )
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_training_does_not_load_the_submission_task() -> None:
    code = "import duelist.training, sys; print(sorted(m for m in sys.modules if m in ('duelist.submission', 'duelist.pseudolabel', 'duelist.generation')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
