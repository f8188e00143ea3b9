"""A newcomer's walk through the docs: every command of the blocks marked ``<!-- readme-walk ... -->`` in the README
and the pages of ``docs/`` runs as written, in the order of :data:`WALKED`, in a fresh folder (with the
``# on a CPU: key=value`` substitutes a block gives), and exits 0 without a traceback or a warning the user cannot
act on."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT

MARK = "<!-- readme-walk"
# lines a user may see that are not warnings about their run (the data files' own bad rows are counted on purpose)
EXPECTED = re.compile(r"dropped \d+ of \d+ rows with bad values")


# the pages with walked blocks, in the order a reader follows them, as walks that need nothing from each other but the
# example files (so they run side by side); within a walk, later blocks use what earlier ones made
WALKS = {
    "train-and-infer": ["README.md", "docs/train-and-infer.md", "docs/gpu-and-kaggle.md"],
    "extra-data": ["docs/extra-data.md"],
    "kaggle": ["docs/kaggle.md"],
    "reward-models": ["docs/reward-models.md"],
    "vllm": ["docs/vllm.md"],  # in the vLLM environment (tests/test_walk_vllm.py)
}
WALKED = [page for pages in WALKS.values() for page in pages]
EXAMPLE_DATA = "python -m duelist example-data"


def walked_commands(page: str) -> list[str]:
    """The commands of every marked ```bash block of a page, continuation lines joined, CPU substitutes applied."""
    commands = []
    for part in page.split(MARK)[1:]:
        block = part.split("```bash\n", 1)[1].split("```", 1)[0]
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            command, _, comment = line.partition("  #")
            sub = re.search(r"on a CPU: (.*)$", comment)
            for setting in sub.group(1).split() if sub else []:
                key = setting.split("=", 1)[0]
                command = re.sub(rf"(?<=\s){re.escape(key)}=\S+", setting, command)
            commands.append(command.strip())
    return commands


def all_commands(walk: str | None = None) -> list[str]:
    """The commands of one walk (all of them without ``walk``); each walk starts from the example files."""
    if walk is None:
        return [command for name in WALKS for command in all_commands(name)]
    commands = [command for page in WALKS[walk] for command in walked_commands((ROOT / page).read_text())]
    return commands if commands[:1] == [EXAMPLE_DATA] else [EXAMPLE_DATA, *commands]


@pytest.mark.fast
def test_every_page_with_walked_blocks_is_walked() -> None:
    marked = {
        str(p.relative_to(ROOT)) for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")] if MARK in p.read_text()
    }
    assert marked <= set(WALKED), marked - set(WALKED)


@pytest.mark.fast
def test_the_commands_are_found_and_substituted() -> None:
    commands = all_commands()
    assert all(all_commands(walk)[0] == EXAMPLE_DATA for walk in WALKS)
    assert all_commands("train-and-infer").count(EXAMPLE_DATA) == 1  # the page's own, not one more
    parallel = [c for c in commands if "devices=" in c]
    assert parallel and all("devices=[cpu,cpu]" in c for c in parallel)
    assert any("runs=[runs/student2_a,runs/student2_b]" in c for c in commands)


def walk_docs(walk: str, tmp_path: Path) -> None:
    """One walk, run in ``tmp_path`` (each walk has its own test file, so that ``-n 2 --dist loadfile`` runs them
    side by side: tests/test_walk_*.py)."""
    # a fresh clone's files (the commands run from a checkout; the Kaggle packager builds duelist's wheel from src/)
    for name in ("train.py", "infer.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tmp_path / name)
    for folder in ("conf", "src"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    timings = []
    for command in all_commands(walk):
        start = time.perf_counter()
        res = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        timings.append((round(time.perf_counter() - start), command[:80]))
        assert res.returncode == 0, f"{command}\n{res.stdout[-1500:]}\n{res.stderr[-3000:]}"
        output = res.stdout + res.stderr
        assert "Traceback" not in output, command
        noise = [line for line in output.splitlines() if re.search(r"warn", line, re.I) and not EXPECTED.search(line)]
        assert not noise, f"{command}\n" + "\n".join(noise[:10])
    print(*timings, sep="\n")
    test_ids = list(pd.read_parquet(tmp_path / "test.parquet")["id"])  # every walk ends with a submission
    assert list(pd.read_csv(tmp_path / "submission.csv")["id"].astype(str)) == [str(i) for i in test_ids]
    made = {
        "train-and-infer": ["runs/a-merged/exported_from.json"],
        "extra-data": ["pl2.summary.json"],
        "kaggle": ["kaggle/wsdm-pkg/run.sh", "submission.oof.json"],  # the package; the OOF-only report
        "reward-models": [
            "runs/rm0/oof.parquet",
            "runs/rm1/checkpoint/adapter/adapter_model.safetensors",
            "pl.parquet",
        ],
        "vllm": ["runs/rm-merged/checkpoint/model/tokenizer_config.json", "pairs.parquet", "pl.parquet"],
    }
    for path in made[walk]:
        assert (tmp_path / path).is_file(), path
