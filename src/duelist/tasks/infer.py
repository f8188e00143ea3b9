"""``infer(cfg)``: what ``infer.py`` runs: the rules of the chosen task checked once, then the task.

task=submit       score data.test with the runs, combine them, write the submission  (:mod:`duelist.tasks.submit`)
task=pseudolabel  label data.test with the runs as teachers                         (:mod:`duelist.tasks.pseudolabel`)
task=generate     new response pairs for data.test's prompts                        (:mod:`duelist.tasks.generate`)
task=translate    data.test's pairs in other languages                              (:mod:`duelist.tasks.translate`)
task=oof          the runs' ensemble scored on their validation rows, no test file    (:mod:`duelist.tasks.submit`)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from duelist.core.config import Task
from duelist.core.errors import DuelistError
from duelist.tasks.checks import check_infer_config
from duelist.tasks.generate import generate
from duelist.tasks.pseudolabel import pseudolabel
from duelist.tasks.submit import oof_report, submit
from duelist.tasks.translate import translate

TASKS = {
    Task.submit: submit,
    Task.oof: oof_report,
    Task.pseudolabel: pseudolabel,
    Task.generate: generate,
    Task.translate: translate,
}


def infer(cfg: DictConfig) -> Any:
    try:
        check_infer_config(cfg)
        return TASKS[cfg.task](cfg)
    except DuelistError:
        remove_empty_job_dir()
        raise


def remove_empty_job_dir() -> None:
    """A call that stopped at bad input leaves no ``outputs/infer/DATE/TIME/`` holding only Hydra's own files."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    folder = Path(HydraConfig.get().runtime.output_dir)
    if folder.is_dir() and {p.name for p in folder.iterdir()} <= {".hydra", f"{HydraConfig.get().job.name}.log"}:
        shutil.rmtree(folder, ignore_errors=True)
