"""Validation metrics. A prediction is ``p_a``, the probability that response A wins.

The predicted winner is ``model_a`` when ``p_a >= 0.5`` (the same rule the submission uses), so a prediction of
exactly 0.5 picks A. Accuracy counts rows with a hard label (A or B); log loss uses the (possibly soft) target.

The longer-answer rule (the baseline every run is compared with, and what a submission falls back to for rows no
model scored) is :func:`longer_answer_p_a`: the longer response in characters wins; equal lengths give 0.5, which
picks A like any 0.5.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

EPS = 1e-7
LOWER_IS_BETTER = {"val/log_loss"}
HARD = ("model_a", "model_b")  # labels that have a right answer (ties and soft labels count in log loss only)


def direction(metric: Any) -> str:
    """Optuna direction for an optimised metric, its name or the config's choice (resolver ``duelist_direction``)."""
    return "minimize" if str(getattr(metric, "value", metric)) in LOWER_IS_BETTER else "maximize"


def predicted_winner(p_a: np.ndarray) -> np.ndarray:
    return np.where(np.asarray(p_a) >= 0.5, "model_a", "model_b")


def log_loss(p_a: np.ndarray, target: np.ndarray) -> float:
    p = np.clip(np.asarray(p_a, dtype=np.float64), EPS, 1 - EPS)
    t = np.asarray(target, dtype=np.float64)
    return float(np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p))))


def accuracy(p_a: np.ndarray, winner: np.ndarray) -> float:
    """Share of rows with a hard label (``model_a``/``model_b``) whose predicted winner is right; NaN without any."""
    winner = np.asarray(winner, dtype=object)
    hard = np.isin(winner, HARD)
    return float(np.mean(predicted_winner(np.asarray(p_a)[hard]) == winner[hard])) if hard.any() else float("nan")


def longer_answer_p_a(response_a: pd.Series, response_b: pd.Series) -> np.ndarray:
    """The longer-answer rule as a probability: 0.55 where A is longer in characters, 0.45 where B is, 0.5 for equal
    lengths (predicted A, as every 0.5 is)."""
    len_a, len_b = response_a.str.len().to_numpy(), response_b.str.len().to_numpy()
    return np.where(len_a > len_b, 0.55, np.where(len_a < len_b, 0.45, 0.5))


def compute_metrics(valid: pd.DataFrame, p_a: np.ndarray, prefix: str = "val") -> dict[str, Any]:
    """Metrics for canonical validation rows and their predicted ``p_a``."""
    p_a = np.asarray(p_a, dtype=np.float64)
    winner = valid["winner"].to_numpy(dtype=object)
    hard = np.isin(winner, HARD)
    pred, truth = predicted_winner(p_a)[hard], winner[hard]

    languages = valid.reset_index(drop=True).groupby("language").indices

    def by(column: str) -> dict[str, float]:
        groups = valid.reset_index(drop=True).groupby(column).indices
        return {str(k): accuracy(p_a[idx], winner[idx]) for k, idx in groups.items() if hard[idx].any()}

    return {
        f"{prefix}/accuracy": accuracy(p_a, winner),
        f"{prefix}/log_loss": log_loss(p_a, valid["p_a"].to_numpy()),
        f"{prefix}/accuracy_by_language": by("language"),
        f"{prefix}/rows_by_language": {str(k): int(hard[idx].sum()) for k, idx in languages.items() if hard[idx].any()},
        f"{prefix}/accuracy_by_source": by("source"),
        f"{prefix}/position_bias": {
            "pred_a_share": float(np.mean(pred == "model_a")) if len(pred) else float("nan"),
            "true_a_share": float(np.mean(truth == "model_a")) if len(truth) else float("nan"),
        },
        f"{prefix}/baseline_longer_wins": accuracy(longer_answer_p_a(valid["response_a"], valid["response_b"]), winner),
        f"{prefix}/rows": int(len(valid)),
    }


def least_confident_first(p_a: np.ndarray) -> np.ndarray:
    """Row order for a second opinion: the rows whose p_a is closest to 0.5 first."""
    return np.argsort(np.abs(np.asarray(p_a) - 0.5), kind="stable")


def is_better(new: float, best: float | None, metric: str) -> bool:
    if best is None:
        return True
    return new < best if metric in LOWER_IS_BETTER else new > best
