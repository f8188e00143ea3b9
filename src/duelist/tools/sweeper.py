"""The Optuna sweeper of ``python train.py -m sweep=...``: Hydra's Optuna sweeper, safe against workers that die.

Hydra's sweeper asks Optuna for trials and tells it the results, so a worker killed in the middle of a trial (a
preempted node, a closed Colab, ``kill -9``) leaves that trial RUNNING forever. Here every trial sends a heartbeat to
the study's storage while it runs (``heartbeat_interval`` seconds); a trial silent for ``grace_period`` seconds is
failed by the next sweep command on that study (any worker), and Optuna's ``RetryFailedTrialCallback`` queues it
again with the same parameters (up to ``max_retry`` times). The retry runs in the run dir of the trial it repeats,
so training continues from that run's last saved state (``trainer.resume=auto``, :mod:`duelist.runs.states`).

Every trial's run dir is recorded in the study (system attribute ``run_dir``).
"""

from __future__ import annotations

import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import optuna
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from optuna.exceptions import ExperimentalWarning
from optuna.trial import Trial

log = logging.getLogger(__name__)

RUN_DIR = "run_dir"  # the system attribute that records a trial's run dir (copied to its retries by Optuna)


@dataclass
class DuelistOptunaSweeperConf(OptunaSweeperConf):
    """``hydra/sweeper=duelist_optuna``: every setting of Hydra's Optuna sweeper, plus the three below."""

    _target_: str = "hydra_plugins.duelist_sweeper.DuelistOptunaSweeper"  # Hydra loads sweepers from hydra_plugins only
    heartbeat_interval: int = 60  # seconds between a running trial's heartbeats (0: no heartbeats, no retries)
    grace_period: int = 300  # a RUNNING trial without a heartbeat for this long is failed and retried
    max_retry: int = 2  # how many times one trial is retried


def quoted(value: Any) -> str:
    """A Hydra override value that stays one literal string (a path with spaces, quotes or ``=``)."""
    return "'" + str(value).replace("'", "\\'") + "'"


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Fail the study's RUNNING trials whose heartbeat stopped and queue each again (the storage's failed-trial
    callback: ``RetryFailedTrialCallback``); returns their numbers. Several workers may find the same stale trial at
    once: a trial another worker failed first (Optuna refuses to update a finished trial) is theirs, not an error."""
    storage = study._storage  # Optuna wraps an RDB storage in a cache, which knows how to reach it (_backend)
    rdb = getattr(storage, "_backend", storage)
    if not (isinstance(rdb, optuna.storages.RDBStorage) and storage.is_heartbeat_enabled()):
        return []
    failed = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        for trial_id in rdb._get_stale_trial_ids(study._study_id):
            try:
                if storage.set_trial_state(trial_id, optuna.trial.TrialState.FAIL):
                    failed.append(trial_id)
            except RuntimeError:  # already finished: another worker failed it first
                continue
        retry = storage.get_failed_trial_callback()
        for trial_id in failed:
            trial = storage.get_trial(trial_id)
            if retry is not None:
                retry(study, trial)
    return [storage.get_trial(trial_id).number for trial_id in failed]


class RetryingSweeperImpl(OptunaSweeperImpl):
    def __init__(
        self, heartbeat_interval: int, grace_period: int, max_retry: int, storage: Optional[Any], **kwargs: Any
    ) -> None:
        super().__init__(storage=storage, **kwargs)
        self.heartbeat_interval = heartbeat_interval
        if heartbeat_interval > 0 and not (isinstance(storage, str) and not storage.startswith("redis")):
            log.warning(
                "hydra.sweeper.storage=%s: heartbeats need an RDB URL (sqlite, postgresql, mysql); a trial whose "
                "worker dies "
                "stays RUNNING",
                storage,
            )
        elif heartbeat_interval > 0:
            if grace_period <= heartbeat_interval:
                raise ValueError(
                    f"hydra.sweeper.grace_period={grace_period} must be longer than "
                    f"heartbeat_interval={heartbeat_interval}"
                )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                self.storage = optuna.storages.RDBStorage(
                    storage,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=max_retry),
                )

    def _heartbeats(self) -> bool:
        return isinstance(self.storage, optuna.storages.RDBStorage) and self.storage.is_heartbeat_enabled()

    def _fail_stale_trials(self, study: optuna.Study) -> None:
        for number in fail_stale_trials(study):
            log.warning(
                "trial %s stopped sending heartbeats (its worker died): failed, and queued again with the same "
                "parameters",
                number,
            )

    def sweep(self, arguments: List[str]) -> None:
        if self._heartbeats() and self.study_name is not None:
            try:  # before the first trial: the retries of dead trials go first
                self._fail_stale_trials(optuna.load_study(study_name=self.study_name, storage=self.storage))
            except KeyError:
                pass  # a new study: nothing can be stale
        super().sweep(arguments)

    def _configure_trials(
        self, trials: List[Trial], search_space_distributions: Dict[str, Any], fixed_params: Dict[str, Any]
    ) -> Sequence[Sequence[str]]:
        overrides = super()._configure_trials(trials, search_space_distributions, fixed_params)
        assert self.config is not None and self.job_idx is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        out = []
        for i, (trial, trial_overrides) in enumerate(zip(trials, overrides)):
            recorded = trial.system_attrs.get(RUN_DIR)  # a retry: the run dir of the trial it repeats
            run_dir = (
                Path(recorded) if recorded else sweep_dir / str(trial.number)
            )  # unique within the study, across commands
            if recorded:  # RetryFailedTrialCallback names the first failed trial in system attribute failed_trial
                log.info(
                    "trial %d retries trial %s: it continues in %s",
                    trial.number,
                    trial.system_attrs.get("failed_trial"),
                    run_dir,
                )
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    trial.set_system_attr(RUN_DIR, str(run_dir))
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
            self._fail_stale_trials(trials[0].study)  # another worker's dead trials: queued for the next ask
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
                except (
                    Exception
                ) as exc:  # a locked database, a dropped connection: keep beating, or the trial goes stale
                    log.warning(
                        "heartbeat of trial id %d failed (%s: %s); retrying in %d s",
                        trial_id,
                        type(exc).__name__,
                        exc,
                        self.heartbeat_interval,
                    )

        threading.Thread(target=beat, name=f"optuna-heartbeat-{trial_id}", daemon=True).start()
