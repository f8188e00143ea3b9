"""The default model end to end on a small slice of the bundled real data (real pretrained weights)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import WSDM_EXAMPLE, compose_infer, run_cli
from duelist.tasks.infer import infer

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
            "data.max_rows=120",
            "trainer.max_steps=2",
            "trainer.batch_size=8",
            "model.max_length=128",
            "trainer.eval_every=1",  # two validations: the best of them is the checkpoint kept
            f"hydra.run.dir={run}",
        ],
    )
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["val/accuracy"] <= 1.0 and metrics["val/rows"] + metrics["train/rows"] == 120
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
    # infer.py's scoring, in this process (the command line itself is the call above)
    infer(compose_infer([f"runs=[{run}]", f"data.test={tmp_path / 'valid.parquet'}", f"output={tmp_path / 'v.csv'}"]))
    again = pd.read_parquet(tmp_path / "v.parquet").merge(
        pd.read_parquet(run / "oof.parquet"), on="id", suffixes=("", "_oof")
    )
    assert len(again) == len(valid)
    np.testing.assert_allclose(again["p_a"], again["p_a_oof"], atol=1e-5)
