"""Two sweep workers on one PostgreSQL-backed Optuna study (a real server on loopback)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT, TINY

pytestmark = pytest.mark.slow


def server_binary(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture
def postgres_url():
    initdb, pg_ctl = server_binary("initdb"), server_binary("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("no PostgreSQL server binary (initdb/pg_ctl); .ci/run installs Debian's postgresql package")
    pytest.importorskip("psycopg")
    as_user: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="duelist-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the postgres user
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(data, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        [*as_user, initdb, "-D", str(data / "db"), "-U", "duelist", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_user,
            pg_ctl,
            "-D",
            str(data / "db"),
            "-l",
            str(data / "log"),
            "-w",
            "-o",
            f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://duelist@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data / "db"), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def test_two_workers_share_one_study(tmp_path, postgres_url) -> None:
    import optuna

    # create the study once, before the workers start (the documented way to avoid a creation race)
    created = subprocess.run(
        [
            str(Path(sys.executable).parent / "optuna"),
            "create-study",
            "--study-name",
            "shared",
            "--storage",
            postgres_url,
            "--direction",
            "maximize",
            "--skip-if-exists",
        ],
        capture_output=True,
        text=True,
    )
    assert created.returncode == 0, created.stderr[-3000:]
    space = (
        "hydra.sweeper.params={trainer.lr: 'choice(1e-4, 3e-4, 1e-3)', trainer.head_lr: 'choice(1e-3)', "
        "trainer.epochs: 'choice(1)', trainer.grad_accum: 'choice(1, 2)'}"
    )
    env = {**os.environ, "OPTUNA_STORAGE": postgres_url, "PYTHONUNBUFFERED": "1"}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "train.py"),
                "-m",
                "sweep=optim",
                *[a for a in TINY if not a.startswith("trainer.lr=")],
                "trainer.max_steps=2",
                "trainer.eval_every=1",
                "hydra.sweeper.pruner.type=median",  # every job reports each validation to its own trial ...
                "hydra.sweeper.pruner.n_startup_trials=100",  # ... and none is cut: the values stay comparable
                space,
                "hydra.sweeper.study_name=shared",
                "hydra.sweeper.n_trials=2",
                f"hydra.sweep.dir={tmp_path / f'w{i}'}",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for w in workers:
        out, err = w.communicate(timeout=600)
        assert w.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.trials
    assert len(trials) == 4 and sorted(t.number for t in trials) == [0, 1, 2, 3]  # none lost, none duplicated
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert study.best_value == max(t.value for t in trials)
    # each worker's own run dirs hold its two trials, and their metrics agree with the study's values
    import json

    values = sorted(json.loads(p.read_text())["val/accuracy"] for p in tmp_path.glob("w*/*/metrics.json"))
    assert values == sorted(t.value for t in trials)
    for t in trials:  # with two workers at once, each job found its own trial: the curve it reported is its run's
        curve = json.loads((Path(t.system_attrs["run_dir"]) / "history.json").read_text())["val/accuracy"]
        assert [[step, value] for step, value in sorted(t.intermediate_values.items())] == curve
