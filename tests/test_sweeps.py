"""Optuna sweeps through train.py: persisted SQLite study, failed trials recorded, resume adds trials, review page."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import CONF, TINY, html_tables, run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["lora", "optim", "data"])
@pytest.mark.parametrize("metric,direction", [("val/accuracy", "maximize"), ("val/log_loss", "minimize")])
def test_sweep_configs_compose_with_direction_from_metric(name: str, metric: str, direction: str) -> None:
    with initialize_config_dir(config_dir=str(CONF)):
        cfg = compose(
            config_name="train",
            overrides=[f"sweep={name}", f"optimized_metric={metric}", "model=tiny_gemma2"],
            return_hydra_config=True,
        )
    assert cfg.hydra.sweeper.direction == direction
    assert cfg.hydra.sweeper.study_name == name and cfg.hydra.sweeper.max_failure_rate == 1.0
    assert OmegaConf.select(cfg, "hydra.sweeper.params") and "sqlite" in cfg.hydra.sweeper.storage
    assert (
        cfg.hydra.sweeper._target_ == "hydra_plugins.duelist_sweeper.DuelistOptunaSweeper"
        and cfg.hydra.sweeper.heartbeat_interval == 60
    )
    assert cfg.hydra.sweeper.sampler.multivariate and cfg.hydra.sweeper.sampler.constant_liar
    assert cfg.hydra.sweeper.pruner.type.name == "none"


@pytest.mark.fast
@pytest.mark.parametrize(
    "choice,sampler", [("tpe_multivariate", "TPESampler"), ("gp", "GPSampler"), ("qmc", "QMCSampler")]
)
def test_samplers_of_optuna_5_are_built(choice: str, sampler: str) -> None:
    from hydra.utils import instantiate
    from optuna.exceptions import ExperimentalWarning

    from duelist.core.hydra_setup import TRUSTED_TARGETS

    with initialize_config_dir(config_dir=str(CONF)):
        cfg = compose(
            config_name="train",
            overrides=["sweep=lora", f"hydra/sweeper/sampler={choice}", "hydra.sweeper.sampler.seed=3"],
            return_hydra_config=True,
        )
    if choice == "qmc":  # Optuna tells the user who picks it that QMC is experimental: expected here, not noise
        with pytest.warns(ExperimentalWarning, match="QMCSampler is experimental"):
            built = instantiate(cfg.hydra.sweeper.sampler, _execution_whitelist_=TRUSTED_TARGETS)
    else:
        built = instantiate(cfg.hydra.sweeper.sampler, _execution_whitelist_=TRUSTED_TARGETS)
    assert type(built).__name__ == sampler


def test_slurm_launcher_composes() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=str(CONF)):
        cfg = compose(
            config_name="train",
            overrides=["sweep=lora", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "model=tiny_gemma2"],
            return_hydra_config=True,
        )
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert (
        cfg.hydra.launcher.partition == "gpu"
        and cfg.hydra.launcher.gpus_per_node == 1
        and cfg.hydra.launcher.timeout_min == 720
        and cfg.hydra.launcher.max_num_timeout == 3  # a job stopped at timeout_min is queued again, in its run dir
    )


def test_study_persists_records_failures_and_resumes(tmp_path) -> None:
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = [
        "-m",
        "sweep=optim",
        *[a for a in TINY if not a.startswith("trainer.lr=") and a != "logger=none"],
        "logger=wandb",
        "trainer.max_steps=3",
        "hydra.sweeper.study_name=t",
        f"hydra.sweeper.storage={storage}",
    ]
    # the two points of a grid; lr=1e12 blows the loss up to NaN: that trial fails and the study goes on (also when
    # it is the grid's last point, which stops the grid sampler's study)
    space = (
        "hydra.sweeper.params={trainer.lr: 'choice(3e-4, 1e12)', trainer.head_lr: 'choice(1e-3)', "
        "trainer.epochs: 'choice(1)', trainer.grad_accum: 'choice(1)'}"
    )
    res = run_cli(
        "train.py",
        [
            *common,
            space,
            "hydra/sweeper/sampler=grid",
            "hydra.sweeper.n_trials=2",
            f"hydra.sweep.dir={tmp_path / 'm1'}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    study = optuna.load_study(study_name="t", storage=storage)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL"]
    assert {t.params["trainer.lr"]: t.state.name for t in study.trials} == {1e12: "FAIL", 3e-4: "COMPLETE"}
    assert (tmp_path / "m1" / "review.html").is_file(), res.stdout[-3000:] + res.stderr[-3000:]
    page = (tmp_path / "m1" / "review.html").read_text()  # the review page of the multirun, with the study's trials
    assert (
        "<td>FAIL</td>" in page
        and "<td>COMPLETE</td>" in page
        and "Best run" in page
        and "Optimisation history" in page
    )
    run_cfg = OmegaConf.load(next((tmp_path / "m1").glob("*/config.yaml")))
    assert run_cfg.logger.group == "t"  # W&B group = study name

    # the same study again (same search space, default TPE sampler) resumes it and adds trials
    res = run_cli(
        "train.py", [*common, space, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path / 'm2'}"], cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(optuna.load_study(study_name="t", storage=storage).trials) == 3

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "duelist",
            "review",
            "study=t",
            f"storage={storage}",
            "roots=[m1,m2]",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    import hashlib

    page = (
        tmp_path / "sweeps" / f"t-{hashlib.sha256(storage.encode()).hexdigest()[:8]}.html"
    ).read_text()  # both invocations' runs, one page per storage
    trials = optuna.load_study(study_name="t", storage=storage).trials
    complete = sum(t.state.name == "COMPLETE" for t in trials)  # the resumed TPE trial may draw the failing lr too
    assert len(html_tables(page)["runs"]) == complete >= 1 and len(html_tables(page)["trials"]) == len(trials) == 3
    missing = subprocess.run(
        [sys.executable, "-m", "duelist", "review", "study=nope", f"storage={storage}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert missing.returncode == 2 and "study 'nope' not found" in missing.stderr
    nodb = subprocess.run(
        [sys.executable, "-m", "duelist", "review", "study=t"], capture_output=True, text=True, cwd=tmp_path
    )
    assert (
        nodb.returncode == 2 and "no study database" in nodb.stderr and not (tmp_path / "sweeps" / "optuna.db").exists()
    )


def test_trial_of_a_killed_worker_is_retried_and_resumes_in_its_run_dir(tmp_path) -> None:
    """The worker dies (SIGKILL) in the middle of trial 0; its heartbeats stop; the next command on the study fails it,
    retries it with the same parameters in trial 0's run dir, and training continues from the state saved there."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    space = (
        "hydra.sweeper.params={trainer.lr: 'choice(1e-4, 3e-4)', trainer.head_lr: 'choice(1e-3)', "
        "trainer.epochs: 'choice(1)', trainer.grad_accum: 'choice(2)'}"
    )
    common = [
        "-m",
        "sweep=optim",
        *TINY,
        "trainer.save_every=2",
        space,
        "hydra.sweeper.n_trials=1",
        "hydra.sweeper.study_name=k",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=3",
    ]
    dead = run_cli(
        "train.py",
        [*common, f"hydra.sweep.dir={tmp_path / 'm1'}"],
        cwd=tmp_path,
        env={"DUELIST_TEST_KILL_AT_BATCH": "5"},
    )  # in step 3
    assert dead.returncode == -9, dead.stderr[-3000:]
    (first,) = optuna.load_study(study_name="k", storage=storage).trials
    assert first.state.name == "RUNNING" and first.system_attrs["run_dir"] == str(tmp_path / "m1" / "0")
    assert [p.name for p in (tmp_path / "m1" / "0" / "states").iterdir()] == ["step-00000002"]

    import time

    time.sleep(4)  # past the grace period
    res = run_cli("train.py", [*common, f"hydra.sweep.dir={tmp_path / 'm2'}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert (
        "trial 0 stopped sending heartbeats" in out
        and f"trial 1 retries trial 0: it continues in {tmp_path / 'm1' / '0'}" in out
    )
    assert "resuming from" in out and "step-00000002 (step 2, epoch 0)" in out
    failed, retry = optuna.load_study(study_name="k", storage=storage).trials
    assert (failed.state.name, retry.state.name) == ("FAIL", "COMPLETE") and retry.params == failed.params
    assert retry.system_attrs["failed_trial"] == 0
    metrics = (tmp_path / "m1" / "0" / "metrics.json").read_text()
    import json

    assert json.loads(metrics)["val/accuracy"] == retry.value and not (tmp_path / "m1" / "0" / "states").exists()


@pytest.mark.fast
def test_paths_in_sweep_overrides_stay_literal() -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from duelist.sweeps.sweeper import quoted

    parser = OverridesParser.create()
    for path in ("/tmp/a b/c", "/tmp/it's/x=1,2", "/tmp/back\\slash"):
        assert parser.parse_override(f"hydra.sweep.dir={quoted(path)}").value() == path


@pytest.mark.fast
def test_two_workers_that_find_the_same_dead_trial_retry_it_once(tmp_path) -> None:
    """Two sweep workers (two storages on one SQLite file) see the same stale trial: the first fails it and queues
    the retry, the second finds it already failed and carries on (Optuna would raise: it cannot update a finished
    trial)."""
    import time
    import warnings

    import optuna

    from duelist.sweeps.sweeper import fail_stale_trials, rdb_storage

    url = f"sqlite:///{tmp_path / 'study.db'}"
    warnings.simplefilter("ignore")

    def worker() -> optuna.Study:  # what the sweeper builds: heartbeats, retries in the run dir
        storage = rdb_storage(url, heartbeat_interval=1, grace_period=2, max_retry=2)
        return optuna.create_study(study_name="s", storage=storage, load_if_exists=True)

    first, second = worker(), worker()
    dead = first.ask()  # a running trial whose worker died after its last heartbeat
    first._storage._backend.set_trial_system_attr(dead._trial_id, "run_dir", str(tmp_path / "0"))
    first._storage.record_heartbeat(dead._trial_id)
    time.sleep(3)  # past the grace period
    backend = second._storage._backend
    seen = backend._get_stale_trial_ids(second._study_id)  # both workers look at the same moment ...
    assert fail_stale_trials(first) == [0]  # ... the first fails it and queues the retry first
    backend._get_stale_trial_ids = lambda study_id: seen
    assert fail_stale_trials(second) == []  # already failed by the other worker: not an error, not a second retry
    states = [t.state.name for t in second.get_trials(deepcopy=False)]
    assert states == ["FAIL", "WAITING"]  # one retry queued, in the dead trial's run dir
    assert second.get_trials()[1].system_attrs["run_dir"] == str(tmp_path / "0")
