"""``train(cfg, run_dir)``: one training run from a composed config, the run protocol every kind of model goes through.

Writes into ``run_dir``: ``config.yaml`` (resolved), ``checkpoint/`` (the kept model), ``oof.parquet`` (its validation
predictions), ``history.json``, two charts, and ``metrics.json`` last (it marks the run finished). Returns the
optimised metric (what an Optuna sweep reads). How a kind trains is its own (:mod:`duelist.models.interface`).
"""

from __future__ import annotations

import logging
import random
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from duelist.core import plots
from duelist.core.errors import DuelistError
from duelist.core.files import shown
from duelist.core.logs import closing
from duelist.core.metrics import longer_answer_p_a
from duelist.core.progress import duration
from duelist.core.tracking import NullTracker, make_tracker
from duelist.data.pairs import prompt_keys
from duelist.data.splits import fingerprints, load_train_valid
from duelist.models.distributed import broadcast
from duelist.models.interface import Fitted, ModelKind, Pruned, Trial
from duelist.models.kinds import kind_of
from duelist.runs.run_dir import PRUNED, RunDir
from duelist.runs.states import (
    SavedState,
    check_same_config,
    check_same_data,
    clean_states,
    find_state,
    load_state,
    remove_states,
    resolved,
    restore_best,
    state_dirs,
)
from duelist.tasks.checks import check_train_config

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start_point(
    cfg: DictConfig, run: RunDir, kind: ModelKind, processes: int, sweeping: bool = False
) -> tuple[dict[str, Any], SavedState | None]:
    """Where training starts: ``{"finished": metric}`` (``trainer.resume=auto`` on a finished run with the same
    settings), ``{"pruned": pruned.json}`` (a sweep trial retried after its pruner stopped it; outside a sweep
    ``auto`` refuses a pruned run: it is continued only from a named state), ``{"state": path}`` (a saved state, also
    returned loaded) or ``{}`` (from scratch). The run dir is made
    consistent with it: states of an abandoned attempt (newer than the one resumed, or all when starting over),
    half-written states and a stale ``metrics.json`` are removed, so they can neither be resumed nor mark the run
    finished later. Settings the kind does not use may differ."""
    if cfg.trainer.resume == "auto" and run.is_finished():
        check_same_config(resolved(run.read_config()), cfg, run.path, processes, processes, kind.unused)
        return {"finished": float(run.read_metrics()[cfg.optimized_metric])}, None
    pruned = run.read_pruned()
    if pruned is not None and cfg.trainer.resume == "auto":
        if sweeping:  # the retry of a trial whose worker died after its pruner stopped it: the decision stands
            return {"pruned": pruned}, None
        go_on = f"trainer.resume={run.path / pruned['state']} continues it, " if pruned.get("state") else ""
        raise DuelistError(
            f"{run.path}: its sweep's pruner stopped it at step {pruned['step']} ({pruned['metric']}="
            f"{pruned['value']:.4f}); {go_on}trainer.resume=never starts over"
        )
    state = find_state(cfg, run, processes, kind.unused)
    run.unmark_pruned()  # asked to continue (or start over): no longer a pruned run
    clean_states(run, keep_up_to=state.path if state is not None else None)
    run.metrics_file.unlink(missing_ok=True)
    return ({"state": str(state.path)} if state is not None else {}), state


def train(cfg: DictConfig, run_dir: str | Path, trial: Trial | None = None) -> float:
    """Train one model as configured; returns ``cfg.optimized_metric`` of the kept model. ``trial``: the sweep trial
    this run is (:mod:`duelist.sweeps.sweeper`); it hears every validation and may stop the run (pruned: the run dir
    is marked, not finished, and the metric where it stopped is returned)."""
    check_train_config(cfg)
    run = RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.trainer.seed)
    started = time.perf_counter()
    kind = kind_of(cfg.model)
    job = kind.training(cfg, run)  # the device, and the processes of a multi-process launch
    main = job.dist.main
    if not main:
        logging.getLogger().setLevel(logging.WARNING)  # one copy of every info line (rank 0's); warnings still show
    # rank 0 alone decides where training starts and tells the others, so every process runs the same steps; an
    # error there stops every process with the same line
    decision: dict[str, Any] = {}
    resume: SavedState | None = None
    if main:
        try:
            decision, resume = start_point(cfg, run, kind, job.dist.world, sweeping=trial is not None)
        except DuelistError as err:
            decision = {"error": str(err)}
    decision = broadcast(decision, job.dist)
    if "error" in decision:
        raise DuelistError(decision["error"])
    if "finished" in decision:  # the same command again after the run ended: nothing to do
        value = decision["finished"]
        log.info(
            "%s: already finished (%s=%.4f); trainer.resume=never trains it again",
            run.path,
            cfg.optimized_metric,
            value,
        )
        return value if main else float("nan")
    if "pruned" in decision:
        pruned = decision["pruned"]
        log.info("%s: already pruned at step %d; the trial is recorded pruned again", run.path, pruned["step"])
        if main and trial is not None:
            trial.pruned(pruned["step"])
        return float(pruned["value"]) if main else float("nan")
    if decision.get("state") and not main:
        resume = load_state(Path(decision["state"]), tensors=False)  # rank 0 sends the weights and optimizer
    train_rows, valid = load_train_valid(cfg.data)
    if resume is not None:  # every process holds the state: all refuse together
        check_same_data(resume, fingerprints(train_rows, valid))
    if not main:
        try:
            job.fit(train_rows, valid, NullTracker(), resume, trial)
        except Pruned:
            pass  # rank 0 marks the run dir
        return float("nan")  # rank 0 writes the run dir and reports the metric
    run.write_config(cfg)
    if resume is not None:
        restore_best(resume, run)  # the best checkpoint as of the state
    config = OmegaConf.to_container(cfg, resolve=True)
    wandb_id = resume.wandb_id if resume is not None else None  # a resumed run continues its W&B run
    tracker = make_tracker(cfg.logger, str(run.path), config, name=run.path.name, tags=kind.tags(cfg), run_id=wandb_id)
    try:
        try:
            fitted = job.fit(train_rows, valid, tracker, resume, trial)
        except Pruned as stop:
            return end_pruned(cfg, run, stop, tracker, trial)
        metrics = {
            **fitted.metrics,
            "optimized_metric": cfg.optimized_metric,
            "unused_settings": list(kind.unused),  # what this kind of model never read: the registry leaves them out
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,  # Linux reports KiB
            "runtime_s": time.perf_counter() - started,
        }
        write_outputs(cfg, run, valid, fitted, metrics, tracker)
        remove_states(run)
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    tracker.finish(exit_code=0)
    return report(cfg, run, metrics)


def end_pruned(cfg: DictConfig, run: RunDir, stop: Pruned, tracker: Any, trial: Trial | None) -> float:
    """A run its sweep trial stopped: the curves so far, ``pruned.json`` (the run is not finished: no metrics.json,
    never picked by the registry), the trial recorded pruned, the tracker told. Returns the metric where it stopped."""
    run.write_history(curves(stop.train_curve, stop.evals))
    newest = next(iter(state_dirs(run)), None)
    run.mark_pruned(
        {
            "step": stop.step,
            "metric": cfg.optimized_metric,
            "value": stop.value,
            "state": str(newest.relative_to(run.path)) if newest else None,
        }
    )
    if trial is not None:
        trial.pruned(stop.step)
    tracker.summary({"pruned": True, "pruned_at_step": stop.step, cfg.optimized_metric: stop.value})
    tracker.finish(exit_code=0)
    closing(
        [
            f"pruned at step {stop.step}: {cfg.optimized_metric} {stop.value:.4f} was behind the study's other trials",
            f"run dir: {run.path.resolve()} (marked pruned: {PRUNED}; not a finished run)",
        ]
    )
    return stop.value


def write_outputs(
    cfg: DictConfig, run: RunDir, valid: pd.DataFrame, fitted: Fitted, metrics: dict[str, Any], tracker: Any
) -> None:
    """What every finished run leaves besides its checkpoint: oof.parquet, history.json, the charts, the tracker's
    summary, and metrics.json last (its presence marks the run finished)."""
    oof = valid[["id", "winner", "language", "source", "fold"]].assign(
        p_a=fitted.p_a,
        target=valid["p_a"].to_numpy(),
        prompt_key=prompt_keys(valid["prompt"]).to_numpy(),
        rule_p_a=longer_answer_p_a(valid["response_a"], valid["response_b"]),  # the longer-answer rule on each row
    )
    oof = oof[["id", "p_a", "winner", "language", "fold", "source", "target", "prompt_key", "rule_p_a"]]
    run.write_oof(oof)
    run.write_history(curves(fitted.train_curve, fitted.evals))
    plots.training_curves(
        run.path / "curves.png", fitted.train_curve, fitted.evals, cfg.optimized_metric, fitted.step_name
    )
    counts = valid["language"].value_counts().to_dict()
    by_language = metrics["val/accuracy_by_language"]
    plots.accuracy_bars(run.path / "accuracy_by_language.png", by_language, counts, "validation accuracy by language")
    tracker.summary(metrics)
    tracker.bar("val/accuracy_by_language", by_language, "language", "accuracy")
    table = {"language": list(counts), "rows": list(counts.values()), "accuracy": [by_language.get(k) for k in counts]}
    tracker.table("val/by_language", pd.DataFrame(table))
    tracker.image("curves", str(run.path / "curves.png"))
    if cfg.logger.log_predictions:
        worst = oof.assign(error=(oof["p_a"] - oof["target"]).abs()).nlargest(cfg.logger.log_predictions, "error")
        worst = worst.merge(valid[["id", "prompt", "response_a", "response_b"]], on="id")
        tracker.table("val/worst_predictions", worst)
    run.write_metrics(metrics)  # last: its presence marks a finished run


def curves(train_curve: list[tuple[int, float]], evals: list[tuple[int, dict[str, Any]]]) -> dict[str, list]:
    """history.json: ``[step, value]`` pairs of the training loss and of the validation accuracy and log loss."""
    out = {"train/loss": [list(point) for point in train_curve]}
    for key in ("val/accuracy", "val/log_loss"):
        out[key] = [[step, m[key]] for step, m in evals]
    return out


def report(cfg: DictConfig, run: RunDir, metrics: dict[str, Any]) -> float:
    """The closing block: the metric against the longer-answer rule, the time, the run dir and the next command."""
    accuracy, rule = metrics["val/accuracy"], metrics["val/baseline_longer_wins"]
    gap = f"{abs(accuracy - rule) * 100:.1f} points {'above' if accuracy > rule else 'below'}"
    where = shown(run.path)
    closing(
        [
            f"val/accuracy {accuracy:.4f}: {gap if accuracy != rule else 'level with'} the longer-answer rule "
            f"({rule:.4f}) on {metrics['val/rows']} validation pairs; val/log_loss {metrics['val/log_loss']:.4f}",
            f"time: {duration(metrics['runtime_s'])}",
            f"run dir: {run.path.resolve()}",
            f"next: {next_command(where)}",
        ]
    )
    return float(metrics[cfg.optimized_metric])


EXAMPLE_TEST = "tests/data/wsdm_test_example.parquet"  # the real 3-row WSDM example test file of a checkout


def next_command(run: str) -> str:
    """The infer.py command that scores with ``run``, runnable as printed here: on ``test.parquet`` if there is one,
    else on the checkout's WSDM example file, else after writing the example files (``example-data``)."""
    score = f"python infer.py runs=[{run}] data.test={{}} output=submission.csv"
    for test in ("test.parquet", EXAMPLE_TEST):
        if Path(test).is_file():
            return score.format(test)
    return "python -m duelist example-data && " + score.format("test.parquet")
