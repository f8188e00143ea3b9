"""The run dir: what one ``train.py`` run leaves behind, and the one place that knows its layout.

    RUN/config.yaml           the resolved config of the run
    RUN/checkpoint/           the best model; checkpoint/config.yaml is what infer.py rebuilds from
    RUN/oof.parquet           validation predictions of that checkpoint (id, p_a, winner, language, ..., prompt_key)
    RUN/history.json          the curves: [step, value] pairs of train/loss and of every validation metric
    RUN/metrics.json          final numbers; written last, so its presence marks a finished run
    RUN/pruned.json           only in a sweep trial its pruner stopped: the step, the metric there, the state to
                              resume from (such a run is not finished: no metrics.json, oof.parquet)
    RUN/exported_from.json    only in copies written by ``python -m duelist export``: which run it was made from

Every write is atomic (see :mod:`duelist.core.files`). train(), the registry, infer.py, export, the
Kaggle packager and pseudo-labelling all go through :class:`RunDir`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from duelist.core.errors import DuelistError
from duelist.core.files import write_json, write_parquet, write_text
from duelist.runs.upgrade import upgraded

CONFIG = "config.yaml"
METRICS = "metrics.json"
OOF = "oof.parquet"
HISTORY = "history.json"
CHECKPOINT = "checkpoint"
EXPORTED_FROM = "exported_from.json"
PRUNED = "pruned.json"


class RunDir:
    """Paths, "finished", and atomic reads/writes of one run dir."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    @property
    def oof_file(self) -> Path:
        return self.path / OOF

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def checkpoint_config_file(self) -> Path:
        return self.checkpoint / CONFIG

    def has_checkpoint(self) -> bool:
        return self.checkpoint_config_file.is_file()

    def has_adapter(self) -> bool:
        """Its checkpoint holds LoRA adapters (over a base it names), not full weights."""
        return (self.checkpoint / "adapter").is_dir()

    def needs_base(self) -> bool:
        """Scoring loads the base model its config names: LoRA adapters, or a zero-shot reward model's checkpoint
        (config and tokenizer, no weights of its own). A merge (``python -m duelist export``) writes full weights."""
        ckpt = self.checkpoint
        return self.has_adapter() or ((ckpt / "tokenizer").is_dir() and not (ckpt / "model").is_dir())

    def is_finished(self) -> bool:
        """train() wrote every output (metrics.json is written last); a pruned run never is."""
        return (
            self.metrics_file.is_file()
            and self.config_file.is_file()
            and self.has_checkpoint()
            and not self.pruned_file.is_file()
        )

    @property
    def pruned_file(self) -> Path:
        return self.path / PRUNED

    def read_pruned(self) -> dict[str, Any] | None:
        """What :meth:`mark_pruned` wrote (step, metric, value, state), or None for a run no pruner stopped."""
        return json.loads(self.pruned_file.read_text()) if self.pruned_file.is_file() else None

    def require_checkpoint(self) -> "RunDir":
        if not self.path.is_dir():
            raise DuelistError(
                f"{self.path}: no such run dir; pass the Hydra run dir of a train.py run (python -m duelist runs lists "
                "them)"
            )
        if not self.has_checkpoint():
            raise DuelistError(
                f"{self.path}: not a finished run dir (no {CHECKPOINT}/{CONFIG}); pass the Hydra run dir of a train.py "
                "run"
            )
        return self

    # reading ----------------------------------------------------------------------------------------
    def read_config(self) -> DictConfig:
        return upgraded(OmegaConf.load(self.config_file))  # type: ignore[arg-type]

    def read_checkpoint_config(self) -> DictConfig:
        return upgraded(OmegaConf.load(self.checkpoint_config_file))  # type: ignore[arg-type]

    def read_metrics(self) -> dict[str, Any]:
        return json.loads(self.metrics_file.read_text())

    def read_oof(self) -> pd.DataFrame:
        if not self.oof_file.is_file():
            raise DuelistError(
                f"{self.path}: no {OOF}, so ensemble weights cannot be tuned; use ensemble=mean or retrain this run"
            )
        return pd.read_parquet(self.oof_file)

    def read_history(self) -> dict[str, list]:
        """``{"train/loss": [[step, value], ...], "val/accuracy": [...], ...}``; empty for runs from before it
        existed."""
        file = self.path / HISTORY
        return json.loads(file.read_text()) if file.is_file() else {}

    def specialty(self) -> list[str] | None:
        """The languages of a specialist (trained with ``data.languages``, as WSDM names); None for a generalist."""
        from duelist.core.languages import language_name

        languages = OmegaConf.select(
            self.read_checkpoint_config(), "data.languages", default=None
        )  # what infer.py rebuilds from
        return sorted({language_name(x) for x in languages}) if languages else None

    def exported_from(self) -> str | None:
        """The run dir this one was exported from (``python -m duelist export``), or None for a trained run."""
        file = self.path / EXPORTED_FROM
        return json.loads(file.read_text())["run"] if file.is_file() else None

    # writing (atomic) -------------------------------------------------------------------------------
    def write_config(self, cfg: DictConfig) -> None:
        write_text(self.config_file, OmegaConf.to_yaml(cfg, resolve=True))

    def write_oof(self, oof: pd.DataFrame) -> None:
        write_parquet(self.oof_file, oof)

    def write_history(self, history: dict[str, list]) -> None:
        write_json(self.path / HISTORY, history)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """Write metrics.json; call it last: it marks the run finished."""
        write_json(self.metrics_file, metrics)

    def mark_pruned(self, info: dict[str, Any]) -> None:
        """Mark the run stopped by its sweep trial's pruner (not finished; resumable only from a named state)."""
        write_json(self.pruned_file, info)

    def unmark_pruned(self) -> None:
        self.pruned_file.unlink(missing_ok=True)

    def write_exported_from(self, source: "RunDir") -> None:
        write_json(self.path / EXPORTED_FROM, {"run": str(source.path.resolve())})  # absolute: found from any directory


def finished_runs(root: str | Path) -> Iterator[RunDir]:
    """Every finished run dir under ``root`` (any depth)."""
    base = Path(root)
    if not base.is_dir():
        return
    for metrics in sorted(base.rglob(METRICS)):
        run = RunDir(metrics.parent)
        if run.is_finished():
            yield run
