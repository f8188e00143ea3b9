"""Experiment tracking: Weights & Biases (offline by default) or nothing.

Offline W&B needs no account or network; ``wandb sync RUN_DIR/wandb/offline-run-*`` uploads
later. Offline runs write no ``wandb-summary.json``: ``metrics.json`` in the run dir is ours.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from duelist.core.config import flatten

log = logging.getLogger(__name__)


class NullTracker:
    """``logger=none``: logs nothing."""

    run_id: str | None = None  # the W&B run id (kept in training states, so a resumed run continues the same W&B run)

    def log(self, values: dict[str, Any], step: int) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def table(self, key: str, df: pd.DataFrame) -> None:
        pass

    def bar(self, key: str, values: dict[str, float], label: str, value: str) -> None:
        pass

    def image(self, key: str, path: str) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbTracker(NullTracker):
    def __init__(
        self,
        logger_cfg: Any,
        run_dir: str,
        config: dict[str, Any],
        name: str,
        tags: list[str],
        run_id: str | None = None,
    ):
        import wandb

        self.wandb = wandb
        # quiet: W&B's own ~30 lines (banner, history sparklines, summary) are replaced by the two lines logged here
        self.run = wandb.init(
            project=logger_cfg.project,
            entity=logger_cfg.entity,
            mode=logger_cfg.mode,
            group=logger_cfg.group,
            job_type="train",
            tags=[*logger_cfg.tags, *tags],
            dir=run_dir,
            config=config,
            name=logger_cfg.run_name or name,
            reinit="finish_previous",
            settings=wandb.Settings(quiet=True, silent=True),
            id=run_id,
            resume="allow" if run_id else None,
        )
        self.run_id = self.run.id
        self.offline = logger_cfg.mode == "offline"
        if self.offline:
            log.info("W&B: offline run %s in %s", self.run.name, self.run.dir.removesuffix("/files"))
        else:
            log.info("W&B: %s", self.run.url)
        self.run.define_metric("val/*", step_metric="train/step")
        self.run.define_metric("train/*", step_metric="train/step")

    def log(self, values: dict[str, Any], step: int) -> None:
        flat = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        self.run.log({**flat, "train/step": step})

    def summary(self, values: dict[str, Any]) -> None:
        for key, value in flatten(values, sep="/").items():
            self.run.summary[key] = value

    def table(self, key: str, df: pd.DataFrame) -> None:
        self.run.log({key: self.wandb.Table(dataframe=df.reset_index(drop=True))})

    def bar(self, key: str, values: dict[str, float], label: str, value: str) -> None:
        table = self.wandb.Table(data=[[k, v] for k, v in values.items()], columns=[label, value])
        self.run.log({key: self.wandb.plot.bar(table, label, value, title=key)})

    def image(self, key: str, path: str) -> None:
        self.run.log({key: self.wandb.Image(path)})

    def finish(self, exit_code: int = 0) -> None:
        where = self.run.dir.removesuffix("/files")
        self.run.finish(exit_code=exit_code)
        if self.offline:
            log.info("W&B: upload later with `wandb sync %s`", where)


def make_tracker(
    logger_cfg: Any, run_dir: str, config: dict[str, Any], name: str, tags: list[str] = (), run_id: str | None = None
) -> NullTracker:
    """``name``: the run's name when ``logger.run_name`` is null; ``tags``: added to ``logger.tags``; ``run_id``:
    continue that W&B run (a resumed training run)."""
    if logger_cfg.name == "none" or logger_cfg.mode == "disabled":
        return NullTracker()
    return WandbTracker(logger_cfg, run_dir, config, name, list(tags), run_id)
