"""Optuna studies: a one-page study summary.

``python train.py -m sweep=NAME`` runs Hydra's Optuna sweeper with ``conf/sweep/NAME.yaml``; when
the sweep ends, :class:`StudySummaryCallback` writes ``sweeps/<study>.html`` (trials table, optimisation
history, parameter importance, parallel coordinates, the best run dir) and logs it to W&B when the
logger is on. The same page on demand:

    python -m duelist.sweeps --study lora [--storage sqlite:///sweeps/optuna.db] [--root multirun]
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

import pandas as pd

from duelist.errors import DuelistError, exit_cleanly_on_user_error
from duelist.files import write_text
from duelist.runs import DEFAULT_ROOTS, find_runs

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///sweeps/optuna.db"


def _masked(storage: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", storage)


def trials_table(study: Any) -> pd.DataFrame:
    rows = []
    for t in study.trials:
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        rows.append({"trial": t.number, "state": t.state.name, "value": t.value, **{f"param {k}": v for k, v in t.params.items()}, "duration_s": duration})
    return pd.DataFrame(rows)


def summary_html(study: Any, storage: str, best_run_dir: Optional[str]) -> str:
    import optuna
    import optuna.visualization as vis

    table = trials_table(study)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    figures = []
    if complete:
        figures.append(("Optimisation history", vis.plot_optimization_history(study)))
        varied = {k for t in complete for k in t.params if len({str(u.params.get(k)) for u in complete}) > 1}
        if len(complete) >= 2 and varied:
            evaluator = optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)  # fANOVA of optuna 2.x fails on numpy 2
            figures.append(("Parameter importance", vis.plot_param_importances(study, evaluator=evaluator)))
            figures.append(("Parallel coordinates", vis.plot_parallel_coordinate(study)))
    parts = []
    for i, (title, fig) in enumerate(figures):
        fig.update_layout(title=title, height=420)
        parts.append(fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False))
    states = table["state"].value_counts().to_dict() if len(table) else {}
    best = ""
    if complete:
        bt = study.best_trial
        best = f"<p><b>Best trial</b> #{bt.number}: value {bt.value:.5f}, params {html.escape(str(bt.params))}</p>"
    run_line = f"<p><b>Best run dir</b>: <code>{html.escape(best_run_dir)}</code></p>" if best_run_dir else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>duelist study {html.escape(study.study_name)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}</style>"
        "</head><body>"
        f"<h1>Study <code>{html.escape(study.study_name)}</code></h1>"
        f"<p>Storage <code>{html.escape(_masked(storage))}</code>; direction {study.direction.name.lower()}; "
        f"trials: {html.escape(str(states))}</p>{best}{run_line}"
        + "".join(parts)
        + "<h2>Trials</h2>"
        + table.to_html(index=False, float_format=lambda x: f"{x:.5g}", na_rep="")
        + "</body></html>"
    )


def write_summary(study_name: str, storage: str, out_dir: str | Path = "sweeps", roots: Iterable[str] = DEFAULT_ROOTS,
                  metric: str = "val/accuracy") -> Path:
    """Write ``<out_dir>/<study>.html``; returns its path."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError as err:
        raise DuelistError(f"study {study_name!r} not found in {_masked(storage)}") from err
    runs = find_runs(roots, study=study_name, sort=metric) if metric else pd.DataFrame()
    best_run_dir = str(runs.iloc[0]["run_dir"]) if len(runs) else None
    path = Path(out_dir) / f"{study_name}.html"
    write_text(path, summary_html(study, storage, best_run_dir))
    return path


class StudySummaryCallback:
    """Hydra callback: write (and log to W&B) the study summary when a sweep ends."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweeper = config.hydra.sweeper
        if "study_name" not in sweeper:
            return
        sweep_dir = str(config.hydra.sweep.dir)
        path = write_summary(sweeper.study_name, sweeper.storage, "sweeps", roots=(sweep_dir, "multirun", "outputs"), metric=config.optimized_metric)
        print(f"study summary: {path}")
        if config.logger.name == "wandb" and config.logger.mode != "disabled":
            import wandb

            run = wandb.init(project=config.logger.project, entity=config.logger.entity, mode=config.logger.mode,
                             group=sweeper.study_name, job_type="study_summary", name=f"{sweeper.study_name}-summary", dir=sweep_dir)
            run.log({"study_summary": wandb.Html(path.read_text())})
            run.finish()


@exit_cleanly_on_user_error
def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m duelist.sweeps", description="Write the one-page summary of an Optuna study.")
    parser.add_argument("--study", required=True, help="study name (hydra.sweeper.study_name)")
    parser.add_argument("--storage", default=os.environ.get("OPTUNA_STORAGE", DEFAULT_STORAGE), help="Optuna storage URL")
    parser.add_argument("--out", default="sweeps", help="folder for <study>.html")
    parser.add_argument("--root", action="append", help="folders with the trials' run dirs (default: outputs, multirun)")
    parser.add_argument("--metric", default="val/accuracy", help="metric that picks the best run dir")
    args = parser.parse_args(argv)
    path = write_summary(args.study, args.storage, args.out, args.root or DEFAULT_ROOTS, args.metric)
    print(f"study summary: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
