"""A newcomer's walk through the README: every command of the blocks marked ``<!-- readme-walk ... -->`` runs as
written, in order, in a fresh folder (with the ``# on a CPU: key=value`` substitutes the README gives), and exits 0
without a traceback or a warning the user cannot act on."""

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

pytestmark = pytest.mark.slow

MARK = "<!-- readme-walk"
# lines a user may see that are not warnings about their run (the data files' own bad rows are counted on purpose)
EXPECTED = re.compile(r"dropped \d+ of \d+ rows with bad values")


def walked_commands(readme: str) -> list[str]:
    """The commands of every marked ```bash block, continuation lines joined, CPU substitutes applied."""
    commands = []
    for part in readme.split(MARK)[1:]:
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


def test_the_commands_are_found_and_substituted() -> None:
    commands = walked_commands((ROOT / "README.md").read_text())
    assert commands[0] == "python -m duelist.example_data"
    parallel = [c for c in commands if "devices=" in c]
    assert parallel and all("devices=[cpu,cpu]" in c for c in parallel)
    assert any("runs=[runs/student2_a,runs/student2_b]" in c for c in commands)


def test_readme_cpu_path_runs_as_written(tmp_path) -> None:
    # a fresh clone's files (the commands run from a checkout; the Kaggle packager builds duelist's wheel from src/)
    for name in ("train.py", "infer.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tmp_path / name)
    for folder in ("conf", "src"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    timings = []
    for command in walked_commands((ROOT / "README.md").read_text()):
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
    test_ids = list(pd.read_parquet(tmp_path / "test.parquet")["id"])
    assert list(pd.read_csv(tmp_path / "submission.csv")["id"].astype(str)) == [str(i) for i in test_ids]
    assert (tmp_path / "pl2.summary.json").is_file() and (tmp_path / "kaggle" / "duelist-pkg" / "run.sh").is_file()
    assert (tmp_path / "runs" / "a-merged" / "exported_from.json").is_file()
