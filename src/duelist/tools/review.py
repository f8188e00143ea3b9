"""The review page of a set of runs: a multirun, an Optuna study, or any folder of run dirs.

One self-contained HTML page (charts inline, opens offline): one row per run with only the settings
that differ between the runs, accuracy against the longer-answer rule, log loss, accuracy per language
and per source, position bias, training speed and time; validation curves overlaid; for an Optuna
study its optimisation history, parameter importance and parallel coordinates; the best run; and the
``infer.py`` command that ensembles the best runs.

Written when any multirun ends (:class:`ReviewCallback`, set in ``conf/train.yaml``: the basic and the
Optuna sweeper both call it) as ``<sweep dir>/review.html``, and on demand:

    python -m duelist review dir=multirun/2026-11-26/10-00-00   # -> that folder's review.html
    python -m duelist review study=lora [storage=URL]         # -> sweeps/lora.html (another storage: lora-<hash>.html)
"""

from __future__ import annotations

import hashlib
import html
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, List, Optional

import numpy as np
import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from duelist.core import options
from duelist.core.errors import DuelistError, exit_cleanly_on_user_error
from duelist.core.files import write_text
from duelist.core.metrics import LOWER_IS_BETTER
from duelist.core.options import option
from duelist.runs import registry
from duelist.runs.run_dir import RunDir, finished_runs

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///sweeps/optuna.db"


@dataclass
class Run:
    run: RunDir
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: dict[str, list]

    @property
    def name(self) -> str:
        return self.run.path.name


def study_of(run: RunDir) -> Optional[str]:
    """The Optuna study a run was a trial of (from the job's ``.hydra/hydra.yaml``), or None."""
    hydra_file = run.path / ".hydra" / "hydra.yaml"
    if not hydra_file.is_file():
        return None
    return OmegaConf.select(OmegaConf.load(hydra_file), "hydra.sweeper.study_name", default=None)


def load_runs(roots: Iterable[str | Path], study: Optional[str] = None) -> list[Run]:
    """Finished runs under ``roots`` (only the trials of Optuna study ``study`` when given), oldest first."""
    runs = []
    for root in roots:
        for run in finished_runs(root):
            if study is not None and study_of(run) != study:
                continue
            config = OmegaConf.to_container(run.read_config(), resolve=False)
            runs.append(Run(run, config, run.read_metrics(), run.read_history()))
    runs.sort(key=lambda r: r.run.metrics_file.stat().st_mtime)
    return runs


def differing_settings(runs: list[Run]) -> pd.DataFrame:
    """One row per run, one column per setting whose value is not the same in every run."""
    return registry.differing_settings([r.config for r in runs])


MIN_LANGUAGE_ROWS = 30  # per-language accuracy on fewer validation rows is drawn grey: a few rows say little


def label(settings: pd.Series, run: Run) -> str:
    """A run's name on the page: the settings that set it apart, else its model and folder."""
    parts = [f"{k}={v}" for k, v in settings.items() if not pd.isna(v)]
    return ", ".join(parts) if parts else f"{run.config.get('model', {}).get('name', 'run')} ({run.name})"


def language_rows(run: Run) -> dict[str, int]:
    """Validation rows with a winner per language (what its accuracy is over); older runs: counted from oof.parquet."""
    counts = run.metrics.get("val/rows_by_language")
    if counts is None:
        oof = run.run.read_oof()
        counts = oof.loc[oof["winner"].isin(["model_a", "model_b"]), "language"].astype(str).value_counts().to_dict()
    return {str(k): int(v) for k, v in counts.items()}


def runs_table(runs: list[Run]) -> pd.DataFrame:
    """The page's table: run, differing settings, then the numbers of its metrics.json."""
    settings = differing_settings(runs)
    rows = []
    for i, r in enumerate(runs):
        m = r.metrics
        row: dict[str, Any] = {"run": label(settings.iloc[i], r), **settings.iloc[i].to_dict()}
        row["accuracy"] = m.get("val/accuracy")
        row["longer-wins rule"] = m.get("val/baseline_longer_wins")
        row["log loss"] = m.get("val/log_loss")
        for lang, acc in sorted((m.get("val/accuracy_by_language") or {}).items()):
            row[f"acc {lang}"] = acc
        for source, acc in sorted((m.get("val/accuracy_by_source") or {}).items()):
            row[f"acc {source}"] = acc
        bias = m.get("val/position_bias") or {}
        row["predicted A share"] = bias.get("pred_a_share")
        row["true A share"] = bias.get("true_a_share")
        row["train tokens/s"] = m.get("train/tokens_per_s")
        row["minutes"] = m["runtime_s"] / 60 if m.get("runtime_s") is not None else None
        row["run dir"] = str(r.run.path)
        rows.append(row)
    return pd.DataFrame(rows)


def best_index(runs: list[Run]) -> int:
    metric = runs[0].metrics.get("optimized_metric", "val/accuracy")
    values = np.array([r.metrics.get(metric, np.nan) for r in runs], dtype=float)
    values = np.where(np.isnan(values), np.inf if metric in LOWER_IS_BETTER else -np.inf, values)
    return int(np.argmin(values) if metric in LOWER_IS_BETTER else np.argmax(values))


def ensemble_command(runs: list[Run]) -> str:
    """``infer.py`` with the best run of each of the two best model names (or the two best runs of one model)."""
    metric = runs[0].metrics.get("optimized_metric", "val/accuracy")
    sign = 1 if metric in LOWER_IS_BETTER else -1

    def key(r: Run) -> float:
        value = r.metrics.get(metric)
        return np.inf if value is None or np.isnan(value) else sign * value

    ranked = sorted(runs, key=key)
    picked, models = [], set()
    for r in ranked:
        model = r.config.get("model", {}).get("name")
        if model not in models:
            picked.append(r)
            models.add(model)
    for r in ranked:  # one model name only: its two best runs
        if len(picked) >= 2:
            break
        if r not in picked:
            picked.append(r)
    dirs = ",".join(str(r.run.path) for r in picked[:2])
    ensemble = "weighted" if len(picked) > 1 else "mean"
    return f"python infer.py ensemble={ensemble} runs=[{dirs}] data.test=test.parquet output=submission.csv"


# columns of scores: 4 decimals
SCORES = ("accuracy", "longer-wins rule", "log loss", "acc ", "predicted A share", "true A share", "value")


def _cell(value: Any, column: str) -> str:
    """A table cell: scores to 4 decimals, minutes to 1, counts and rates whole, other numbers to 4 significant
    digits; settings as they were set (an integer stays one)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float) and column.startswith(SCORES):
        return f"{value:.4f}"
    if isinstance(value, float) and column == "minutes":
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"
    return html.escape(str(value))


def _table_html(table: pd.DataFrame, best: int, table_id: str = "runs") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = [
        f"<tr{' class=best' if i == best else ''}>"
        + "".join(f"<td>{_cell(v, c)}</td>" for v, c in zip(row, table.columns))
        + "</tr>"
        for i, row in enumerate(table.itertuples(index=False))
    ]
    return f"<table id={table_id}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


# charts ---------------------------------------------------------------------------------------------
def _accuracy_figure(table: pd.DataFrame) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Bar(
            x=table["run"],
            y=table["accuracy"],
            name="model",
            marker_color="#4c78a8",
            text=[f"{v:.3f}" for v in table["accuracy"]],
            textposition="outside",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=table["run"],
            y=table["longer-wins rule"],
            mode="markers",
            name="longer-answer rule",
            marker=dict(symbol="line-ew-open", size=40, line=dict(width=3, color="#e45756")),
        )
    )
    values = np.r_[table["accuracy"], table["longer-wins rule"]].astype(float)
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    fig.update_layout(
        title="Validation accuracy per run (red: the longer-answer rule on the same rows)",
        yaxis=dict(title="accuracy", range=[max(0.0, low - 0.05), min(1.0, high + 0.05)]),
        xaxis_title="run",
    )
    return fig


def _color(i: int, n: int) -> str:
    """The run's colour, the same in every chart."""
    return f"hsl({int(360 * i / max(1, n))},60%,45%)"


def _curves_figure(runs: list[Run], labels: list[str], metric: str) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"validation {metric}", "training loss (mean of 10 steps)"))
    for i, (r, name) in enumerate(zip(runs, labels)):
        color = _color(i, len(runs))
        evals = r.history.get(metric, [])
        if evals:
            steps, values = zip(*evals)
            once = len(evals) == 1  # one evaluation (at the end): a point, not a curve
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=values,
                    mode="markers" if once else "lines+markers",
                    marker_size=10 if once else 6,
                    name=f"{name} (evaluated once)" if once else name,
                    legendgroup=name,
                    line_color=color,
                ),
                1,
                1,
            )
        train = r.history.get("train/loss", [])
        if train:
            steps, values = zip(*train)
            smooth = pd.Series(values).rolling(10, min_periods=1).mean()
            fig.add_trace(
                go.Scatter(
                    x=steps, y=smooth, mode="lines", name=name, legendgroup=name, showlegend=not evals, line_color=color
                ),
                1,
                2,
            )
    fig.update_xaxes(title_text="optimizer step", rangemode="tozero")
    fig.update_yaxes(title_text=metric, row=1, col=1)
    fig.update_yaxes(title_text="cross-entropy", row=1, col=2)
    fig.update_layout(title="Curves of every run")
    return fig


def _language_figure(runs: list[Run], labels: list[str]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    counts = [language_rows(r) for r in runs]
    total: dict[str, int] = {}
    for c in counts:
        for lang, n in c.items():
            total[lang] = max(total.get(lang, 0), n)
    order = sorted(total, key=lambda lang: (-total[lang], lang))  # most rows first
    for i, (r, name) in enumerate(zip(runs, labels)):
        by = r.metrics.get("val/accuracy_by_language") or {}
        langs = [lang for lang in order if lang in by]
        n = [counts[i].get(lang, 0) for lang in langs]
        fig.add_trace(
            go.Bar(
                x=[f"{lang} (n={total[lang]})" for lang in langs],
                y=[by[lang] for lang in langs],
                name=name,
                marker_color=[_color(i, len(runs)) if k >= MIN_LANGUAGE_ROWS else "#bbbbbb" for k in n],
                hovertext=[f"{lang}: {by[lang]:.3f} on {k} rows" for lang, k in zip(langs, n)],
            )
        )
    fig.update_layout(
        title=f"Validation accuracy per language (n: validation rows; grey: fewer than {MIN_LANGUAGE_ROWS})",
        barmode="group",
        xaxis_title="language",
        yaxis=dict(title="accuracy", range=[0.0, 1.0]),
    )
    return fig


def _study_figures(study_name: str, storage: str) -> tuple[list[tuple[str, Any]], str]:
    """The Optuna charts of a study and an HTML block: its storage, direction, trial states and trials table."""
    import optuna
    import optuna.visualization as vis

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).is_file():
        raise DuelistError(
            f"study {study_name!r}: no study database {storage.removeprefix('sqlite:///')}; pass storage=URL"
        )
    from duelist.sweeps.sweeper import rdb_storage

    try:
        study = optuna.load_study(study_name=study_name, storage=rdb_storage(storage))
    except KeyError as err:
        raise DuelistError(
            f"study {study_name!r} not found in {_masked(storage)}; pass storage=URL or check the name"
        ) from err
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    states = pd.Series([t.state.name for t in study.trials]).value_counts().to_dict()
    trials = pd.DataFrame(
        [
            {
                "trial": t.number,
                "state": t.state.name,
                "value": t.value,
                **t.params,
                "steps": max(t.intermediate_values, default=None),  # the last validation it reported
                "seconds": (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None,
            }
            for t in study.trials
        ]
    )
    line = (
        f"<h2>Optuna study <code>{html.escape(study_name)}</code></h2><p>Storage "
        f"<code>{html.escape(_masked(storage))}</code>, "
        f"direction {study.direction.name.lower()}, trials {html.escape(str(states))}.</p>"
        + _pruning_line(study)
        + _table_html(trials, -1, "trials")
        + f'<p class="note">Every trial, its curve and the pruner\'s cuts, live: '
        f"<code>pip install -e '.[dashboard]' &amp;&amp; optuna-dashboard {html.escape(_masked(storage))}</code></p>"
    )
    figures = []
    if any(t.intermediate_values for t in study.trials):
        figures.append(("Validation curves of the trials", vis.plot_intermediate_values(study)))
    if complete:
        figures.append(("Optimisation history", vis.plot_optimization_history(study)))
        varied = {k for t in complete for k in t.params if len({str(u.params.get(k)) for u in complete}) > 1}
        if len(complete) >= 2 and varied:
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            figures.append(("Parameter importance", vis.plot_param_importances(study, evaluator=evaluator)))
            figures.append(("Parallel coordinates", vis.plot_parallel_coordinate(study)))
    return figures, line


def _pruning_line(study: Any) -> str:
    """What pruning saved: the steps the pruned trials ran against what whole trials ran ("" when none was pruned)."""
    import optuna

    state = optuna.trial.TrialState
    pruned = [t for t in study.trials if t.state == state.PRUNED]
    whole = [max(t.intermediate_values) for t in study.trials if t.state == state.COMPLETE and t.intermediate_values]
    if not pruned:
        return ""
    used = sum(max(t.intermediate_values, default=0) for t in pruned)
    full = f", where whole trials would have run {max(whole) * len(pruned)}" if whole else ""
    return (
        f"<p>Pruned: {len(pruned)} trial{'s' if len(pruned) > 1 else ''}, {used} optimizer steps in all{full} "
        "(column <code>steps</code>: where each stopped; their run dirs hold <code>pruned.json</code> and are "
        "never picked by <code>python -m duelist runs</code> or an ensemble).</p>"
    )


def _masked(storage: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", storage)


STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}tr.best td{background:#e8f4e8;font-weight:600}
code{background:#f4f4f4;padding:1px 4px}.note{color:#777;font-size:12px}
.cmd{background:#f4f4f4;padding:8px;white-space:pre-wrap;font-family:monospace}
"""


def review_html(title: str, runs: list[Run], study: Optional[tuple[list[tuple[str, Any]], str]] = None) -> str:
    """The page; with no finished run yet (every trial failed so far) only the study's trials and charts."""
    figures: list[tuple[str, Any]] = []
    summary = "<p>No finished run yet.</p>"
    if runs:
        table = runs_table(runs)
        best = best_index(runs)
        metric = runs[best].metrics.get("optimized_metric", "val/accuracy")
        labels = list(table["run"])
        figures = [
            ("", _accuracy_figure(table)),
            ("", _curves_figure(runs, labels, metric)),
            ("", _language_figure(runs, labels)),
        ]
        b = runs[best]
        summary = (
            f"<p>{len(runs)} finished run(s).</p>"
            f"<p><b>Best run</b> by {html.escape(metric)}: <b>{html.escape(labels[best])}</b> — {html.escape(metric)} "
            f"{b.metrics.get(metric, float('nan')):.4f} (longer-answer rule "
            f"{b.metrics.get('val/baseline_longer_wins', float('nan')):.4f}, "
            f"log loss {b.metrics.get('val/log_loss', float('nan')):.4f}), run dir "
            f"<code>{html.escape(str(b.run.path))}</code></p>"
            f"<p><b>Ensemble the best runs</b> (weights tuned on their shared out-of-fold rows):</p>"
            f"<div class='cmd'>{html.escape(ensemble_command(runs))}</div>"
            "<h2>Runs</h2><p>Only the settings that differ between the runs are shown; accuracy is on each run's "
            "validation rows.</p>" + _table_html(table.drop(columns=["run dir"]), best)
        )
    study_line = ""
    if study is not None:
        study_figures, study_line = study
        figures += study_figures
    parts = []
    for i, (name, fig) in enumerate(figures):
        if name:
            fig.update_layout(title=name)
        fig.update_layout(height=430, template="plotly_white")
        parts.append(fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False))
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>duelist review: {html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>Review: <code>{html.escape(title)}</code></h1>"
        + summary
        + study_line
        + ("<h2>Charts</h2>" + "".join(parts) if parts else "")
        + (
            "<p class=note>This page carries its own copy of the plotly chart library (about 4.7 MB) so that it opens "
            "offline and can be mailed or archived as one file; the runs themselves add little to it.</p>"
            if parts
            else ""
        )
        + "</body></html>"
    )


def write_review(
    roots: Iterable[str | Path], out: str | Path, title: str, study: Optional[str] = None, storage: Optional[str] = None
) -> Path:
    """Write the page for the finished runs under ``roots`` (of ``study`` only, with its Optuna charts, when given)."""
    roots = list(roots)
    study_part = (
        _study_figures(study, storage or DEFAULT_STORAGE) if study is not None and storage is not None else None
    )
    runs = load_runs(roots, study)
    if not runs and study_part is None:
        what = f"of study {study!r} " if study else ""
        raise DuelistError(
            f"no finished run {what}under {', '.join(map(str, roots))}; pass the folder of a multirun "
            "(multirun/DATE/TIME)"
        )
    path = Path(out)
    write_text(path, review_html(title, runs, study_part))
    return path


def wandb_report(runs: list[Run], title: str) -> Any:
    """A W&B Report (``wandb-workspaces``) with the page's panels over the runs' W&B group: validation and training
    curves, a parallel-coordinates plot of the differing settings, parameter importance, a run comparer and the
    accuracy per run. Built here; ``report.save()`` publishes it (needs ``wandb login`` and runs synced online)."""
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError as err:
        raise DuelistError("wandb_report=true needs wandb-workspaces: pip install 'duelist[report]'") from err
    logger = runs[0].config.get("logger", {})
    groups = {r.config.get("logger", {}).get("group") for r in runs}
    if logger.get("name") != "wandb" or len(groups) != 1 or None in groups:
        raise DuelistError(
            "wandb_report=true needs the runs of one multirun logged to W&B (logger=wandb): they share one W&B group"
        )
    group = groups.pop()
    metric = runs[0].metrics.get("optimized_metric", "val/accuracy")
    settings = list(differing_settings(runs).columns)
    runset = wr.Runset(
        entity=logger.get("entity") or "",
        project=logger.get("project") or "duelist",
        name=str(group),
        filters=f"Group = '{group}' and JobType = 'train'",
    )
    panels = [
        wr.LinePlot(title=f"validation {metric}", x="train/step", y=[metric]),
        wr.LinePlot(title="training loss", x="train/step", y=["train/loss"], smoothing_factor=0.8),
        wr.ParallelCoordinatesPlot(
            title="settings and result",
            columns=[
                *(wr.ParallelCoordinatesPlotColumn(metric=wr.Config(k)) for k in settings),
                wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(metric)),
            ],
        ),
        wr.ParameterImportancePlot(with_respect_to=metric),
        wr.RunComparer(diff_only="split"),
        wr.BarPlot(title=f"{metric} per run", metrics=[wr.SummaryMetric(metric)]),
    ]
    return wr.Report(
        project=logger.get("project") or "duelist",
        entity=logger.get("entity") or "",
        title=f"duelist review: {title}",
        description=f"{len(runs)} runs of W&B group {group}; settings that differ: {', '.join(settings) or 'none'}",
        blocks=[wr.H1(text=f"Review of {title}"), wr.PanelGrid(runsets=[runset], panels=panels)],
    )


class ReviewCallback(Callback):
    """Hydra callback: ``<sweep dir>/review.html`` is rewritten after every job of a multirun (so a multirun that stops
    at a failed job still has its page) and when the multirun ends, which also logs it to the multirun's W&B group."""

    def on_job_end(self, config: Any, job_return: Any = None, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            self._write(HydraConfig.get())

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        path = self._write(config.hydra)
        if path is None:
            return
        print(f"review page: {path}")
        logger = config.logger
        if logger.name == "wandb" and logger.mode != "disabled":
            import wandb

            sweeper = config.hydra.sweeper
            group = sweeper.get("study_name") if "study_name" in sweeper else None
            run = wandb.init(
                project=logger.project,
                entity=logger.entity,
                mode=logger.mode,
                group=group or str(config.hydra.sweep.dir),
                job_type="review",
                name="review",
                dir=str(config.hydra.sweep.dir),
                settings=wandb.Settings(silent=True),
            )
            run.log({"review": wandb.Html(path.read_text())})
            run.finish()

    @staticmethod
    def _write(hydra_cfg: Any) -> Optional[Path]:
        sweep_dir = Path(str(hydra_cfg.sweep.dir))
        sweeper = hydra_cfg.sweeper
        study = sweeper.get("study_name") if "study_name" in sweeper else None
        try:
            return write_review(
                [sweep_dir],
                sweep_dir / "review.html",
                study or str(sweep_dir),
                study=study,
                storage=sweeper.get("storage") if study else None,
            )
        except Exception as err:  # the page must never fail a training run; no finished run yet is the usual case
            log.warning("review page not written: %s", str(err).splitlines()[0] if str(err) else type(err).__name__)
            return None


@dataclass
class ReviewOptions:
    dir: Optional[str] = option(None, "a folder of run dirs (a multirun's sweep dir); the page goes to DIR/review.html")
    study: Optional[str] = option(None, "an Optuna study (hydra.sweeper.study_name): its runs and its Optuna charts")
    storage: str = option(
        os.environ.get("OPTUNA_STORAGE", DEFAULT_STORAGE), "the study's Optuna storage URL (default: $OPTUNA_STORAGE)"
    )
    roots: Optional[List[str]] = option(
        None, "with study=: folders with its run dirs (default: multirun, outputs, runs)"
    )
    out: Optional[str] = option(None, "where to write the page (default: DIR/review.html, or sweeps/<study>.html)")
    wandb_report: bool = option(
        False, "also publish a W&B Report with the same panels (runs logged with logger.mode=online; needs wandb login)"
    )


@exit_cleanly_on_user_error
def main(argv: Optional[list[str]] = None) -> int:
    args = options.parse(
        ReviewOptions, argv, "python -m duelist review", "Write the review page of a multirun or an Optuna study."
    )
    if not args.dir and not args.study:
        raise DuelistError("python -m duelist review: give dir=FOLDER (a folder of runs) or study=NAME")
    if args.study:
        roots = [args.dir] if args.dir else (args.roots or ["multirun", "outputs", "runs"])
        suffix = (
            "" if args.storage == DEFAULT_STORAGE else "-" + hashlib.sha256(args.storage.encode()).hexdigest()[:8]
        )  # one page per storage
        out = args.out or str(Path("sweeps") / f"{args.study}{suffix}.html")
        path = write_review(roots, out, args.study, study=args.study, storage=args.storage)
    else:
        if not Path(args.dir).is_dir():
            raise DuelistError(f"{args.dir}: no such folder; pass a multirun folder such as multirun/DATE/TIME")
        path = write_review([args.dir], args.out or Path(args.dir) / "review.html", args.dir)
    print(f"review page: {path}")
    if args.wandb_report:
        runs = load_runs([args.dir] if args.dir else (args.roots or ["multirun", "outputs", "runs"]), args.study)
        report = wandb_report(runs, args.study or args.dir)
        try:
            report.save()
        except Exception as err:  # not logged in, no network, runs not uploaded
            raise DuelistError(
                f"wandb_report=true: publishing failed ({str(err).splitlines()[0]}); log in (wandb login) and upload "
                f"offline runs first (wandb sync DIR/*/wandb/offline-run-*)"
            ) from err
        print(f"W&B report: {report.url}")
    return 0
