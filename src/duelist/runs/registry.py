"""The run registry: finished runs found from their run dirs, sorted and filtered.

A finished run is what :meth:`duelist.runs.run_dir.RunDir.is_finished` says (metrics.json is written last
by ``train()``). ``infer.py`` picks ensemble members with the same code.

    python -m duelist runs --sort val/accuracy --model gemma2_9b [--root outputs --root multirun --root runs]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

import pandas as pd
from omegaconf import OmegaConf

from duelist.core.errors import DuelistError, exit_cleanly_on_user_error
from duelist.core.metrics import LOWER_IS_BETTER
from duelist.runs.run_dir import RunDir, finished_runs

log = logging.getLogger(__name__)

DEFAULT_ROOTS = (
    "outputs",
    "multirun",
    "runs",
)  # Hydra's run and multirun dirs, and runs/NAME (hydra.run.dir=runs/NAME in the README)
COLUMNS = [
    "run_dir",
    "model",
    "data",
    "languages",
    "study",
    "lora_r",
    "augment_swap",
    "val/accuracy",
    "val/log_loss",
    "best_step",
    "finished",
]


def _row(run: RunDir) -> Optional[dict]:
    try:
        metrics = run.read_metrics()
        cfg = run.read_config()
    except (OSError, ValueError):
        return None
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
    return {
        **flat,
        "run_dir": str(run.path),
        "model": cfg.model.name,
        "data": cfg.data.name,
        "languages": ",".join(map(str, cfg.data.languages))
        if OmegaConf.select(cfg, "data.languages", default=None)
        else None,  # a specialist
        "study": OmegaConf.select(cfg, "logger.group", default=None, throw_on_missing=False),
        "lora_r": cfg.lora.r if run.has_adapter() else None,  # a LoRA run: its checkpoint holds adapters
        "augment_swap": bool(cfg.augment.swap),
        "exported_from": run.exported_from(),
        "finished": pd.Timestamp(run.metrics_file.stat().st_mtime, unit="s"),
    }


def find_runs(
    roots: Iterable[str] = DEFAULT_ROOTS,
    *,
    model: Optional[str] = None,
    study: Optional[str] = None,
    data: Optional[str] = None,
    sort: str = "val/accuracy",
) -> pd.DataFrame:
    """Finished runs under ``roots``, best first by ``sort`` (lower first for log loss)."""
    rows = []
    for root in roots:
        rows.extend(r for r in (_row(run) for run in finished_runs(root)) if r is not None)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    for key, value in (("model", model), ("study", study), ("data", data)):
        if value is not None:
            df = df[df[key] == value]
    if sort not in df.columns:
        raise DuelistError(
            f"--sort {sort}: no run has this metric; known: {', '.join(c for c in df.columns if '/' in c)}"
        )
    df = df.sort_values(sort, ascending=sort in LOWER_IS_BETTER, kind="stable", na_position="last")
    return df[[c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]].reset_index(
        drop=True
    )


def candidates(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs that ``ensemble.members`` may pick: generalists only (a specialist, trained with ``data.languages``, is
    scored on its languages alone: its accuracy is not comparable; pass it with ``runs=[...]``), and a run and its
    exported copies (``python -m duelist export``) are one candidate: the copy stands for its source (merged weights
    score faster, and its metrics were re-scored with them), so a run never ties with its own copy."""
    if runs.empty:
        return runs
    if "languages" in runs.columns:
        runs = runs[runs["languages"].isna()].reset_index(drop=True)
    if "exported_from" not in runs.columns:
        return runs
    sources = {str(Path(p).resolve()) for p in runs["exported_from"].dropna()}
    return runs[[str(Path(p).resolve()) not in sources for p in runs["run_dir"]]].reset_index(drop=True)


def best_run(model: str, roots: Iterable[str] = DEFAULT_ROOTS, sort: str = "val/accuracy") -> str:
    runs = candidates(find_runs(roots, model=model, sort=sort))
    if runs.empty:
        raise DuelistError(
            f"no finished run of model {model} under {', '.join(roots)}; train one or pass runs=[DIR,...]"
        )
    return str(runs.iloc[0]["run_dir"])


def best_models(k: int, roots: Iterable[str] = DEFAULT_ROOTS, sort: str = "val/accuracy") -> list[str]:
    """The ``k`` best model names (each judged by its best run), best first. Fewer than ``k`` names trained: one line
    that says which command trains another."""
    runs = candidates(find_runs(roots, sort=sort))
    names = list(dict.fromkeys(runs["model"])) if not runs.empty else []
    if len(names) < k:
        found = f"only {', '.join(names)}" if names else "none"
        raise DuelistError(
            f"ensemble.members=auto needs finished runs of {k} model names under {', '.join(roots)}; found {found}. "
            f"Train another model family (on a CPU: python train.py and python train.py experiment=minilm_full are two; "
            f"on a GPU: python train.py experiment=wsdm_gemma2_9b model=qwen2_5_14b ...), or pass runs=[RUN_DIR,...]"
        )
    return names[:k]


def pick_runs(cfg: Any, members: list[str] | None = None, what: str = "ensemble.members") -> list[Path]:
    """The run dirs ``infer.py`` scores: explicit ``runs=[...]``, else the best finished run of each model named in
    ``members`` (default ``ensemble.members``; ``labeling.teachers`` for task=pseudolabel). ``auto``: the two best
    model names."""
    if cfg.runs:
        return _checked(cfg.runs)
    members = cfg.ensemble.members if members is None else members
    if members == "auto":
        members = best_models(2, cfg.ensemble.roots, cfg.ensemble.select_by)
    elif isinstance(members, str) or not hasattr(members, "__iter__"):
        raise DuelistError(f"{what}={members}: use auto or a list of model names, e.g. [gemma2_9b, qwen2_5_14b]")
    members = list(members)
    if not members:
        raise DuelistError(f"no runs: pass runs=[RUN_DIR,...] or name model families in {what} (e.g. ensemble=two_model)")
    picked = [best_run(m, cfg.ensemble.roots, cfg.ensemble.select_by) for m in members]
    for model, run in zip(members, picked):
        log.info("%s %s: best run by %s is %s", what, model, cfg.ensemble.select_by, run)
    return _checked(picked)


def _checked(runs: Iterable[str]) -> list[Path]:
    return [RunDir(run).require_checkpoint().path for run in runs]


@exit_cleanly_on_user_error
def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m duelist runs", description="List finished duelist runs.")
    parser.add_argument(
        "--root", action="append", help="folder to search (repeatable; default: outputs, multirun and runs)"
    )
    parser.add_argument("--sort", default="val/accuracy", help="metric to sort by (val/log_loss sorts ascending)")
    parser.add_argument("--model", help="only runs of this model (model.name)")
    parser.add_argument("--study", help="only runs of this study (logger.group)")
    parser.add_argument("--data", help="only runs on this data config (data.name)")
    parser.add_argument("--top", type=int, default=20, help="show at most this many runs")
    args = parser.parse_args(argv)
    runs = find_runs(args.root or DEFAULT_ROOTS, model=args.model, study=args.study, data=args.data, sort=args.sort)
    if runs.empty:
        print("no finished runs found")
        return 0
    shown = runs.head(args.top)[
        [c for c in COLUMNS if c in runs.columns] + ([args.sort] if args.sort not in COLUMNS else [])
    ]
    with pd.option_context("display.max_colwidth", 80, "display.width", 200, "display.float_format", "{:.4f}".format):
        print(shown.to_string(index=False))
    return 0

