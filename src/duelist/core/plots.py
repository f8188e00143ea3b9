"""Charts written next to the numbers: training curves, per-group accuracy, kept-vs-all histograms (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from duelist.core.files import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: str | Path) -> None:
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def training_curves(
    path: str | Path,
    train: Sequence[tuple[int, float]],
    evals: Sequence[tuple[int, dict]],
    metric: str,
    step_name: str = "optimizer step",
) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    if train:
        steps, losses = zip(*train)
        left.plot(steps, losses, lw=0.6, alpha=0.4, label="per step")
        window = max(1, len(losses) // 20)
        smooth = [
            sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
            for i in range(len(losses))
        ]
        left.plot(steps, smooth, lw=1.5, label=f"mean of {window}")
        left.legend(loc="best", fontsize=8)
    left.set(title="training loss", xlabel=step_name, ylabel="loss")
    if evals:
        steps = [s for s, _ in evals]
        right.plot(
            steps, [m["val/accuracy"] for _, m in evals], marker="o" if len(evals) <= 50 else None, label="val/accuracy"
        )
        right.plot(steps, [m["val/baseline_longer_wins"] for _, m in evals], ls="--", label="longer response wins")
        right.legend(loc="best", fontsize=8)
    right.set(title=f"validation (best by {metric})", xlabel=step_name, ylabel="accuracy")
    _save(fig, path)


def accuracy_bars(path: str | Path, values: dict[str, float], counts: dict[str, int], title: str) -> None:
    names = sorted(values, key=lambda k: -counts.get(k, 0))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 2), 3.6))
    ax.bar(range(len(names)), [values[n] for n in names])
    ax.set_xticks(range(len(names)), [f"{n}\n(n={counts.get(n, 0)})" for n in names], fontsize=8)
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set(ylim=(0, 1), ylabel="accuracy", title=title)
    _save(fig, path)


def kept_histogram(
    path: str | Path, values: Sequence[float], keep: Sequence[bool], lines: Sequence[float], title: str
) -> None:
    """Histogram of probabilities, the kept ones on top of all, with the thresholds as dotted lines."""
    import numpy as np

    values, keep = np.asarray(values), np.asarray(keep, dtype=bool)
    fig, ax = plt.subplots(figsize=(7, 3))
    bins = np.linspace(0, 1, 41)
    ax.hist(values, bins=bins, color="lightgrey", label="all rows")
    ax.hist(values[keep], bins=bins, color="tab:blue", label="kept")
    for x in lines:
        ax.axvline(x, color="black", ls=":")
    ax.set(title=title, xlabel="p_a", ylabel="rows")
    ax.legend(fontsize=8)
    _save(fig, path)


def importance_bars(path: str | Path, importance: dict[str, float], title: str, top: int = 25) -> None:
    """Horizontal bars of the ``top`` largest values (a feature model's gain per feature), largest on top."""
    names = list(importance)[:top][::-1]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.28 * len(names) + 1)))
    ax.barh(range(len(names)), [importance[n] for n in names])
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set(xlabel="total gain", title=title)
    _save(fig, path)
