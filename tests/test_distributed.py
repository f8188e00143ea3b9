"""Data-parallel training with `accelerate launch`: 2 CPU processes (gloo) match 1 process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, run_cli

pytestmark = pytest.mark.slow

# group_by_length off and no dropout: 2 processes x 4 rows see exactly the rows of 1 process x 8 rows per step
COMMON = ["model=tiny_gemma2", "logger=none", "data.max_rows=200", "trainer.max_steps=6", "trainer.group_by_length=false", "lora.dropout=0.0"]


def test_two_processes_match_one_within_tolerance(tmp_path) -> None:
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    two = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                          "--dynamo_backend", "no", str(ROOT / "train.py"), *COMMON, "trainer.batch_size=4", f"hydra.run.dir={tmp_path / 'two'}"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_cli("train.py", [*COMMON, "trainer.batch_size=8", f"hydra.run.dir={tmp_path / 'one'}"])
    assert one.returncode == 0, one.stderr[-3000:]

    m1, m2 = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("one", "two"))
    assert (m1["processes"], m2["processes"]) == (1, 2)
    assert (two.stdout + two.stderr).count("20 per epoch") == 2  # each of the 2 processes takes half of the 40 batches of 4
    assert m2["val/accuracy"] == m1["val/accuracy"]
    assert abs(m2["val/log_loss"] - m1["val/log_loss"]) < 1e-5  # stated tolerance: float summation order only
    p1, p2 = (pd.read_parquet(tmp_path / r / "oof.parquet") for r in ("one", "two"))
    np.testing.assert_allclose(p2["p_a"], p1["p_a"], atol=1e-5)
    assert (tmp_path / "two" / "checkpoint" / "adapter" / "adapter_model.safetensors").is_file()  # written once, by rank 0
