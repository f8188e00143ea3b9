"""The default model end to end on a small slice of the bundled real data (real pretrained weights)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import WSDM_EXAMPLE, run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("lora", ["default", "none"])
def test_minilm_train_then_infer(tmp_path, lora: str) -> None:
    run = tmp_path / "run"
    res = run_cli(
        "train.py",
        [
            "model=minilm",
            f"lora={lora}",
            "logger=none",
            "data.max_rows=240",
            "trainer.max_steps=6",
            "model.max_length=128",
            "trainer.eval_every=3",
            f"hydra.run.dir={run}",
        ],
    )
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["val/accuracy"] <= 1.0 and metrics["val/rows"] + metrics["train/rows"] == 240
    assert (run / ("checkpoint/adapter" if lora == "default" else "checkpoint/model")).is_dir()
    out = tmp_path / "submission.csv"
    res = run_cli("infer.py", [f"runs=[{run}]", f"data.test={WSDM_EXAMPLE}", f"output={out}", "tta=swap"])
    assert res.returncode == 0, res.stderr[-3000:]
    sub = pd.read_csv(out, dtype={"id": str})
    assert list(sub["id"]) == [str(i) for i in pd.read_parquet(WSDM_EXAMPLE)["id"]]
    probs = pd.read_parquet(out.with_suffix(".parquet"))
    assert np.all((probs["p_a"] > 0) & (probs["p_a"] < 1))
    assert list(sub["winner"]) == list(np.where(probs["p_a"] >= 0.5, "model_a", "model_b"))

    # the reloaded model (mean pooling, length buckets) gives the validation rows the p_a of oof.parquet
    from omegaconf import OmegaConf

    from duelist.data.splits import load_train_valid

    _, valid = load_train_valid(OmegaConf.load(run / "config.yaml").data)
    valid[["id", "prompt", "response_a", "response_b"]].to_parquet(tmp_path / "valid.parquet")
    res = run_cli(
        "infer.py", [f"runs=[{run}]", f"data.test={tmp_path / 'valid.parquet'}", f"output={tmp_path / 'v.csv'}"]
    )
    assert res.returncode == 0, res.stderr[-3000:]
    again = pd.read_parquet(tmp_path / "v.parquet").merge(
        pd.read_parquet(run / "oof.parquet"), on="id", suffixes=("", "_oof")
    )
    assert len(again) == len(valid)
    np.testing.assert_allclose(again["p_a"], again["p_a_oof"], atol=1e-5)
