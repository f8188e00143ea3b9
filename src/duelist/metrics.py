"""Validation metrics. A prediction is ``p_a``, the probability that response A wins.

The predicted winner is ``model_a`` when ``p_a >= 0.5`` (the same rule the submission uses).
Accuracy counts rows with a hard label (A or B); log loss uses the (possibly soft) target.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

EPS = 1e-7
LOWER_IS_BETTER = {"val/log_loss"}


def direction(metric: str) -> str:
    """Optuna direction for an optimised metric (OmegaConf resolver ``duelist_direction``)."""
    return "minimize" if metric in LOWER_IS_BETTER else "maximize"


def predicted_winner(p_a: np.ndarray) -> np.ndarray:
    return np.where(np.asarray(p_a) >= 0.5, "model_a", "model_b")


def log_loss(p_a: np.ndarray, target: np.ndarray) -> float:
    p = np.clip(np.asarray(p_a, dtype=np.float64), EPS, 1 - EPS)
    t = np.asarray(target, dtype=np.float64)
    return float(np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p))))


def _accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(pred == truth)) if len(truth) else float("nan")


def compute_metrics(valid: pd.DataFrame, p_a: np.ndarray, prefix: str = "val") -> dict[str, Any]:
    """Metrics for canonical validation rows and their predicted ``p_a``."""
    p_a = np.asarray(p_a, dtype=np.float64)
    hard = valid["winner"].isin(["model_a", "model_b"]).to_numpy()
    truth = valid["winner"].to_numpy()[hard]
    pred = predicted_winner(p_a)[hard]
    sub = valid[hard]
    len_a = sub["response_a"].str.len().to_numpy()
    len_b = sub["response_b"].str.len().to_numpy()
    longer = np.where(len_a >= len_b, "model_a", "model_b")

    def by(column: str) -> dict[str, float]:
        return {
            str(k): _accuracy(pred[idx], truth[idx])
            for k, idx in sub.reset_index(drop=True).groupby(column).indices.items()
        }

    return {
        f"{prefix}/accuracy": _accuracy(pred, truth),
        f"{prefix}/log_loss": log_loss(p_a, valid["p_a"].to_numpy()),
        f"{prefix}/accuracy_by_language": by("language"),
        f"{prefix}/accuracy_by_source": by("source"),
        f"{prefix}/position_bias": {
            "pred_a_share": float(np.mean(pred == "model_a")) if len(pred) else float("nan"),
            "true_a_share": float(np.mean(truth == "model_a")) if len(truth) else float("nan"),
        },
        f"{prefix}/baseline_longer_wins": _accuracy(longer, truth),
        f"{prefix}/rows": int(len(valid)),
    }


def is_better(new: float, best: float | None, metric: str) -> bool:
    if best is None:
        return True
    return new < best if metric in LOWER_IS_BETTER else new > best
