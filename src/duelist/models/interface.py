"""What every model kind provides: the one seam between the kinds of model (a network, or trees on hand-made
features) and everything that trains, scores, exports or packages a run.

The run protocol (:func:`duelist.tasks.train.train`), scoring (:func:`duelist.models.kinds.load_scorer`), export and
the Kaggle package call these methods on :func:`duelist.models.kinds.kind_of`'s answer and never ask which kind a run
is. The two implementations: :class:`duelist.models.network.NetworkKind` and :class:`duelist.models.trees.TreesKind`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from duelist.core.time_budget import Deadline
from duelist.models.distributed import Distributed
from duelist.runs.run_dir import RunDir
from duelist.runs.states import SavedState


@dataclass
class Fitted:
    """What a training job hands back: the kept model's validation predictions and metrics (it saved the model itself
    as ``RUN/checkpoint``), and the curves to draw."""

    p_a: np.ndarray  # validation predictions of the kept model, in the validation rows' order
    metrics: dict[str, Any]  # its validation metrics, best_step and the kind's own training numbers (train/*)
    train_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss)
    evals: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (step, validation metrics)
    step_name: str = "optimizer step"  # what a step is, for the charts' x axis


class Trial(Protocol):
    """The sweep trial a training job runs as (an Optuna trial: :class:`duelist.sweeps.sweeper.SweepTrial`): it is told
    the validation metric at every evaluation and says whether to stop there."""

    def should_stop(self, step: int, value: float) -> bool:
        """Report ``value`` (the optimized metric) at optimizer ``step``; True: the study's pruner stops the run."""
        ...

    def pruned(self, step: int) -> None:
        """Record the trial as pruned after ``step`` (called once the run dir is marked)."""
        ...


class Pruned(Exception):
    """Raised by a training loop that its :class:`Trial` stopped; the run protocol marks the run dir pruned."""

    def __init__(
        self,
        step: int,
        value: float,
        train_curve: list[tuple[int, float]],
        evals: list[tuple[int, dict[str, Any]]],
    ) -> None:
        super().__init__(f"pruned at step {step} (value {value:.4f})")
        self.step, self.value = step, value
        self.train_curve, self.evals = train_curve, evals  # the curves so far (history.json of the pruned run)


class TrainingJob(Protocol):
    """One ``train.py`` run of a kind, in this process (one of several under a multi-process launch)."""

    dist: Distributed  # this process's place in the launch (one process: rank 0 of 1)
    device: torch.device

    def fit(
        self,
        train: pd.DataFrame,
        valid: pd.DataFrame,
        tracker: Any,
        resume: SavedState | None,
        trial: Trial | None = None,
    ) -> Fitted:
        """Train and keep the best model; ``trial``: report each validation to it and raise :class:`Pruned` when it
        says stop (a kind without intermediate validations reports nothing)."""
        ...


class Scorer(Protocol):
    """One run, loaded once, scoring any number of row sets: P(A wins) per row (NaN where a deadline stopped it)."""

    def score(
        self,
        rows: pd.DataFrame,
        tta: str | None = None,
        deadline: Deadline | None = None,
        order: np.ndarray | None = None,
    ) -> np.ndarray: ...

    def close(self) -> None:
        """Free what it holds now (the model; a vLLM engine's process and its memory), for the next run to load; the
        scorer is not used after."""


class ModelKind(Protocol):
    name: str  # network | trees
    timed_by_flops: bool  # its scoring time is projected from counted FLOPs (plan, infer.py hardware=): a network
    unused: tuple[str, ...]  # config keys (or prefixes ending in ".") this kind never reads: they may change freely

    def check(self, cfg: DictConfig) -> None:
        """The rules between train.py's config values that concern this kind, before any data is read."""

    def tags(self, cfg: DictConfig) -> list[str]:
        """Tags of its W&B runs."""

    def training(self, cfg: DictConfig, run: RunDir) -> TrainingJob:
        """The job that trains it into ``run`` (sets up the device and, for networks, the processes)."""

    def scorer(self, run: RunDir, cfg: Any, device: torch.device) -> Scorer:
        """The finished run loaded for ``infer.py``'s settings (``cfg``: backend, devices, precision, ...)."""

    def export(self, run: RunDir, out: Path, dtype: str) -> None:
        """``python -m duelist export``: write ``out``, a run dir that scores faster (or refuse in one line)."""

    def packages(self, run: RunDir, merge: bool, quantization: str) -> set[str]:
        """Optional packages (pip names) that scoring ``run`` needs in the Kaggle package."""

    def projected(
        self, run: RunDir, rows: pd.DataFrame, flops_per_s: float, tta: str, cache_dir: str | None
    ) -> tuple[float, int] | None:
        """Seconds scoring ``rows`` is projected to take at ``flops_per_s`` and the tokens it reads (``infer.py
        hardware=...``'s first estimate of speed; tokenized rows cached in ``cache_dir`` for the scoring that
        follows); None: not worth projecting (seconds on a CPU)."""
