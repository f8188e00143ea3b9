"""The Optuna sweeper of ``python train.py -m sweep=...``: Hydra's Optuna sweeper (the 1.4 line, Optuna >= 4.9), safe
against workers that die, and with pruning.

**Dead workers.** Hydra's sweeper asks Optuna for trials and tells it the results, so a worker killed in the middle of
a trial (a preempted node, a closed Colab, ``kill -9``) would leave that trial RUNNING forever. Here every trial sends
a heartbeat to the study's storage while it runs (``heartbeat_interval`` seconds); a trial silent for
``grace_period`` seconds is failed by the next sweep command on that study (any worker), and queued again with the
same parameters (Optuna's ``RetryHeartbeatStaleTrialCallback``, up to ``max_retry`` times). The retry runs in the run
dir of the trial it repeats, so training continues from that run's last saved state (``trainer.resume=auto``,
:mod:`duelist.runs.states`).

**Pruning.** Every training job of a sweep is its trial (:class:`SweepTrial`, found by its run dir): it reports the
optimized metric at each validation, and stops when the study's pruner (``hydra.sweeper.pruner``: none | median |
hyperband) says so. The job marks its run dir pruned and tells the study PRUNED itself (the steps it ran are the
trial's user attribute ``steps``); the sweeper then leaves that trial as it is.

Every trial's run dir is recorded in the study (system attribute ``run_dir``). The tell loop is ours (Hydra's would
record a pruned trial COMPLETE); the search space, trial overrides and samplers are Hydra's.
"""

from __future__ import annotations

import functools
import logging
import threading
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional, Sequence

import optuna
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from omegaconf import OmegaConf
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from duelist.core.errors import DuelistError
from duelist.runs.run_dir import RunDir

log = logging.getLogger(__name__)

RUN_DIR = "run_dir"  # the system attribute that records a trial's run dir (copied to its retries by Optuna)
STEPS = "steps"  # the user attribute of a pruned trial: the optimizer steps it ran


class PrunerType(Enum):
    none = "none"  # every trial trains to the end
    median = "median"  # stop a trial whose metric is worse than the median of earlier trials at the same step
    hyperband = "hyperband"  # successive halving over brackets of step budgets


@dataclass
class PrunerConf:
    """``hydra.sweeper.pruner``: which trials stop early (a step is an optimizer step; a trial reports at every
    validation, ``trainer.eval_every``)."""

    type: PrunerType = PrunerType.none  # none | median | hyperband
    n_startup_trials: int = 4  # median: trials that finish before any trial is pruned
    n_warmup_steps: int = 0  # median: a trial is not pruned before this optimizer step
    interval_steps: int = 1  # median: compare at every n-th reported step
    n_min_trials: int = 1  # median: trials that reported a step before it is compared
    min_resource: int = 1  # hyperband: optimizer steps every trial gets before its first rung
    max_resource: Optional[int] = None  # hyperband: the optimizer steps of a whole trial (required: its brackets)
    reduction_factor: int = 3  # hyperband: 1 in reduction_factor trials goes on at each rung


@dataclass
class DuelistOptunaSweeperConf(OptunaSweeperConf):
    """``hydra/sweeper=duelist_optuna``: every setting of Hydra's Optuna sweeper, plus the ones below. The sampler
    defaults to TPE, multivariate, with a constant liar (workers running at once do not draw the same point)."""

    _target_: str = "hydra_plugins.duelist_sweeper.DuelistOptunaSweeper"  # Hydra loads sweepers from hydra_plugins only
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe_multivariate"}])
    heartbeat_interval: int = 60  # seconds between a running trial's heartbeats (0: no heartbeats, no retries)
    grace_period: int = 300  # a RUNNING trial without a heartbeat for this long is failed and retried
    max_retry: int = 2  # how many times one trial is retried
    pruner: PrunerConf = field(default_factory=PrunerConf)  # stop trials that fall behind (hydra.sweeper.pruner.type)


def quoted(value: Any) -> str:
    """A Hydra override value that stays one literal string (a path with spaces, quotes or ``=``)."""
    return "'" + str(value).replace("'", "\\'") + "'"


def pruner_type(conf: Any) -> PrunerType:
    """``conf.type`` as a :class:`PrunerType` (a config holds the member or its name)."""
    return PrunerType[str(getattr(conf.type, "name", conf.type))]


def make_pruner(conf: Any) -> optuna.pruners.BasePruner:
    """The Optuna pruner ``hydra.sweeper.pruner`` describes."""
    kind = pruner_type(conf)
    if kind == PrunerType.median:
        return optuna.pruners.MedianPruner(
            n_startup_trials=conf.n_startup_trials,
            n_warmup_steps=conf.n_warmup_steps,
            interval_steps=conf.interval_steps,
            n_min_trials=conf.n_min_trials,
        )
    if kind == PrunerType.hyperband:
        if not isinstance(conf.max_resource, int) or conf.max_resource < 1:
            raise DuelistError(
                f"hydra.sweeper.pruner.max_resource={conf.max_resource}: hyperband needs the optimizer steps of a "
                "whole trial (trainer.max_steps, or the 'optimizer steps' a run's log shows): every job builds the "
                "pruner again, and with 'auto' each recomputed its brackets from whatever trials had finished by then"
            )
        return optuna.pruners.HyperbandPruner(
            min_resource=conf.min_resource, max_resource=conf.max_resource, reduction_factor=conf.reduction_factor
        )
    return optuna.pruners.NopPruner()


def is_rdb_url(storage: Any) -> bool:
    """A database URL (sqlite, postgresql, mysql): the storage that heartbeats and the training jobs' reports need."""
    return isinstance(storage, str) and not storage.startswith("redis")


def rdb_storage(url: str, heartbeat_interval: int = 0, grace_period: int = 0, max_retry: int = 0) -> Any:
    """The study storage at ``url`` (heartbeats when ``heartbeat_interval`` > 0). A storage written by an older Optuna
    (2.x) is refused in one line that gives the one command that upgrades it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            if heartbeat_interval <= 0:
                return optuna.storages.RDBStorage(url)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=RetryInRunDir(max_retry),
            )
    except RuntimeError as err:
        if "storage upgrade" not in str(err):
            raise
        raise DuelistError(
            f"{url}: a study storage written by an older Optuna; upgrade it once (copy the file first): "
            f"optuna storage upgrade --storage {url}"
        ) from err


class RetryInRunDir(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial whose heartbeat stopped: a WAITING copy with its parameters and system attributes (the
    run dir); each retry is logged, and remembered for :func:`fail_stale_trials`."""

    def __init__(self, max_retry: int) -> None:
        super().__init__(max_retry=max_retry)  # its curve starts again from the state it resumes
        self.max_retry = max_retry
        self.failed: list[int] = []

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.failed.append(trial.number)
        if len(trial.system_attrs.get("retry_history", [])) >= self.max_retry:
            log.warning(
                "trial %s stopped sending heartbeats (its worker died): failed; retried %d times already, not again",
                trial.number,
                self.max_retry,
            )
        else:
            log.warning(
                "trial %s stopped sending heartbeats (its worker died): failed, and queued again with the same "
                "parameters",
                trial.number,
            )
        super().__call__(study, trial)


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Fail the study's RUNNING trials whose heartbeat stopped and queue each again; returns their numbers. Several
    workers may find the same stale trial at once: the one that fails it first retries it, the others skip it."""
    storage = study._storage  # Optuna wraps an RDB storage in a cache; heartbeats are the RDB's
    callback = storage.get_heartbeat_stale_trial_callback() if hasattr(storage, "_backend") else None
    if not isinstance(callback, RetryInRunDir):
        return []
    before = len(callback.failed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return callback.failed[before:]


class SweepTrial:
    """The Optuna trial a training job of a sweep runs as: :class:`duelist.models.interface.Trial` for the training
    loop (report each validation, stop when the pruner says so)."""

    def __init__(self, study: optuna.Study, trial_id: int) -> None:
        self.study = study
        self.trial = optuna.trial.Trial(study, trial_id)

    def should_stop(self, step: int, value: float) -> bool:
        self.trial.report(value, step)
        return self.trial.should_prune()

    def pruned(self, step: int) -> None:
        """Tell the study; a failed report (a locked or unreachable database) is logged and left to the sweeper, which
        finds the run dir marked pruned (``pruned.json``) when the job returns."""
        try:
            self.trial.set_user_attr(STEPS, step)
            self.study.tell(self.trial, state=TrialState.PRUNED, skip_if_finished=True)
        except Exception as exc:
            log.warning(
                "trial %d: could not record PRUNED at step %d (%s: %s); the sweeper records it from the run dir",
                self.trial.number,
                step,
                type(exc).__name__,
                exc,
            )
            return
        log.info("trial %d: recorded PRUNED at step %d", self.trial.number, step)


def sweep_trial(hydra_config: Any, run_dir: str | Path) -> SweepTrial | None:
    """The trial a job of ``hydra/sweeper=duelist_optuna`` runs as (the RUNNING trial whose run dir is ``run_dir``),
    with the study's pruner; None outside such a sweep (a plain run, a ``-m`` multirun)."""
    from hydra.types import RunMode

    sweeper = hydra_config.sweeper
    if hydra_config.mode != RunMode.MULTIRUN or sweeper.get("_target_") != DuelistOptunaSweeperConf._target_:
        return None
    storage = sweeper.storage
    if not is_rdb_url(storage) or not sweeper.study_name:
        return None  # an in-memory study, or one Optuna named itself, is the sweeper's alone
    study = optuna.load_study(
        study_name=sweeper.study_name, storage=rdb_storage(storage), pruner=make_pruner(sweeper.pruner)
    )
    here = str(Path(run_dir).resolve())
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.system_attrs.get(RUN_DIR) == here:
            return SweepTrial(study, trial._trial_id)
    log.warning("no RUNNING trial of study %s runs in %s: this job reports nothing", sweeper.study_name, here)
    return None


class RetryingSweeperImpl(OptunaSweeperImpl):
    def __init__(
        self,
        heartbeat_interval: int,
        grace_period: int,
        max_retry: int,
        pruner: Any,
        storage: Optional[Any],
        **kwargs: Any,
    ) -> None:
        super().__init__(storage=storage, **kwargs)
        self.heartbeat_interval = heartbeat_interval
        self.pruner = pruner
        rdb = is_rdb_url(storage)
        if heartbeat_interval > 0 and not rdb:
            log.warning(
                "hydra.sweeper.storage=%s: heartbeats need an RDB URL (sqlite, postgresql, mysql); a trial whose "
                "worker dies stays RUNNING",
                storage,
            )
        if heartbeat_interval > 0 and rdb and grace_period <= heartbeat_interval:
            raise DuelistError(
                f"hydra.sweeper.grace_period={grace_period} must be longer than heartbeat_interval={heartbeat_interval}"
            )
        if pruner_type(pruner) != PrunerType.none and not rdb:
            raise DuelistError(
                f"hydra.sweeper.pruner.type={pruner_type(pruner).name} needs hydra.sweeper.storage to be an RDB URL "
                "(sqlite, postgresql, mysql): the training jobs report to the study there"
            )
        make_pruner(pruner)  # its settings, checked before the first trial
        if rdb:
            self.storage = rdb_storage(storage, heartbeat_interval, grace_period, max_retry)

    def _heartbeats(self) -> bool:
        return (
            isinstance(self.storage, optuna.storages.RDBStorage) and self.storage.get_heartbeat_interval() is not None
        )

    def _configure_trials(
        self,
        trials: List[optuna.trial.Trial],
        search_space_distributions: dict[str, Any],
        fixed_params: dict[str, Any],
        fixed_overrides: List[str],
    ) -> Sequence[Sequence[str]]:
        overrides = super()._configure_trials(trials, search_space_distributions, fixed_params, fixed_overrides)
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        out = []
        for trial, trial_overrides in zip(trials, overrides):
            attrs = trial.study._storage.get_trial_system_attrs(trial._trial_id)
            recorded = attrs.get(RUN_DIR)  # a retry: the run dir of the trial it repeats
            run_dir = Path(recorded) if recorded else sweep_dir / str(trial.number)  # unique in the study
            if recorded:  # the retry callback names the first failed trial in system attribute failed_trial
                log.info(
                    "trial %d retries trial %s: it continues in %s",
                    trial.number,
                    attrs.get("failed_trial"),
                    run_dir,
                )
            else:
                trial.study._storage.set_trial_system_attr(trial._trial_id, RUN_DIR, str(run_dir))
            out.append(
                (
                    *trial_overrides,
                    f"hydra.sweep.dir={quoted(run_dir.parent)}",
                    f"hydra.sweep.subdir={quoted(run_dir.name)}",
                )
            )
            if self._heartbeats():
                self._start_heartbeat(trial._trial_id)
        if trials and self._heartbeats():
            fail_stale_trials(trials[0].study)  # another worker's dead trials: queued for the next ask
        return out

    def _start_heartbeat(self, trial_id: int) -> None:
        """Beat now (a trial killed within its first interval must still go stale), then every interval until the
        trial is finished; a daemon thread, so it dies with the process, as it should."""
        storage = self.storage
        storage.record_heartbeat(trial_id)

        def beat() -> None:
            while True:
                threading.Event().wait(self.heartbeat_interval)
                try:
                    if storage.get_trial(trial_id).state.is_finished():
                        return
                    storage.record_heartbeat(trial_id)
                except Exception as exc:  # a locked database, a dropped connection: keep beating, or it goes stale
                    log.warning(
                        "heartbeat of trial id %d failed (%s: %s); retrying in %d s",
                        trial_id,
                        type(exc).__name__,
                        exc,
                        self.heartbeat_interval,
                    )

        threading.Thread(target=beat, name=f"optuna-heartbeat-{trial_id}", daemon=True).start()

    def sweep(self, arguments: List[str]) -> None:
        """Hydra's sweep (the 1.4 line's ``OptunaSweeperImpl.sweep``, re-checked when it changes): the search space
        from the params and the command line, the grid sampler's size, then ask / launch / tell in batches of
        ``n_jobs``; ours adds the pruner, the stale trials first, and tells that keep a pruned trial PRUNED."""
        assert self.config is not None and self.launcher is not None and self.job_idx is not None
        self._process_searchspace_config()
        distributions, fixed_params, fixed_overrides = create_params_from_overrides(
            [*self._parse_sweeper_params_config(), *arguments]
        )
        for name in fixed_params:  # a value given on the command line is not searched
            distributions.pop(name, None)
        if isinstance(self.sampler, functools.partial) and self.sampler.func == optuna.samplers.GridSampler:
            grid = {name: self._to_grid_sampler_choices(d) for name, d in distributions.items()}
            self.sampler = self.sampler(grid)
            points = 1
            for choices in grid.values():
                points *= len(choices)
            self.n_trials = min(self.n_trials, points)
        directions = self._get_directions()
        if len(directions) != 1:
            raise DuelistError(
                f"hydra.sweeper.direction={directions}: train.py returns one value (optimized_metric): give one"
            )
        if pruner_type(self.pruner) != PrunerType.none and {"trainer.grad_accum", "trainer.batch_size"} & set(
            distributions
        ):
            log.warning(
                "the pruner compares trials at the same optimizer step, and this search space varies the rows per step "
                "(trainer.grad_accum / trainer.batch_size): a step of one trial is not a step of another"
            )
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            sampler=self.sampler,
            pruner=make_pruner(self.pruner),
            directions=directions,
            load_if_exists=True,
        )
        log.info(
            "study %s (%s): %s sampler, %s pruner, %s",
            study.study_name,
            self.storage if isinstance(self.storage, str) else getattr(self.storage, "url", "in memory"),
            type(study.sampler).__name__,
            type(study.pruner).__name__,
            "/".join(directions),
        )
        if self._heartbeats():  # before the first trial: the retries of dead trials go first
            fail_stale_trials(study)
        left = self.n_trials
        while left > 0:
            with warnings.catch_warnings():  # Optuna warns that heartbeats are for Study.optimize: ours beat here
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trials = [study.ask() for _ in range(min(left, self.n_jobs))]
            overrides = self._configure_trials(trials, distributions, fixed_params, fixed_overrides)
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            failures = [e for e in (self._tell(study, t, r) for t, r in zip(trials, returns)) if e]
            if len(failures) / len(returns) > self.max_failure_rate:
                log.error(
                    "%d of %d trials failed; max_failure_rate=%s", len(failures), len(returns), self.max_failure_rate
                )
                for ret in returns:
                    ret.return_value  # noqa: B018 (raises the job's own exception, with its traceback)
            left -= len(trials)
        self._write_results(study)

    def _tell(self, study: optuna.Study, trial: optuna.trial.Trial, ret: Any) -> Exception | None:
        """Record a finished job: COMPLETE with its value, FAIL when it raised or returned no number; a trial its job
        recorded PRUNED stays PRUNED. Returns the failure, if any."""
        try:
            value = float(ret.return_value)
        except Exception as err:
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            log.warning("trial %d failed: %s", trial.number, err)
            return err
        told = study._storage.get_trial(trial._trial_id)
        if told.state == TrialState.PRUNED:  # its job told the study
            log.info("trial %d was pruned after %s steps", trial.number, told.user_attrs.get(STEPS, "?"))
            return None
        pruned = RunDir(told.system_attrs[RUN_DIR]).read_pruned() if RUN_DIR in told.system_attrs else None
        if pruned is not None:  # its job stopped it but could not tell the study
            study._storage.set_trial_user_attr(trial._trial_id, STEPS, pruned["step"])
            study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            log.info("trial %d was pruned after %d steps (recorded from its run dir)", trial.number, pruned["step"])
            return None
        try:
            study.tell(trial, values=value, skip_if_finished=True)
        except RuntimeError as err:  # the grid sampler stops the study at its last point
            if "Study.stop" not in str(err):
                raise
        return None

    def _write_results(self, study: optuna.Study) -> None:
        """``optimization_results.yaml`` in the sweep dir: the best parameters and value of the COMPLETE trials."""
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not done:
            log.warning("study %s has no COMPLETE trial yet", study.study_name)
            return
        best = study.best_trial
        results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
        log.info("best parameters: %s; best value: %s", best.params, best.value)
        OmegaConf.save(OmegaConf.create(results), f"{self.config.hydra.sweep.dir}/optimization_results.yaml")
