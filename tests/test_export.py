"""LoRA merge-and-save: the merged checkpoint has no adapters and gives the same probabilities."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
from safetensors import safe_open

from conftest import TINY, WSDM_EXAMPLE, compose_train, run_cli


def test_merged_model_matches_adapter_plus_base(tmp_path) -> None:
    from duelist.tasks.train import train

    run, merged = tmp_path / "run", tmp_path / "merged"
    train(compose_train([*TINY, "lora.dropout=0.0"]), run)  # the run to merge, trained in this process
    res = subprocess.run(
        [sys.executable, "-m", "duelist", "export", f"run={run}", f"out={merged}"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-2000:]
    with safe_open(str(merged / "checkpoint" / "model" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any("lora_" in k for k in keys)  # plain weights only
    # one infer.py call scores the file with both, each run on its own (its column p_a_run0 / p_a_run1)
    res = run_cli(
        "infer.py",
        [
            f"runs=[{run},{merged}]",
            f"data.test={WSDM_EXAMPLE}",
            f"output={tmp_path / 'both'}.csv",
            "tta=swap",
            f"hydra.run.dir={tmp_path / 'h'}",
        ],
    )
    assert res.returncode == 0, res.stderr[-2000:]
    both = pd.read_parquet(tmp_path / "both.parquet")
    a, m = both["p_a_run0"].to_numpy(), both["p_a_run1"].to_numpy()
    assert len(a) == len(pd.read_parquet(WSDM_EXAMPLE)) and not np.isnan(a).any() and not np.isnan(m).any()
    np.testing.assert_allclose(m, a, atol=1e-5)
    assert (merged / "oof.parquet").is_file() and (
        merged / "metrics.json"
    ).is_file()  # still usable in a tuned ensemble

    bad = subprocess.run(
        [sys.executable, "-m", "duelist", "export", f"run={merged}", f"out={tmp_path / 'again'}"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "no checkpoint/adapter/" in bad.stderr and "Traceback" not in bad.stderr
