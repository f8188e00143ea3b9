"""task=submit: score the test file with the chosen runs, combine them and write the Kaggle submission.

``python infer.py runs=[RUN_DIR,...] data.test=test.parquet output=submission.csv [tta=swap]``
writes ``submission.csv`` (``id,winner``: every test id once, in input order) and, next to it,
``submission.parquet`` with ``p_a`` per run and combined, and ``submission.ensemble.json`` with the
weights used (``ensemble=mean``: equal; ``weighted``/``two_model``: tuned on the runs' OOF rows).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from duelist.core.errors import DuelistError
from duelist.core.files import shown, write_csv, write_json, write_parquet
from duelist.core.hardware import THROUGHPUT, pick_device
from duelist.core.logs import closing
from duelist.core.metrics import least_confident_first, longer_answer_p_a, predicted_winner
from duelist.core.time_budget import Deadline
from duelist.data.reading import load_test
from duelist.models.kinds import run_kind, score_run
from duelist.models.trees import FeatureModel
from duelist.predict import ensemble, stacking
from duelist.runs.registry import pick_runs
from duelist.runs.run_dir import RunDir

log = logging.getLogger(__name__)

clock: Callable[[], float] = time.monotonic  # the time budget's clock (tests replace it with a fake one)


def fill_unscored(members: np.ndarray, test: pd.DataFrame) -> tuple[np.ndarray, int]:
    """Members' NaN (not reached in the time budget) take the mean of the row's other members; rows no member
    scored get the longer-answer rule (p_a 0.55 / 0.45, 0.5 for equal lengths). Returns the filled matrix and that row
    count."""
    members = members.copy()
    row_mean = np.nanmean(np.where(np.isnan(members).all(axis=1, keepdims=True), 0.5, members), axis=1)
    missing = np.isnan(members)
    members[missing] = np.broadcast_to(row_mean[:, None], members.shape)[missing]
    none = missing.all(axis=1)
    if none.any():
        members[none] = longer_answer_p_a(test["response_a"], test["response_b"])[none, None]
    return members, int(none.sum())


def ensemble_weights(cfg: Any, runs: list[Path]) -> tuple[dict[str, Any], FeatureModel | None]:
    """The ensemble's report (weights, OOF scores) and, for ``ensemble.weights=stack``, the stacker."""
    ens = cfg.ensemble
    if ens.weights == "stack":
        if ens.stacker:  # fitted before (the Kaggle package): no training data needed
            report, stacker = stacking.load(ens.stacker, runs)
            how = f"the stacker {ens.stacker}, fitted on {report['shared_oof_rows']} shared OOF rows"
        else:
            report, stacker = stacking.fit(runs, ens.trees)
            how = f"LightGBM on the members' p_a and the pair's features, {report['shared_oof_rows']} OOF rows"
        show_report(report, how, runs)
        return report, stacker
    specialties = [RunDir(r).specialty() for r in runs]
    if any(specialties):
        for run, languages in zip(runs, specialties):
            log.info(
                "%s: %s",
                run,
                f"specialist of {', '.join(languages)}: scores only those rows"
                if languages
                else "generalist: scores every row",
            )
    if ens.weights == "equal" or len(runs) == 1:
        if not any(specialties):
            return {
                "runs": [str(r) for r in runs],
                "combine": ens.combine,
                "weights": ensemble.equal_weights(len(runs)),
            }, None
        routes = ensemble.Routes(specialties)
        report = {
            "runs": [str(r) for r in runs],
            "combine": ens.combine,
            "weights": routes.equal_weights(),
            "specialists": {str(r): s for r, s in zip(runs, specialties) if s},
        }
        print("ensemble weights: equal within each language's runs")
        print("\n".join(weights_table(report["weights"], [shown(r) for r in runs])))
        return report, None
    report = ensemble.fit(runs, ensemble.Tuning.of(ens), specialties)
    show_report(report, f"weights tuned on {report['shared_oof_rows']} shared OOF rows ({ens.combine} of p_a)", runs)
    return report, None


SCORES = {  # the combinations an OOF report scores: how each is shown, and what it means
    "ensemble": ("ensemble", "weights tuned on these rows: optimistic"),
    "ensemble_cross_fitted": ("ensemble, cross-fitted", "each part scored with weights tuned on the others"),
    "mean": ("mean", "equal weights"),
    "stack_cross_fitted": ("stack, cross-fitted", "each part scored by a stacker trained on the others"),
}


def show_report(report: dict[str, Any], how: str, runs: list[Path]) -> None:
    """An ensemble's OOF report as a user reads it: one row per member (named by run), the longer-answer rule on the
    same rows, the combinations (as tuned, cross-fitted), the cascade; then the weights, one row per language."""
    names = [shown(r) for r in runs]
    acc, loss, rows = report["oof/accuracy"], report["oof/log_loss"], report.get("oof/rows", {})
    width = max(len(n) for n in [*names, "ensemble, cross-fitted"]) + 2
    lines = [f"ensemble of {len(names)}: {how}", f"  {'OOF':<{width}} accuracy  log loss"]
    for i, name in enumerate(names):
        member = f"member{i}"
        note = ""
        if member in rows and rows[member] != report["shared_oof_rows"]:
            langs = report["specialists"].get(report["runs"][i])
            note = f"  ({rows[member]} rows{': ' + ', '.join(langs) if langs else ''})"
        lines.append(f"  {name:<{width}} {acc[member]:.4f}    {loss[member]:.4f}{note}")
    if "oof/rule_accuracy" in report:
        lines.append(f"  {'longer-answer rule':<{width}} {report['oof/rule_accuracy']:.4f}")
    for key, (label, note) in SCORES.items():
        if key in acc:
            lines.append(f"  {label:<{width}} {acc[key]:.4f}    {loss[key]:.4f}  ({note})")
    for coverage, score in report.get("oof/cascade_cross_fitted", {}).items():
        lines.append(
            f"  {'cascade ' + coverage:<{width}} {score['accuracy']:.4f}    {score['log_loss']:.4f}  (cross-fitted; "
            f"{names[1]} on the {coverage} rows {names[0]} is least sure of)"
        )
    if "cross_fitting" in report:
        parts = report["cross_fitting"]
        lines.append(f"  cross-fitting: {parts['parts']} parts ({parts['rows']})")
        lines.append(f"  not accounted for: {parts['not_accounted_for']}")
    if report["combine"] != "stack":
        lines.extend(weights_table(report["weights"], names))
    for line in lines:
        print(line)


def weights_table(weights: dict[str, Any], names: list[str]) -> list[str]:
    """Weights as a small table: one row per language (``*``: every other language), one column per member."""
    first = max(len("language"), *(len(k) for k in weights)) + 2
    cols = [max(len(n), 6) + 2 for n in names]
    lines = ["  " + "weights".ljust(first) + "".join(n.ljust(w) for n, w in zip(names, cols))]
    for lang, w in sorted(weights.items(), key=lambda kv: (kv[0] != "*", kv[0])):
        label = "* (all others)" if lang == "*" and len(weights) > 1 else "*" if lang == "*" else lang
        lines.append("  " + label.ljust(first) + "".join(f"{x:.2f}".ljust(c) for x, c in zip(w, cols)))
    return lines


def submit(cfg: Any) -> pd.DataFrame:
    """Score ``cfg.data.test`` with the chosen runs, combine them as configured and write the submission (the rules
    between settings were checked before: :func:`duelist.tasks.checks.check_infer_config`)."""
    started = clock()
    deadline = None
    if cfg.time_budget_min is not None:
        budget_s = 60.0 * cfg.time_budget_min
        deadline = Deadline(budget_s - min(30.0, 0.02 * budget_s), clock)  # a reserve for writing the outputs
    runs = pick_runs(cfg)
    test = load_test(cfg.data.test)
    report, stacker = ensemble_weights(cfg, runs)
    languages = test["language"].astype(str).to_numpy()  # given, or detected from the prompt
    routes = ensemble.Routes([RunDir(r).specialty() for r in runs])
    check_routes(cfg, routes, languages)
    needed = members_to_score(cfg, runs, report)
    probs = score_members(cfg, runs, test, routes, needed, deadline)
    members = probs[[f"p_a_run{i}" for i in range(len(runs))]].to_numpy(dtype=float, copy=True)
    if deadline is not None:
        report["time_budget"] = {
            "minutes": cfg.time_budget_min,
            "used_s": clock() - started,
            "rows_scored_per_run": [int(n) for n in probs.filter(like="p_a_run").notna().sum(axis=0)],
        }
        scored = np.flatnonzero(needed)
        members[:, scored], unscored = fill_unscored(members[:, scored], test)  # among the members that count
        report["time_budget"]["rows_without_a_model_score"] = unscored
        if unscored:
            log.warning("time budget: %d rows got no model score; they use the longer-answer rule", unscored)
    members[:, [not keep for keep in needed]] = 0.5  # weight 0: any finite value leaves the combination unchanged
    output = Path(cfg.output)
    if stacker is not None:
        probs["p_a"] = stacking.predict(stacker, test, members)
        if not cfg.ensemble.stacker:  # the fitted stacker, for ensemble.stacker=... (the Kaggle package)
            stacking.save(stacker, report, output.with_suffix(".stacker"))
    else:
        probs["p_a"] = ensemble.apply(members, languages, report["weights"], report["combine"])
    return write_submission(cfg, output, test, probs, report)


def oof_report(cfg: Any) -> dict[str, Any]:
    """``task=oof``: how the chosen runs do together on their validation rows, without a test file: each member, the
    longer-answer rule, their mean, the tuned weights as tuned and cross-fitted (or the cross-fitted stacker), written
    to ``OUTPUT.oof.json`` (named after the task: a submission's own ``.ensemble.json`` beside it stays as it is)."""
    runs = pick_runs(cfg)
    ens = cfg.ensemble
    if ens.weights == "stack":
        report, _ = ensemble_weights(cfg, runs)
    else:
        specialties = [RunDir(r).specialty() for r in runs]
        report = ensemble.fit(runs, ensemble.Tuning.of(ens), specialties)
        if ens.weights == "equal":  # the mean is what scores with ensemble=mean; the tuned rows show what tuning adds
            report["weights"] = ensemble.Routes(specialties).equal_weights()
        how = f"{report['shared_oof_rows']} shared OOF rows, {ens.combine} of p_a, weights {ens.weights}"
        show_report(report, how, runs)
    path = Path(cfg.output).with_suffix(".oof.json")
    write_json(path, report)
    closing([f"OOF report: {path.resolve()}"])
    return report


def check_routes(cfg: Any, routes: ensemble.Routes, languages: np.ndarray) -> None:
    """Every test row has a run that scores it; a cascade has two generalists."""
    uncovered = routes.uncovered(languages)
    if uncovered:
        raise DuelistError(
            f"{cfg.data.test}: rows in {', '.join(uncovered)} would be left unscored: every run is a specialist of "
            "other languages; add a generalist run (trained without data.languages) to runs=[...]"
        )
    if cfg.ensemble.cascade and routes.has_specialists:
        raise DuelistError(
            "ensemble.cascade=true needs two generalist runs; drop the specialist (data.languages) run or the cascade"
        )


def members_to_score(cfg: Any, runs: list[Path], report: dict[str, Any]) -> list[bool]:
    """A run with weight 0 in every language changes no answer: it is not scored (under a time budget its share goes
    to the members that count; recorded in the report). A cascade scores both members."""
    needed = [bool(cfg.ensemble.cascade) or any(w[i] > 0 for w in report["weights"].values()) for i in range(len(runs))]
    skipped = [str(run) for run, keep in zip(runs, needed) if not keep]
    if skipped:
        report["not_scored_weight_0"] = skipped
        log.info("weight 0: not scoring %s", ", ".join(skipped))
    return needed


def score_members(
    cfg: Any,
    runs: list[Path],
    test: pd.DataFrame,
    routes: ensemble.Routes,
    needed: list[bool],
    deadline: Deadline | None,
) -> pd.DataFrame:
    """``id, language`` and each run's p_a (column ``p_a_run{i}``; NaN where it did not score). With a budget each run
    gets an equal share of the time still left (with ``hardware``: a share in proportion to its projected cost, and
    the projection as its first estimate of speed); a cascade's first member scores every row once (no TTA), its
    second the rows the first is least sure of first, in the time left, at its own speed."""
    cascade = bool(cfg.ensemble.cascade)
    device = pick_device(cfg.device)
    languages = test["language"].astype(str).to_numpy()
    routed = [routes.scores(i, languages) & needed[i] for i in range(len(runs))]  # a specialist: its languages only
    member_rows = [test if mine.all() else test[mine].reset_index(drop=True) for mine in routed]
    projected = projections(cfg, runs, member_rows, routed) if deadline is not None else [None] * len(runs)
    log.info("scoring %d test rows with %d run(s) on %s, tta=%s", len(test), sum(needed), device, cfg.tta)
    if len(cfg.devices) > 1:
        log.info("data parallel over %s: rows dealt by length so the processes finish together", ", ".join(cfg.devices))
    probs = pd.DataFrame({"id": test["id"], "language": test["language"]})
    for i, run in enumerate(runs):
        column = np.full(len(test), np.nan)
        mine, rows = routed[i], member_rows[i]
        if mine.any():
            log.info("%s: scoring %d of %d rows", run, len(rows), len(test))
            if cascade:
                first = i == 0
                order = None if first else least_confident_first(probs["p_a_run0"].to_numpy())
                own = deadline.portion(1.0, fresh=True, prior=rate(projected[i])) if deadline else None
                column[mine] = score_run(
                    run, rows, cfg, device, tta="none" if first else None, deadline=own, order=order
                )
            else:
                fresh = projected[i] is not None  # its own projection, not the previous run's measured speed
                share = (
                    deadline.portion(fraction(projected, needed, i), fresh=fresh, prior=rate(projected[i]))
                    if deadline
                    else None
                )
                column[mine] = score_run(run, rows, cfg, device, deadline=share)
        probs[f"p_a_run{i}"] = column
    return probs


def projections(
    cfg: Any, runs: list[Path], member_rows: list[pd.DataFrame], routed: list[np.ndarray]
) -> list[tuple[float, int] | None]:
    """Each run's projected (seconds, tokens) for its rows at ``hardware``'s sustained FLOP/s for the run's weights
    (``quantization``; an unmerged QLoRA run's 4-bit base) on the devices this command scores with: several
    ``devices`` all busy, one device (or ``device_map``'s split layers) one busy at a time. None: no ``hardware``, a
    run not scored, or a kind not worth projecting."""
    from duelist.models.network_flops import scoring_quantization

    if cfg.hardware is None:
        return [None] * len(runs)
    throughput = THROUGHPUT[str(cfg.hardware)]
    busy = max(1, len(cfg.devices))
    out: list[tuple[float, int] | None] = []
    for i, (run, rows) in enumerate(zip(runs, member_rows)):
        rundir = RunDir(run)
        if not routed[i].any() or not run_kind(rundir).timed_by_flops:
            out.append(None)
            continue
        tta = "none" if cfg.ensemble.cascade and i == 0 else cfg.tta
        rate = throughput.rates[scoring_quantization(rundir, rundir.read_checkpoint_config(), cfg.quantization)]
        out.append(run_kind(rundir).projected(rundir, rows, busy * rate.flops, tta, cfg.cache_dir))
        log.info(
            "%s: projected %.4g s for %d rows on %s, %d device(s) busy (counted FLOPs at %.3g TFLOP/s a device: %s); "
            "measured speed takes over after the first batch",
            run,
            out[-1][0],
            len(rows),
            cfg.hardware,
            busy,
            rate.flops / 1e12,
            rate.source,
        )
    return out


def rate(projection: tuple[float, int] | None) -> float | None:
    """Seconds per token of a projection: a deadline's first estimate of speed."""
    return projection[0] / max(1, projection[1]) if projection is not None else None


def fraction(projected: list[tuple[float, int] | None], needed: list[bool], i: int) -> float:
    """Run i's part of the time left: its projected cost over that of the runs still to score (projected runs), or
    an equal part."""
    later = [j for j in range(i, len(needed)) if needed[j]]
    costs = [projected[j][0] for j in later if projected[j] is not None]
    if projected[i] is not None and len(costs) == len(later) and sum(costs) > 0:
        return projected[i][0] / sum(costs)
    return 1.0 / max(1, len(later))


def write_submission(
    cfg: Any, output: Path, test: pd.DataFrame, probs: pd.DataFrame, report: dict[str, Any]
) -> pd.DataFrame:
    submission = pd.DataFrame({"id": test["id"], "winner": predicted_winner(probs["p_a"].to_numpy())})
    write_json(output.with_suffix(".ensemble.json"), {**report, "tta": cfg.tta})
    write_parquet(output.with_suffix(".parquet"), probs)
    write_csv(output, submission)
    log.info(
        "wrote %s (%d rows), %s and %s",
        output,
        len(submission),
        output.with_suffix(".parquet"),
        output.with_suffix(".ensemble.json"),
    )
    share_a = float((submission["winner"] == "model_a").mean())
    closing([f"submission: {output.resolve()} ({len(submission)} rows; A predicted for {share_a:.0%} of them)"])
    return submission
