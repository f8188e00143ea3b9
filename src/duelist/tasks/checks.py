"""The rules between config values, checked once, before a job starts: :func:`check_train_config` (train.py) and
:func:`check_infer_config` (infer.py, per task). Each broken rule is one line naming the settings and what to do.

Single values (types, fixed choices, unknown keys) are checked earlier still, when Hydra composes the config
(:mod:`duelist.core.config`); rules that need the data (a fold with no rows) are checked where the data is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from duelist.core.config import Task
from duelist.core.errors import DuelistError
from duelist.core.hardware import pick_device
from duelist.models.kinds import kind_of

FILE_SETTINGS = {"data.train": "data.train=train.parquet", "data.test": "data.test=test.parquet"}


def check_nothing_missing(cfg: DictConfig, keys: list[str]) -> None:
    """A required setting left at ``???`` (the files of ``data=files``, ``data.test``) is one line, not a traceback."""
    for key in keys:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if node is not None and OmegaConf.is_missing(node, leaf):
            example = FILE_SETTINGS.get(key, f"{key}=...")
            raise DuelistError(f"{key} is not set: give it on the command line, e.g. {example}")


def check_train_config(cfg: DictConfig) -> None:
    """train.py: every required setting given, and the model kind's rules (see its ``check``)."""
    check_nothing_missing(cfg, ["data.train"])
    budget = cfg.trainer.max_batch_tokens
    if budget is not None and budget <= 0:
        raise DuelistError(f"trainer.max_batch_tokens={budget}: must be > 0 padded tokens a call (null = no cap)")
    kind_of(cfg.model).check(cfg)


def _output(cfg: Any, suffix: str, what: str) -> None:
    if Path(cfg.output).suffix.lower() != suffix:
        raise DuelistError(f"output={cfg.output}: {what}")


def check_infer_config(cfg: DictConfig) -> None:
    """infer.py: the rules of the task ``cfg.task`` asks for."""
    if cfg.task == Task.submit and not cfg.runs and not cfg.ensemble.members and OmegaConf.is_missing(cfg.data, "test"):
        raise DuelistError(
            "which runs, and which file? python infer.py runs=[RUN_DIR,...] data.test=test.parquet (or "
            "ensemble=two_model data.test=... to pick the runs; python -m duelist runs lists them)"
        )
    task = cfg.task
    if task == Task.oof:  # the runs' validation rows: no test file
        if not cfg.runs and not cfg.ensemble.members:
            raise DuelistError(
                "task=oof: which runs? runs=[RUN_DIR,...] or ensemble=two_model (python -m duelist runs lists them)"
            )
        if cfg.ensemble.stacker:
            raise DuelistError("task=oof fits the ensemble on the runs' OOF rows; drop ensemble.stacker")
        return
    check_nothing_missing(cfg, ["data.test"])
    if task == Task.submit:
        _output(cfg, ".csv", "the submission must be a .csv file")
        if cfg.time_budget_min is not None and cfg.time_budget_min <= 0:
            raise DuelistError(f"time_budget_min={cfg.time_budget_min}: must be > 0 minutes (null = no budget)")
        if cfg.hardware is not None and cfg.time_budget_min is None:
            raise DuelistError(
                f"hardware={cfg.hardware} is the first estimate of speed for a time budget: set time_budget_min too "
                "(or drop hardware; python -m duelist plan projects hours without scoring)"
            )
        if cfg.backend == "vllm" and cfg.time_budget_min is not None:
            raise DuelistError(
                "backend=vllm does not follow time_budget_min (vLLM schedules its own batches); "
                "use backend=hf with a time budget"
            )
        for name in cfg.devices:
            pick_device(name, "devices")  # cuda:1 without a GPU: one line
        if cfg.ensemble.cascade and cfg.ensemble.weights == "stack":
            raise DuelistError(
                "ensemble.cascade=true combines with weights; ensemble=stack reads every member on every row: drop one "
                "of them"
            )
        if cfg.ensemble.cascade:
            members = cfg.ensemble.members
            count = len(cfg.runs) if cfg.runs else 2 if members == "auto" else len(members)
            if count != 2:
                raise DuelistError(
                    f"ensemble.cascade=true needs exactly two runs (got {count}): the first scores every row, the "
                    "second the least certain ones"
                )
            if cfg.backend == "vllm" or len(cfg.devices) > 1:
                raise DuelistError(
                    "ensemble.cascade=true runs on one device with backend=hf; drop devices=[...] / backend=vllm"
                )
    elif task == Task.pseudolabel:
        _output(cfg, ".parquet", "task=pseudolabel writes a .parquet file (canonical columns + p_a)")
        if not 0.0 <= cfg.labeling.min_confidence <= 0.5:
            raise DuelistError(f"labeling.min_confidence={cfg.labeling.min_confidence}: must be in [0, 0.5]")
        if cfg.shard_rows < 1:
            raise DuelistError(f"shard_rows={cfg.shard_rows}: must be >= 1")
    else:  # generate and translate: a generator model writes pairs
        g = cfg.generate
        _output(cfg, ".parquet", f"task={task} writes a .parquet file of pairs")
        if g.shard_size < 1 or g.batch_size < 1:
            raise DuelistError("generate.shard_size and generate.batch_size must be >= 1")
        if task == Task.generate:
            names = [gen.name for gen in g.generators]
            if len(set(names)) != len(names):
                raise DuelistError(f"generate.generators: names must be unique, got {names}")
        else:
            t = cfg.translate
            if OmegaConf.is_missing(t, "to") or not t.to:
                raise DuelistError("task=translate needs target languages: +translate.to=[Russian,Vietnamese]")
            if "{text}" not in t.instruction:
                raise DuelistError("translate.instruction must contain {text} (where the text to translate goes)")
            if t.max_new_tokens < 1:
                raise DuelistError("translate.max_new_tokens must be >= 1")
