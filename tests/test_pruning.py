"""Pruning in Optuna sweeps (``hydra.sweeper.pruner``), and studies written by Optuna 2.10."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, TINY, html_tables, run_cli

OLD_STUDY = ROOT / "tests" / "data" / "optuna-2.10.1-lora-study.db"

# one trial clearly worse than the other: head_lr=10 sends the head's logits far out, so its validation log loss is
# about 7 at the first validation, against 0.69 for head_lr=1e-3
SPACE = (
    "hydra.sweeper.params={trainer.lr: 'choice(3e-4)', trainer.head_lr: 'choice(1e-3, 10.0)', "
    "trainer.epochs: 'choice(1)', trainer.grad_accum: 'choice(1)'}"
)
COMMON = [
    *[a for a in TINY if not a.startswith("trainer.lr=")],
    "trainer.eval_every=2",
    "trainer.save_every=0",
    "optimized_metric=val/log_loss",
]


@pytest.mark.slow
def test_median_pruner_stops_the_worse_trial_and_marks_its_run_dir(tmp_path) -> None:
    """Through hydra-submitit-launcher's local executor: every trial runs in a process of its own, as on SLURM, and
    finds its trial in the study's storage."""
    import optuna

    from duelist.runs.registry import find_runs

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="p", storage=storage, direction="minimize")
    study.enqueue_trial({"trainer.head_lr": 1e-3})  # first the good trial (it completes: the median's reference) ...
    study.enqueue_trial({"trainer.head_lr": 10.0})  # ... then the bad one
    res = run_cli(
        "train.py",
        [
            "-m",
            "sweep=optim",
            *COMMON,
            SPACE,
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.study_name=p",
            f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.pruner.type=median",
            "hydra.sweeper.pruner.n_startup_trials=1",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10",
            f"hydra.sweep.dir={tmp_path / 'm'}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    good, bad = optuna.load_study(study_name="p", storage=storage).trials
    assert (good.state.name, bad.state.name) == ("COMPLETE", "PRUNED")
    assert sorted(good.intermediate_values) == [2, 4, 6]  # every validation reported, the last one included
    assert list(bad.intermediate_values) == [2] and bad.user_attrs["steps"] == 2 and bad.value > 3
    assert bad.intermediate_values[2] > good.intermediate_values[2]

    run = tmp_path / "m" / "1"
    marked = json.loads((run / "pruned.json").read_text())
    assert marked["step"] == 2 and marked["metric"] == "val/log_loss" and marked["value"] == bad.value
    assert (run / marked["state"] / "state.json").is_file()  # resumable if asked: the state at the pruned step
    assert not (run / "metrics.json").exists() and not (run / "oof.parquet").exists()
    assert json.loads((run / "history.json").read_text())["val/log_loss"] == [[2, bad.value]]
    assert (tmp_path / "m" / "0" / "metrics.json").is_file()
    assert list(find_runs([str(tmp_path / "m")])["run_dir"]) == [str(tmp_path / "m" / "0")]  # the pruned run: never

    page = (tmp_path / "m" / "review.html").read_text()
    trials = {row["trial"]: row for row in html_tables(page)["trials"]}
    assert trials["1"]["state"] == "PRUNED" and trials["1"]["steps"] == "2" and trials["0"]["steps"] == "6"
    assert "Pruned: 1 trial, 2 optimizer steps in all, where whole trials would have run 6" in page
    assert f"optuna-dashboard {storage}" in page

    # outside the sweep the pruned run is not resumed by trainer.resume=auto: one line says how to go on
    again = [*COMMON, "trainer.lr=3e-4", "trainer.head_lr=10.0", "trainer.epochs=1", "trainer.grad_accum=1"]
    refused = run_cli("train.py", [*again, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr[-3000:]
    assert f"trainer.resume={run / marked['state']} continues it" in refused.stderr
    resumed = run_cli(
        "train.py", [*again, f"hydra.run.dir={run}", f"trainer.resume={run / marked['state']}"], cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step-00000002 (step 2, epoch 0)" in resumed.stdout + resumed.stderr
    assert (run / "metrics.json").is_file() and not (run / "pruned.json").exists()
    assert json.loads((run / "metrics.json").read_text())["best_step"] in (2, 4, 6)


@pytest.mark.fast
def test_only_jobs_of_an_optuna_sweep_are_trials(tmp_path) -> None:
    """A plain run and a ``-m`` multirun (basic sweeper) report to no study."""
    from hydra.types import RunMode

    from duelist.sweeps.sweeper import sweep_trial

    basic = {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "max_batch_size": None}
    for mode, sweeper in ((RunMode.RUN, basic), (RunMode.MULTIRUN, basic)):
        hydra_cfg = OmegaConf.create({"mode": mode, "sweeper": sweeper})
        assert sweep_trial(hydra_cfg, tmp_path) is None


@pytest.mark.fast
def test_pruners_from_the_config() -> None:
    import optuna
    from hydra import compose, initialize_config_dir

    from conftest import CONF
    from duelist.sweeps.sweeper import make_pruner

    def pruner(*overrides: str) -> optuna.pruners.BasePruner:
        with initialize_config_dir(config_dir=str(CONF)):
            cfg = compose(config_name="train", overrides=["sweep=lora", *overrides], return_hydra_config=True)
        return make_pruner(cfg.hydra.sweeper.pruner)

    assert isinstance(pruner(), optuna.pruners.NopPruner)  # the default: every trial runs to the end
    median = pruner("hydra.sweeper.pruner.type=median", "hydra.sweeper.pruner.n_warmup_steps=50")
    assert isinstance(median, optuna.pruners.MedianPruner) and median._n_warmup_steps == 50
    band = pruner("hydra.sweeper.pruner.type=hyperband", "hydra.sweeper.pruner.max_resource=900")
    assert isinstance(band, optuna.pruners.HyperbandPruner) and band._max_resource == 900
    with pytest.raises(Exception, match="hyperbnd"):  # a typo in a fixed choice fails at compose time
        pruner("hydra.sweeper.pruner.type=hyperbnd")


@pytest.mark.slow
def test_a_study_of_optuna_2_10_is_upgraded_by_one_command_then_resumed(tmp_path) -> None:
    """A study file written by Optuna 2.10.1 (three trials of a ``sweep=lora`` study, one FAIL; made with optuna 2.10.1
    and SQLAlchemy 1.4, the stack before this one): refused in one line naming the command, upgraded by it, then the
    review reads its trials and a sweep adds one."""
    db = tmp_path / "optuna.db"
    shutil.copy(OLD_STUDY, db)
    storage = f"sqlite:///{db}"
    review = [sys.executable, "-m", "duelist", "review", "study=lora", f"storage={storage}"]
    old = subprocess.run(review, capture_output=True, text=True, cwd=tmp_path)
    assert old.returncode == 2 and len(old.stderr.strip().splitlines()) == 1, old.stderr[-3000:]
    assert f"optuna storage upgrade --storage {storage}" in old.stderr
    sweep = [
        "-m",
        "sweep=lora",
        *TINY,
        "trainer.max_steps=2",
        "hydra.sweeper.n_trials=1",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweep.dir={tmp_path / 'm'}",
    ]
    refused = run_cli("train.py", sweep, cwd=tmp_path)
    assert refused.returncode == 2 and "optuna storage upgrade" in refused.stderr.strip().splitlines()[-1]
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr[-3000:]

    upgrade = subprocess.run(
        [str(Path(sys.executable).parent / "optuna"), "storage", "upgrade", "--storage", storage],
        capture_output=True,
        text=True,
    )
    assert upgrade.returncode == 0, upgrade.stderr[-3000:]
    res = run_cli("train.py", sweep, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    import optuna

    trials = optuna.load_study(study_name="lora", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[0].system_attrs["run_dir"] == "/old/multirun/lora/0" and trials[0].params["lora.r"] in (16, 32, 64)
    assert trials[3].system_attrs["run_dir"] == str(tmp_path / "m" / "3")
    page = subprocess.run(review, capture_output=True, text=True, cwd=tmp_path)
    assert page.returncode == 0, page.stderr[-3000:]


@pytest.mark.fast
def test_the_dashboard_serves_a_study_and_its_pruned_trial(tmp_path) -> None:
    """``optuna-dashboard STORAGE`` (the ``dashboard`` extra), the command the docs and the review page give."""
    pytest.importorskip("optuna_dashboard")
    import socket
    import time
    import urllib.request

    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="lora", storage=storage, direction="maximize")
    whole = study.ask()
    for step, value in ((10, 0.60), (20, 0.62)):
        whole.report(value, step)
    study.tell(whole, 0.62)
    cut = study.ask()
    cut.report(0.50, 10)
    study.tell(cut, state=optuna.trial.TrialState.PRUNED)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "optuna-dashboard"), storage, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(100):  # the server starts in about a second
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    summaries = json.load(r)["study_summaries"]
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail(f"optuna-dashboard did not answer: {server.stderr.read() if server.poll() is not None else ''}")
        (summary,) = summaries
        assert summary["study_name"] == "lora"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}?after=0") as r:
            trials = json.load(r)["trials"]
        assert [(t["state"], [v["step"] for v in t["intermediate_values"]]) for t in trials] == [
            ("Complete", [10, 20]),
            ("Pruned", [10]),
        ]
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.fast
def test_hyperband_prunes_from_the_jobs_side_with_its_default_settings(tmp_path) -> None:
    """The pruner as a job sees it: a study loaded from the storage with ``make_pruner`` of the config (its defaults,
    and the steps of a whole trial), reporting through :class:`SweepTrial`. Good trials (0.7) are never cut; some bad
    ones (0.3) are."""
    import warnings

    import optuna
    from hydra import compose, initialize_config_dir

    from conftest import CONF
    from duelist.sweeps.sweeper import SweepTrial, make_pruner

    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    with initialize_config_dir(config_dir=str(CONF)):
        cfg = compose(
            config_name="train",
            overrides=["sweep=lora", "hydra.sweeper.pruner.type=hyperband", "hydra.sweeper.pruner.max_resource=27"],
            return_hydra_config=True,
        )
    conf = cfg.hydra.sweeper.pruner
    url = f"sqlite:///{tmp_path / 'study.db'}"
    sweeper = optuna.create_study(study_name="h", storage=url, direction="maximize", pruner=make_pruner(conf))
    stopped = {}
    for n in range(12):
        trial = sweeper.ask()
        job = SweepTrial(optuna.load_study(study_name="h", storage=url, pruner=make_pruner(conf)), trial._trial_id)
        level = 0.7 if n % 2 == 0 else 0.3
        for step in range(1, 28):
            if job.should_stop(step, level + step / 1000):
                job.pruned(step)
                stopped[n] = step
                break
        else:
            sweeper.tell(trial, level)
    assert stopped and all(n % 2 == 1 for n in stopped)
    states = {t.number: t.state.name for t in sweeper.get_trials()}
    assert all(states[n] == "PRUNED" for n in stopped) and list(states.values()).count("COMPLETE") == 12 - len(stopped)


@pytest.mark.fast
def test_hyperband_brackets_do_not_move_as_trials_finish(tmp_path) -> None:
    """Every job loads the study with a pruner of its own: a trial's bracket must be the same in every one of them,
    whatever has finished since. With max_resource 'auto' each job derived the brackets from the longest trial that
    had finished by then (51 of 100 trials changed bracket after one longer trial finished); it is refused now."""
    import warnings

    import optuna

    from duelist.core.errors import DuelistError
    from duelist.sweeps.sweeper import PrunerConf, PrunerType, make_pruner

    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    with pytest.raises(DuelistError, match="max_resource=None: hyperband needs the optimizer steps of a whole trial"):
        make_pruner(PrunerConf(type=PrunerType.hyperband))
    conf = PrunerConf(type=PrunerType.hyperband, max_resource=30)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="b", storage=url, direction="maximize", pruner=make_pruner(conf))
    trials = [study.ask() for _ in range(100)]

    def brackets() -> list[int]:  # as a new job sees them: its own pruner over the study as it is now
        job = optuna.load_study(study_name="b", storage=url, pruner=make_pruner(conf))
        job.pruner._try_initialization(job)
        return [job.pruner._get_bracket_id(job, t) for t in job.get_trials(deepcopy=False)]

    before = brackets()
    for step in range(1, 91):  # one trial runs three times longer than the others will
        trials[0].report(0.5, step)
    study.tell(trials[0], 0.5)
    study.tell(trials[1], 0.4)
    assert brackets() == before and len(set(before)) > 1


@pytest.mark.fast
def test_a_pruned_job_whose_report_failed_is_recorded_pruned_by_the_sweeper(tmp_path, monkeypatch) -> None:
    """A locked database when the job tells the study PRUNED: the job logs it and returns (its run dir is marked
    pruned); the sweeper then records PRUNED from the run dir instead of COMPLETE (or FAIL)."""
    import optuna

    from duelist.runs.run_dir import RunDir
    from duelist.sweeps.sweeper import RUN_DIR, STEPS, RetryingSweeperImpl, SweepTrial

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="p", storage=url, direction="maximize")
    trial = study.ask()
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    study._storage.set_trial_system_attr(trial._trial_id, RUN_DIR, str(run.path))
    job = SweepTrial(optuna.load_study(study_name="p", storage=url), trial._trial_id)

    def locked(*args, **kwargs):
        raise RuntimeError("database is locked")

    monkeypatch.setattr(job.study, "tell", locked)
    run.mark_pruned({"step": 4, "metric": "val/accuracy", "value": 0.41, "state": None})
    job.pruned(4)  # logged, not raised: the run protocol goes on to return the metric
    assert study._storage.get_trial(trial._trial_id).state.name == "RUNNING"

    class Returned:
        return_value = 0.41

    RetryingSweeperImpl._tell(None, study, trial, Returned())
    told = study._storage.get_trial(trial._trial_id)
    assert told.state.name == "PRUNED" and told.user_attrs[STEPS] == 4


@pytest.mark.fast
def test_a_pruned_run_dir_resumes_only_when_asked(tmp_path) -> None:
    """``trainer.resume=auto``: refused in one line outside a sweep; inside one (a retry of a trial whose worker died
    after its pruner stopped it) the decision stands and the trial is recorded pruned again."""
    from duelist.core.errors import DuelistError
    from duelist.runs.run_dir import RunDir
    from duelist.tasks.train import start_point

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    info = {"step": 30, "metric": "val/accuracy", "value": 0.4786, "state": "states/step-00000030"}
    run.mark_pruned(info)
    cfg = OmegaConf.create({"trainer": {"resume": "auto"}})
    assert start_point(cfg, run, None, 1, sweeping=True) == ({"pruned": info}, None)
    with pytest.raises(
        DuelistError, match=r"stopped it at step 30 \(val/accuracy=0.4786\); trainer.resume=.*step-00000030"
    ):
        start_point(cfg, run, None, 1)
    assert not run.is_finished() and run.read_pruned() == info


WORKER = """
import json, sys
sys.path.insert(0, {tests!r})
from conftest import compose_train
from duelist.core.hydra_setup import register_configs
from duelist.tasks.train import train

class StopAtTwo:  # rank 0's trial says stop at the first validation (step 2)
    def should_stop(self, step, value):
        return step == 2
    def pruned(self, step):
        open({told!r}, "a").write(str(step))

register_configs()
cfg = compose_train({overrides!r})
print(json.dumps({{"returned": train(cfg, {run!r}, trial=StopAtTwo())}}))
"""


@pytest.mark.slow
def test_two_processes_stop_together_when_rank_0s_trial_says_so(tmp_path) -> None:
    """DDP (2 CPU processes, gloo; the 2-GPU path): rank 0 alone asks its trial, every process follows. Without the
    broadcast rank 1 would train on alone and wait in the next gradient all-reduce until the timeout."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = [*TINY, "trainer.batch_size=4", "trainer.eval_every=2", "trainer.save_every=0"]
    overrides += ["trainer.strategy=ddp", "trainer.dist_timeout_min=1"]
    script = WORKER.format(
        tests=str(ROOT / "tests"), told=str(tmp_path / "told"), overrides=overrides, run=str(tmp_path / "run")
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            env={
                **os.environ,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = [w.communicate(timeout=300) for w in workers]
    for w, (out, err) in zip(workers, outs):
        assert w.returncode == 0, err[-3000:]
    pruned = json.loads((tmp_path / "run" / "pruned.json").read_text())
    assert pruned["step"] == 2 and (tmp_path / "run" / pruned["state"] / "state.json").is_file()
    assert (tmp_path / "told").read_text() == "2"  # told once, by rank 0
    assert json.loads(outs[0][0].strip().splitlines()[-1])["returned"] == pruned["value"]
    assert not (tmp_path / "run" / "metrics.json").exists()
