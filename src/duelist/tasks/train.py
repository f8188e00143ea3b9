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
from duelist.models.interface import Fitted, ModelKind
from duelist.models.kinds import kind_of
from duelist.runs.run_dir import RunDir
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
)
from duelist.tasks.checks import check_train_config

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start_point(
    cfg: DictConfig, run: RunDir, kind: ModelKind, processes: int
) -> tuple[dict[str, Any], SavedState | None]:
    """Where training starts: ``{"finished": metric}`` (``trainer.resume=auto`` on a finished run with the same
    settings), ``{"state": path}`` (a saved state, also returned loaded) or ``{}`` (from scratch). The run dir is made
    consistent with it: states of an abandoned attempt (newer than the one resumed, or all when starting over),
    half-written states and a stale ``metrics.json`` are removed, so they can neither be resumed nor mark the run
    finished later. Settings the kind does not use may differ."""
    if cfg.trainer.resume == "auto" and run.is_finished():
        check_same_config(resolved(run.read_config()), cfg, run.path, processes, processes, kind.unused)
        return {"finished": float(run.read_metrics()[cfg.optimized_metric])}, None
    state = find_state(cfg, run, processes, kind.unused)
    clean_states(run, keep_up_to=state.path if state is not None else None)
    run.metrics_file.unlink(missing_ok=True)
    return ({"state": str(state.path)} if state is not None else {}), state


def train(cfg: DictConfig, run_dir: str | Path) -> float:
    """Train one model as configured; returns ``cfg.optimized_metric`` of the kept model."""
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
            decision, resume = start_point(cfg, run, kind, job.dist.world)
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
    if decision.get("state") and not main:
        resume = load_state(Path(decision["state"]), tensors=False)  # rank 0 sends the weights and optimizer
    train_rows, valid = load_train_valid(cfg.data)
    if resume is not None:  # every process holds the state: all refuse together
        check_same_data(resume, fingerprints(train_rows, valid))
    if not main:
        job.fit(train_rows, valid, NullTracker(), resume)
        return float("nan")  # rank 0 writes the run dir and reports the metric
    run.write_config(cfg)
    if resume is not None:
        restore_best(resume, run)  # the best checkpoint as of the state
    config = OmegaConf.to_container(cfg, resolve=True)
    wandb_id = resume.wandb_id if resume is not None else None  # a resumed run continues its W&B run
    tracker = make_tracker(cfg.logger, str(run.path), config, name=run.path.name, tags=kind.tags(cfg), run_id=wandb_id)
    try:
        fitted = job.fit(train_rows, valid, tracker, resume)
        metrics = {
            **fitted.metrics,
            "optimized_metric": cfg.optimized_metric,
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
    curves = {"train/loss": [list(point) for point in fitted.train_curve]}
    for key in ("val/accuracy", "val/log_loss"):
        curves[key] = [[step, m[key]] for step, m in fitted.evals]
    run.write_history(curves)
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
            f"next: python infer.py runs=[{where}] data.test=test.parquet output=submission.csv",
        ]
    )
    return float(metrics[cfg.optimized_metric])
