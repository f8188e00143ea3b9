"""Multi-process training with `accelerate launch`: 2 CPU processes (gloo) match 1 process, for DDP and FSDP."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, TINY, compose_infer, compose_train
from duelist.tasks.infer import infer
from duelist.tasks.train import train

pytestmark = pytest.mark.slow

# group_by_length off and no dropout: 2 processes x 4 rows see exactly the rows of 1 process x 8 rows per step
COMMON = [*(a for a in TINY if "batch_size" not in a), "trainer.group_by_length=false", "lora.dropout=0.0"]


def launch(mode: str, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu|--use_fsdp --num_processes 2 train.py ARGS`` (gloo on a CPU); ``env``: added."""
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [
            accelerate,
            "launch",
            mode,
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(ROOT / "train.py"),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def test_two_processes_match_one_within_tolerance(tmp_path) -> None:
    two = launch("--multi_gpu", [*COMMON, "trainer.batch_size=4", f"hydra.run.dir={tmp_path / 'two'}"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    train(compose_train([*COMMON, "trainer.batch_size=8"]), tmp_path / "one")  # one process: this one

    m1, m2 = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("one", "two"))
    assert (m1["processes"], m2["processes"]) == (1, 2)
    # each of the 2 processes takes half of the 40 batches of 4; info lines are printed once (rank 0's), not once per
    # process
    assert len(re.findall(r"training \d+ rows \(\d+ optimizer steps, 20 per epoch\)", two.stdout + two.stderr)) == 1
    # validation: each process scores its share (rank 0 alone would keep the other waiting past NCCL's timeout)
    shares = re.findall(r"validation: 2 processes scored (\d+) \+ (\d+) of (\d+) rows", two.stdout + two.stderr)
    assert shares and all(
        int(a) + int(b) == int(n) == len(pd.read_parquet(tmp_path / "two" / "oof.parquet"))
        and abs(int(a) - int(b)) <= 1
        for a, b, n in shares
    )
    assert m2["val/accuracy"] == m1["val/accuracy"]
    assert abs(m2["val/log_loss"] - m1["val/log_loss"]) < 1e-5  # stated tolerance: float summation order only
    p1, p2 = (pd.read_parquet(tmp_path / r / "oof.parquet") for r in ("one", "two"))
    np.testing.assert_allclose(p2["p_a"], p1["p_a"], atol=1e-5)
    assert (
        tmp_path / "two" / "checkpoint" / "adapter" / "adapter_model.safetensors"
    ).is_file()  # written once, by rank 0

    # both processes killed (SIGKILL) after the step-4 state, in step 5; the same launch again resumes and ends
    # identically
    killed = [*COMMON, "trainer.batch_size=4", "trainer.save_every=2", f"hydra.run.dir={tmp_path / 'killed'}"]
    dead = launch("--multi_gpu", killed, tmp_path, env={"DUELIST_TEST_KILL_AT_BATCH": "5"})
    assert dead.returncode != 0 and [p.name for p in sorted((tmp_path / "killed" / "states").iterdir())] == [
        "step-00000002",
        "step-00000004",
    ]
    resumed = launch("--multi_gpu", killed, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step-00000004 (step 4, epoch 0)" in resumed.stdout + resumed.stderr
    m3 = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    timing = {"runtime_s", "train/tokens_per_s", "train/seconds", "peak_rss_gb"}
    assert {k: v for k, v in m3.items() if k not in timing} == {k: v for k, v in m2.items() if k not in timing}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "killed" / "oof.parquet"), p2, check_exact=True)


def test_fsdp_full_fine_tuning_matches_one_process(tmp_path) -> None:
    """`accelerate launch --use_fsdp`: parameters sharded per decoder layer (FSDP2), full fine-tuning."""
    full = [*COMMON, "lora=none", "trainer.lr=1e-4"]
    two = launch("--use_fsdp", [*full, "trainer.batch_size=4", f"hydra.run.dir={tmp_path / 'two'}"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    train(compose_train([*full, "trainer.batch_size=8"]), tmp_path / "one")  # one process: this one

    m1, m2 = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("one", "two"))
    assert (m2["processes"], m2["strategy"]) == (2, "fsdp") and m2["train/trainable_parameters"] == m1[
        "train/trainable_parameters"
    ]
    assert m2["val/accuracy"] == m1["val/accuracy"]
    assert abs(m2["val/log_loss"] - m1["val/log_loss"]) < 1e-5  # stated tolerance: float summation order only
    p1, p2 = (pd.read_parquet(tmp_path / r / "oof.parquet") for r in ("one", "two"))
    np.testing.assert_allclose(p2["p_a"], p1["p_a"], atol=1e-5)
    # the full (gathered) weights were saved once: infer.py rebuilds the model from them alone and gets the OOF
    # probabilities back
    valid = tmp_path / "valid.parquet"
    ids = set(p2["id"])
    pd.concat(
        pd.read_parquet(ROOT / "src/duelist/assets/sample" / f)
        for f in ("hh_rlhf_harmless_test.parquet", "pandalm_test.parquet", "oasst1_zh_rank.parquet")
    ).loc[lambda d: d["id"].isin(ids)].to_parquet(valid)
    infer(compose_infer([f"runs=[{tmp_path / 'two'}]", f"data.test={valid}", f"output={tmp_path / 'sub.csv'}"]))
    scored = pd.read_parquet(tmp_path / "sub.parquet").set_index("id")["p_a"]
    np.testing.assert_allclose(scored.loc[p2["id"]].to_numpy(), p2["p_a"].to_numpy(), atol=1e-5)
