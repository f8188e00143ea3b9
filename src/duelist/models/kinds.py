"""Which kind of model a config or a run is: :func:`kind_of` reads it once, here; everything else calls the kind's
methods (:class:`~duelist.models.interface.ModelKind`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from duelist.core.config import NetworkModelConfig, TreesArch, TreesModelConfig
from duelist.models.interface import ModelKind, Scorer
from duelist.models.network import NetworkKind
from duelist.models.trees import TreesKind
from duelist.runs.run_dir import RunDir

KINDS: dict[str, ModelKind] = {"network": NetworkKind(), "trees": TreesKind()}


def kind_of(model_cfg: Any) -> ModelKind:
    """The kind of a ``model`` config: a composed one knows its schema (each model file names it); a saved one is told
    by its ``arch``."""
    typed = OmegaConf.get_type(model_cfg) if OmegaConf.is_config(model_cfg) else None
    if typed in (NetworkModelConfig, TreesModelConfig):
        return KINDS["trees" if typed is TreesModelConfig else "network"]
    return KINDS["trees" if str(model_cfg.get("arch")) == TreesArch.features.value else "network"]


def run_kind(run: RunDir) -> ModelKind:
    """The kind of a finished run (from what its checkpoint was saved with)."""
    return kind_of(run.read_checkpoint_config().model)


def load_scorer(run_dir: str | Path, cfg: Any, device: torch.device) -> Scorer:
    """A finished run loaded once for ``infer.py``'s settings ``cfg``: ``.score(rows, tta, deadline, order)``."""
    run = RunDir(run_dir).require_checkpoint()
    return run_kind(run).scorer(run, cfg, device)


def score_run(run_dir: str | Path, rows: Any, cfg: Any, device: torch.device, **how: Any) -> Any:
    """P(A wins) of one run for every row (``how``: ``tta``, ``deadline``, ``order``), the run loaded for this call."""
    scorer = load_scorer(run_dir, cfg, device)
    try:
        return scorer.score(rows, **how)
    finally:
        scorer.close()
