"""LoRA merge-and-save: the merged checkpoint has no adapters and gives the same probabilities."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
from safetensors import safe_open

from conftest import TINY, WSDM_EXAMPLE, run_cli


def test_merged_model_matches_adapter_plus_base(tmp_path) -> None:
    run, merged = tmp_path / "run", tmp_path / "merged"
    res = run_cli("train.py", [*TINY, "lora.dropout=0.0", f"hydra.run.dir={run}"])
    assert res.returncode == 0, res.stderr[-2000:]
    res = subprocess.run(
        [sys.executable, "-m", "duelist", "export", f"run={run}", f"out={merged}"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-2000:]
    with safe_open(str(merged / "checkpoint" / "model" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any("lora_" in k for k in keys)  # plain weights only
    for name, out in (("adapter", run), ("merged", merged)):
        res = run_cli(
            "infer.py",
            [
                f"runs=[{out}]",
                f"data.test={WSDM_EXAMPLE}",
                f"output={tmp_path / name}.csv",
                "tta=swap",
                f"hydra.run.dir={tmp_path / 'h'}",
            ],
        )
        assert res.returncode == 0, res.stderr[-2000:]
    a, m = (pd.read_parquet(tmp_path / f"{n}.parquet")["p_a"].to_numpy() for n in ("adapter", "merged"))
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
