"""What the vLLM tests share: running a command as a user does, and a folder with the example files, the tiny reward
model and the two tiny generators saved as downloads (every tiny model with heads of 32: vLLM's CPU attention takes
32 and up)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def ok(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def duelist(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m duelist ARGS`` as a user runs it, in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "duelist", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def example_folder(folder: Path) -> Path:
    """``folder`` with what ``python -m duelist example-data reward_model=true generators=true`` writes."""
    ok(duelist("example-data", "reward_model=true", "generators=true", cwd=folder))
    return folder
