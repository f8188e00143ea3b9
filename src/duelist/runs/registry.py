"""The run registry: finished runs found from their run dirs, sorted and filtered.

A finished run is what :meth:`duelist.runs.run_dir.RunDir.is_finished` says (metrics.json is written last
by ``train()``). ``infer.py`` picks ensemble members with the same code.

    python -m duelist runs sort=val/accuracy model=gemma2_9b [roots=[outputs,multirun,runs]]
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, List, Optional

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from duelist.core import options
from duelist.core.config import flatten, names_one_of
from duelist.core.errors import DuelistError, exit_cleanly_on_user_error
from duelist.core.files import shown
from duelist.core.metrics import LOWER_IS_BETTER
from duelist.core.options import option
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
    "head",
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
        "head": OmegaConf.select(cfg, "model.head", default=None),  # pair | reward (networks); None: trees
        "data": cfg.data.name,
        "languages": ",".join(map(str, cfg.data.languages))
        if OmegaConf.select(cfg, "data.languages", default=None)
        else None,  # a specialist
        "study": OmegaConf.select(cfg, "logger.group", default=None, throw_on_missing=False),
        "lora_r": cfg.lora.r if run.has_adapter() else None,  # a LoRA run: its checkpoint holds adapters
        "augment_swap": bool(cfg.augment.swap),
        "exported_from": run.exported_from(),
        "unused_settings": tuple(metrics.get("unused_settings") or ()),  # a feature model's lora.*, ...
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
            f"sort={sort}: no run has this metric; known: {', '.join(c for c in df.columns if '/' in c)}"
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


def validation_rows(run_dir: str) -> str:
    """Which rows a run was validated on: a digest of its ``oof.parquet`` ids ("" when it has none)."""
    oof = RunDir(run_dir).oof_file
    if not oof.is_file():
        return ""
    ids = sorted(map(str, pd.read_parquet(oof, columns=["id"])["id"]))
    return hashlib.sha256("\x00".join(ids).encode()).hexdigest()[:16]


def pick_members(members: Any, roots: Iterable[str], sort: str) -> list[str]:
    """The best run of each model named in ``members`` (``auto``: of the two best model names), compared only with
    runs validated on the same rows: runs are grouped by their validation rows (another fold, seed or data file is
    another group) and the members come from one group, the one where their best runs score best together (with every
    fold trained, that is picking per fold). Names without runs in one shared group: one line."""
    auto = members == "auto"
    found = find_runs(roots, sort=sort)
    runs = candidates(found)
    names = list(dict.fromkeys(runs["model"])) if not runs.empty else []
    if auto and len(names) < 2:
        found = f"only {', '.join(names)}" if names else "none"
        raise DuelistError(
            f"ensemble.members=auto needs finished runs of 2 model names under {', '.join(roots)}; found {found}. "
            "Train another model family (on a CPU: python train.py and python train.py experiment=minilm_full are two; "
            "on a GPU: python train.py experiment=wsdm_gemma2_9b model=qwen2_5_14b ...), or pass runs=[RUN_DIR,...]"
        )
    absent = [] if auto else [m for m in members if m not in names]
    if absent:
        raise DuelistError(
            f"no finished run of model {absent[0]} under {', '.join(roots)}; train one or pass runs=[DIR,...]"
        )
    runs = runs.assign(validation=[validation_rows(r) for r in runs["run_dir"]])
    options = []
    for rows, group in runs.groupby("validation", sort=False):
        here = list(dict.fromkeys(group["model"]))  # best first
        wanted = here[:2] if auto else members
        if len(wanted) == (2 if auto else len(members)) and set(wanted) <= set(here):
            best = [group[group["model"] == name].iloc[0] for name in wanted]
            score = float(np.mean([b[sort] for b in best]))
            options.append((score if sort in LOWER_IS_BETTER else -score, [str(b["run_dir"]) for b in best]))
    if not options:
        wanted = "any two model names" if auto else ", ".join(members)
        raise DuelistError(
            f"ensemble.members: no runs of {wanted} were validated on the same rows (their folds, data.split_seed or "
            "data files differ), so their OOF predictions cannot be compared or combined: train them on the same "
            "data, data.split_seed and data.fold, or pass runs=[RUN_DIR,...]"
        )
    options.sort(key=lambda option: option[0])
    if len(options) > 1:
        log.info(
            "ensemble.members: %d sets of validation rows (folds) hold every member; picked the one where the "
            "members score best together",
            len(options),
        )
    picked = options[0][1]
    for line in passed_over(found, runs, picked, sort, auto):
        log.info("ensemble.members: %s", line)
    return picked


def passed_over(found: pd.DataFrame, runs: pd.DataFrame, picked: list[str], sort: str, auto: bool) -> list[str]:
    """Why each finished run under the roots that was not picked was passed over: a specialist, an exported copy
    stands for it, validated on other rows than the picked runs, a worse score than its model's picked run, or its
    model name not among the members."""
    by_dir = runs.set_index("run_dir")
    best = {by_dir.loc[r, "model"]: by_dir.loc[r] for r in picked}
    rows, shared = by_dir["validation"], by_dir.loc[picked[0], "validation"]
    lines = [
        "picked "
        + ", ".join(f"{shown(r)} ({by_dir.loc[r, 'model']}, {sort} {by_dir.loc[r, sort]:.4f})" for r in picked)
    ]
    for _, row in found.iterrows():
        run, model = str(row["run_dir"]), row["model"]
        if run in picked:
            continue
        if run not in rows.index:
            why = (
                f"a specialist (data.languages={row['languages']}): pass it with runs=[...]"
                if isinstance(row.get("languages"), str)
                else "an exported copy of it stands for it"
            )
        elif rows[run] != shared:
            why = "validated on other rows than the picked runs (another fold, data.split_seed or data files)"
        elif model in best and row[sort] == best[model][sort]:
            why = f"{sort} {row[sort]:.4f}, a tie with the picked {model} run (the first found wins a tie)"
        elif model in best:
            why = f"{sort} {row[sort]:.4f}, the picked {model} run has {best[model][sort]:.4f}"
        else:
            why = "its model is not among the two best on these rows" if auto else "its model is not a member"
        lines.append(f"passed over {shown(run)} ({model}): {why}")
    return lines


def pick_runs(cfg: Any, members: list[str] | None = None, what: str = "ensemble.members") -> list[Path]:
    """The run dirs ``infer.py`` scores: explicit ``runs=[...]``, else the best finished run of each model named in
    ``members`` (default ``ensemble.members``; ``labeling.teachers`` for task=pseudolabel). ``auto``: the two best
    model names."""
    if cfg.runs:
        return _checked(cfg.runs)
    members = cfg.ensemble.members if members is None else members
    if members != "auto" and (isinstance(members, str) or not hasattr(members, "__iter__")):
        raise DuelistError(f"{what}={members}: use auto or a list of model names, e.g. [gemma2_9b, qwen2_5_14b]")
    if members != "auto" and not list(members):
        raise DuelistError(
            f"no runs: pass runs=[RUN_DIR,...] or name model families in {what} (e.g. ensemble=two_model)"
        )
    roots, sort = cfg.ensemble.roots, cfg.ensemble.select_by
    if what == "teachers":  # labelling needs no shared validation rows: the best run of each model
        picked = [best_run(m, roots, sort) for m in members]
    else:
        picked = pick_members(members if members == "auto" else list(members), roots, sort)
    for run in picked:
        log.info("%s: best run by %s: %s", what, sort, run)
    return _checked(picked)


def _checked(runs: Iterable[str]) -> list[Path]:
    return [RunDir(run).require_checkpoint().path for run in runs]


IGNORED = ("logger.", "cache_dir", "hydra.")  # settings that cannot change a result


def differing_settings(configs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per config (a run's config.yaml as a dict), one column per setting whose value is not the same in every
    one (a setting one run lacks differs too)."""
    flat = pd.DataFrame(
        [
            {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in flatten(c, sep=".").items()}
            for c in configs
        ],
        dtype=object,  # a setting keeps its type (lora.r=16, not 16.0) where another run lacks it
    )
    keep = [c for c in flat.columns if not c.startswith(IGNORED) and flat[c].astype(str).nunique(dropna=False) > 1]
    return flat[keep]


def table(runs: pd.DataFrame, sort: str) -> pd.DataFrame:
    """What ``python -m duelist runs`` prints: per run its metric beside the longer-answer rule's on the same rows,
    minutes, when it finished (to the minute), and what sets it apart (the settings that differ between the runs
    shown); no empty cells."""
    configs = [OmegaConf.to_container(RunDir(r).read_config(), resolve=False) for r in runs["run_dir"]]
    settings = differing_settings(configs)
    mirrored = ~settings.columns.isin(["model.name", "model.arch"])  # the model column shows them
    settings = settings.loc[:, settings.notna().all() & mirrored]  # what every run has a value for

    def shown(column: str, how: str = "{:.4f}", scale: float = 1.0) -> pd.Series:  # a number a run lacks: no text
        values = runs[column] if column in runs else pd.Series([None] * len(runs))
        return values.map(
            lambda v: "" if v is None or pd.isna(v) else how.format(v / scale) if isinstance(v, float) else v
        )

    out = pd.DataFrame(
        {
            "run dir": runs["run_dir"],
            "model": runs["model"],
            "val/accuracy": shown("val/accuracy"),
            "rule": shown("val/baseline_longer_wins"),
            "val/log_loss": shown("val/log_loss"),
        }
    )
    if sort not in out.columns:
        out[sort] = shown(sort)
    out["minutes"] = shown("runtime_s", "{:.1f}", 60.0)
    out["finished"] = runs["finished"].dt.strftime("%Y-%m-%d %H:%M")
    unused = runs["unused_settings"] if "unused_settings" in runs else [()] * len(runs)
    out["settings that differ"] = [
        settings_cell([(k, v) for k, v in row.items() if not pd.isna(v) and not names_one_of(k, skip)])
        for (_, row), skip in zip(settings.iterrows(), unused)
    ]
    if "languages" in runs and runs["languages"].notna().any():
        out.insert(2, "languages", runs["languages"].fillna("all"))
    return out


MAX_SETTINGS = 4  # settings a row of `runs` shows; the rest are counted


def settings_cell(settings: list[tuple[str, Any]]) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in settings[:MAX_SETTINGS])
    return shown + (f", +{len(settings) - MAX_SETTINGS} more" if len(settings) > MAX_SETTINGS else "")


def aligned(table: pd.DataFrame) -> str:
    """A table as text: numbers right-aligned, words left-aligned, two spaces between columns."""
    numeric = [bool(c.startswith(("val/", "rule", "minutes", "best_step"))) for c in table.columns]
    cells = [[str(c) for c in table.columns]] + [[str(v) for v in row] for row in table.itertuples(index=False)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.columns))]
    return "\n".join(
        "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(row, widths, numeric)).rstrip()
        for row in cells
    )


@dataclass
class RunsOptions:
    roots: List[str] = option(list(DEFAULT_ROOTS), "folders to search")
    sort: str = option("val/accuracy", "metric to sort by (val/log_loss sorts ascending)")
    model: Optional[str] = option(None, "only runs of this model (model.name)")
    study: Optional[str] = option(None, "only runs of this study (logger.group)")
    data: Optional[str] = option(None, "only runs on this data config (data.name)")
    top: int = option(20, "show at most this many runs")


@exit_cleanly_on_user_error
def main(argv: Optional[list[str]] = None) -> int:
    args = options.parse(RunsOptions, argv, "python -m duelist runs", "List finished duelist runs, best first.")
    runs = find_runs(args.roots, model=args.model, study=args.study, data=args.data, sort=args.sort)
    if runs.empty:
        print(f"no finished runs under {', '.join(args.roots)}")
        return 0
    shown = table(runs.head(args.top).reset_index(drop=True), args.sort)
    print(aligned(shown))
    if len(runs) > args.top:
        print(f"({len(runs) - args.top} more: top={len(runs)} shows them)")
    print("rule: the longer-answer rule's accuracy on the run's validation rows")
    return 0
