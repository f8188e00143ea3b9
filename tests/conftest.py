"""Shared helpers: compose configs like train.py does, run the CLIs as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# one share of the cores per xdist worker, for the worker and every process it starts (inherited): two workers whose
# tiny-model runs each spread over both cores slow each other ~4x (two concurrent smoke runs: 157 s at 2 threads
# each, 33 s at 1); set before torch starts its thread pools
THREADS = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, THREADS)

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from duelist.core.hydra_setup import register_configs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
DATA = Path(__file__).parent / "data"
WSDM_EXAMPLE = DATA / "wsdm_test_example.parquet"

register_configs()

# fast settings for a tiny model on a slice of the bundled sample data
TINY = [
    "model=tiny_gemma2",
    "lora=default",
    "trainer.lr=3e-4",
    "trainer.warmup_ratio=0.05",
    "logger=none",
    "data.max_rows=200",
    "trainer.max_steps=6",
    "trainer.batch_size=8",
    "trainer.eval_batch_size=32",
]


# the longest test files, longest first (`pytest -n 2 --durations=80`, 2026-12-06: 400 s down to 90 s each): they start
# first, so with `-n 2` the two workers finish together instead of one running a long file alone at the end (pyproject's
# --no-loadscope-reorder keeps this order; xdist would otherwise start the files with the most tests first). xdist
# hands a worker its next file once its current one has 2 tests or fewer left to run
FIRST = (
    "test_walk_extra_data.py",
    "test_resume.py",
    "test_training.py",
    "test_walk_train_and_infer.py",
    "test_kaggle.py",
    "test_peers_bench.py",
    "test_distributed.py",
    "test_footprint.py",
    "test_minilm.py",
    "test_pseudolabel.py",
    "test_bad_input.py",
    "test_pruning.py",
    "test_reward_models.py",
    "test_gpu_paths_on_cpu.py",
    "test_parallel_inference.py",
    "test_walk_reward_models.py",
    "test_walk_kaggle.py",
    "test_vllm_generation.py",  # the vLLM tier: its 4 tests keep one worker, the other takes the two one-test files
    "test_vllm_scoring.py",
    "test_walk_vllm.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: the rest keep their order
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _set_test_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUELIST_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    _set_test_env(tmp_path_factory, monkeypatch)


@contextmanager
def isolated_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The environment every test runs in, for a module-scoped fixture (set up before the autouse one above)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _set_test_env(tmp_path_factory, monkeypatch)
        yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of the TINY settings, trained once per test process and shared by the tests (of any file) that
    only read a trained run: scoring, labelling and planning with it write nothing into it, and no test may."""
    from duelist.tasks.train import train

    run = tmp_path_factory.mktemp("tiny-run") / "run"
    with isolated_env(tmp_path_factory):
        train(compose_train(TINY), run)
    return run


def html_tables(page: str) -> dict[str, list[dict[str, str]]]:
    """The ``<table id=...>`` tables of an HTML page as lists of {header: cell text} (an independent reader of our
    pages)."""
    from html.parser import HTMLParser

    tables: dict[str, list[list[str]]] = {}

    class Reader(HTMLParser):
        current: list[list[str]] | None = None
        cell: list[str] | None = None

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.current = tables.setdefault(dict(attrs).get("id") or f"table{len(tables)}", [])
            elif tag == "tr" and self.current is not None:
                self.current.append([])
            elif tag in ("td", "th") and self.current is not None:
                self.cell = []

        def handle_endtag(self, tag):
            if tag in ("td", "th") and self.cell is not None and self.current is not None:
                self.current[-1].append("".join(self.cell).strip())
                self.cell = None
            elif tag == "table":
                self.current = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell.append(data)

    Reader().feed(page)
    return {name: [dict(zip(rows[0], row)) for row in rows[1:]] for name, rows in tables.items() if rows}


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF)):
        return compose(config_name="train", overrides=overrides)


def compose_infer(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF)):
        return compose(config_name="infer", overrides=overrides)


def run_cli(
    script: str, args: list[str], cwd: Path | None = None, timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python train.py ...`` / ``python infer.py ...`` in a fresh process (``env``: added to the environment)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    # a fresh process, like a user's shell: not attached to a W&B service this test process started (a killed run's
    # stream would stay registered in that shared service and its resumed run be refused as "run ID in use")
    env.pop("WANDB_SERVICE", None)
    if "-m" not in args and not any(a.startswith("hydra.run.dir=") for a in args):
        args = [
            *args,
            f"hydra.run.dir={tempfile.mkdtemp(prefix='duelist-test-')}",
        ]  # keep Hydra's logs out of the checkout
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
