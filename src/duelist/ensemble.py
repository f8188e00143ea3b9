"""Ensemble weights tuned on out-of-fold predictions, and the weighted combination of members.

Members' ``oof.parquet`` files are joined on the validation ids they share. Weights are searched
on a grid over the simplex (step ``grid_step``), minimising log loss (ties broken by accuracy);
with ``per_language`` a language with enough shared rows gets its own weights, the others the
global ones. Probabilities are combined as a weighted mean of ``p_a`` or of its logit.

Weights tuned on the rows they are scored on flatter the ensemble: :func:`fit` also reports a
cross-fitted score (each fifth of the shared rows scored with weights tuned on the other four fifths),
and, for a cascade of two members, what the second member adds when it scores only the 25/50/100% of
rows the first is least sure of.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from duelist.errors import DuelistError
from duelist.metrics import log_loss, predicted_winner
from duelist.rundir import RunDir

GLOBAL = "*"
EPS = 1e-6


def combine(p: np.ndarray, weights: np.ndarray, how: str) -> np.ndarray:
    """Weighted mean of members' p_a (columns of ``p``) as probabilities (``prob``) or logits (``logit``)."""
    w = np.asarray(weights, dtype=np.float64)
    if how == "prob":
        return p @ w
    q = np.clip(p, EPS, 1 - EPS)  # logit
    return 1.0 / (1.0 + np.exp(-(np.log(q / (1 - q)) @ w)))


def simplex_grid(k: int, step: float) -> np.ndarray:
    n = int(round(1.0 / step))
    points = [c for c in itertools.product(range(n + 1), repeat=k - 1) if sum(c) <= n]
    return np.array([[*c, n - sum(c)] for c in points], dtype=np.float64) / n


def accuracy(p_a: np.ndarray, winner: np.ndarray) -> float:
    hard = np.isin(winner, ["model_a", "model_b"])
    return float(np.mean(predicted_winner(p_a[hard]) == winner[hard])) if hard.any() else float("nan")


def tune_weights(p: np.ndarray, target: np.ndarray, winner: np.ndarray, how: str, step: float) -> np.ndarray:
    """The grid point with the lowest log loss (then the highest accuracy)."""
    best, best_key = None, None
    for w in simplex_grid(p.shape[1], step):
        q = combine(p, w, how)
        key = (round(log_loss(q, target), 10), -accuracy(q, winner))
        if best_key is None or key < best_key:
            best, best_key = w, key
    assert best is not None
    return best


def read_oof(runs: Sequence[str | Path]) -> pd.DataFrame:
    """One row per validation id shared by every run: ``p_a_<i>`` per member, target, winner, language."""
    merged = None
    for i, run in enumerate(runs):
        oof = RunDir(run).read_oof()
        if "target" not in oof:
            oof["target"] = np.where(oof["winner"] == "model_a", 1.0, np.where(oof["winner"] == "model_b", 0.0, 0.5))
        oof = oof[["id", "p_a", "target", "winner", "language"]].rename(columns={"p_a": f"p_a_{i}"})
        merged = oof if merged is None else merged.merge(oof[["id", f"p_a_{i}"]], on="id", how="inner")
    assert merged is not None
    if len(merged) == 0:
        raise DuelistError(f"runs {', '.join(map(str, runs))} share no validation ids; train them on the same data and split (data.split_seed, data.fold)")
    return merged


CROSS_FIT_PARTS = 5
CASCADE_COVERAGE = (0.25, 0.5, 1.0)


def tune(p: np.ndarray, target: np.ndarray, winner: np.ndarray, languages: np.ndarray, how: str, step: float,
         per_language: bool, min_language_rows: int) -> dict[str, np.ndarray]:
    """Global weights, and with ``per_language`` own weights for every language with enough rows."""
    weights = {GLOBAL: tune_weights(p, target, winner, how, step)}
    if per_language:
        for lang, idx in pd.Series(languages).groupby(languages).indices.items():
            if len(idx) >= min_language_rows:
                weights[str(lang)] = tune_weights(p[idx], target[idx], winner[idx], how, step)
    return weights


def cross_fitted(p: np.ndarray, target: np.ndarray, winner: np.ndarray, languages: np.ndarray, how: str, step: float,
                 per_language: bool, min_language_rows: int, parts: int = CROSS_FIT_PARTS, seed: int = 0) -> np.ndarray:
    """Ensemble p_a where every row is combined with weights tuned on the other parts of the rows (an honest OOF score)."""
    part = np.random.default_rng(seed).permutation(len(p)) % parts
    out = np.empty(len(p))
    for k in range(parts):
        held, rest = part == k, part != k
        if not held.any():
            continue
        w = tune(p[rest], target[rest], winner[rest], languages[rest], how, step, per_language, min_language_rows * (parts - 1) // parts)
        out[held] = apply(p[held], languages[held], w, how)
    return out


def cascade(p: np.ndarray, languages: np.ndarray, weights: dict[str, Any], how: str, reached: np.ndarray) -> np.ndarray:
    """Member 0 alone where member 1 did not score the row (``reached`` false), the weighted combination where it did."""
    out = p[:, 0].astype(np.float64).copy()
    if reached.any():
        out[reached] = apply(p[reached], languages[reached], weights, how)
    return out


def least_confident_first(p_a: np.ndarray) -> np.ndarray:
    """Row order for a second opinion: the rows whose p_a is closest to 0.5 first."""
    return np.argsort(np.abs(np.asarray(p_a) - 0.5), kind="stable")


def fit(runs: Sequence[str | Path], how: str, step: float, per_language: bool, min_language_rows: int) -> dict[str, Any]:
    """Tune weights on the runs' shared OOF rows; returns weights and the OOF scores of members and ensemble
    (as tuned, and cross-fitted), and for two members the cascade's scores at 25/50/100% coverage."""
    oof = read_oof(runs)
    k = len(runs)
    p = oof[[f"p_a_{i}" for i in range(k)]].to_numpy()
    target, winner, languages = oof["target"].to_numpy(), oof["winner"].to_numpy(), oof["language"].astype(str).to_numpy()
    weights = tune(p, target, winner, languages, how, step, per_language, min_language_rows)
    ensemble_p = apply(p, languages, weights, how)
    honest = cross_fitted(p, target, winner, languages, how, step, per_language, min_language_rows)
    report: dict[str, Any] = {
        "runs": [str(r) for r in runs],
        "combine": how,
        "shared_oof_rows": int(len(oof)),
        "weights": {lang: [float(x) for x in w] for lang, w in weights.items()},
        "oof/accuracy": {**{f"member{i}": accuracy(p[:, i], winner) for i in range(k)}, "ensemble": accuracy(ensemble_p, winner),
                         "ensemble_cross_fitted": accuracy(honest, winner)},
        "oof/log_loss": {**{f"member{i}": log_loss(p[:, i], target) for i in range(k)}, "ensemble": log_loss(ensemble_p, target),
                         "ensemble_cross_fitted": log_loss(honest, target)},
    }
    if k == 2:
        order = least_confident_first(p[:, 0])
        report["oof/cascade"] = {}
        for share in CASCADE_COVERAGE:
            reached = np.zeros(len(p), dtype=bool)
            reached[order[: int(round(share * len(p)))]] = True
            q = cascade(p, languages, weights, how, reached)
            report["oof/cascade"][f"{int(share * 100)}%"] = {"accuracy": accuracy(q, winner), "log_loss": log_loss(q, target)}
    return report


def apply(p: np.ndarray, languages: np.ndarray, weights: dict[str, Sequence[float]], how: str) -> np.ndarray:
    """Combine members row by row with the row's language weights (global weights otherwise)."""
    out = combine(p, np.asarray(weights[GLOBAL]), how)
    for lang, w in weights.items():
        if lang != GLOBAL:
            rows = languages == lang
            if rows.any():
                out[rows] = combine(p[rows], np.asarray(w), how)
    return out


def equal_weights(k: int) -> dict[str, list[float]]:
    return {GLOBAL: [1.0 / k] * k}
