"""``infer(cfg)``: what ``infer.py`` runs: the rules of the chosen task checked once, then the task.

task=submit       score data.test with the runs, combine them, write the submission  (:mod:`duelist.tasks.submit`)
task=pseudolabel  label data.test with the runs as teachers                         (:mod:`duelist.tasks.pseudolabel`)
task=generate     new response pairs for data.test's prompts                        (:mod:`duelist.tasks.generate`)
task=translate    data.test's pairs in other languages                              (:mod:`duelist.tasks.translate`)
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from duelist.core.config import Task
from duelist.tasks.checks import check_infer_config
from duelist.tasks.generate import generate
from duelist.tasks.pseudolabel import pseudolabel
from duelist.tasks.submit import submit
from duelist.tasks.translate import translate

TASKS = {Task.submit: submit, Task.pseudolabel: pseudolabel, Task.generate: generate, Task.translate: translate}


def infer(cfg: DictConfig) -> Any:
    check_infer_config(cfg)
    return TASKS[cfg.task](cfg)
