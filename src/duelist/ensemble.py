"""Ensemble weights tuned on out-of-fold predictions, and the weighted combination of members.

Members' ``oof.parquet`` files are joined on the validation ids they share. Weights are searched
on a grid over the simplex (step ``grid_step``), minimising log loss (ties broken by accuracy);
with ``per_language`` a language with enough shared rows gets its own weights, the others the
global ones. Probabilities are combined as a weighted mean of ``p_a`` or of its logit.
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


def fit(runs: Sequence[str | Path], how: str, step: float, per_language: bool, min_language_rows: int) -> dict[str, Any]:
    """Tune weights on the runs' shared OOF rows; returns weights and the OOF scores of members and ensemble."""
    oof = read_oof(runs)
    k = len(runs)
    p = oof[[f"p_a_{i}" for i in range(k)]].to_numpy()
    target, winner = oof["target"].to_numpy(), oof["winner"].to_numpy()
    weights = {GLOBAL: tune_weights(p, target, winner, how, step)}
    if per_language:
        for lang, idx in oof.groupby("language").indices.items():
            if len(idx) >= min_language_rows:
                weights[str(lang)] = tune_weights(p[idx], target[idx], winner[idx], how, step)
    ensemble_p = apply(p, oof["language"].to_numpy(), weights, how)
    report = {
        "runs": [str(r) for r in runs],
        "combine": how,
        "shared_oof_rows": int(len(oof)),
        "weights": {lang: [float(x) for x in w] for lang, w in weights.items()},
        "oof/accuracy": {**{f"member{i}": accuracy(p[:, i], winner) for i in range(k)}, "ensemble": accuracy(ensemble_p, winner)},
        "oof/log_loss": {**{f"member{i}": log_loss(p[:, i], target) for i in range(k)}, "ensemble": log_loss(ensemble_p, target)},
    }
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
