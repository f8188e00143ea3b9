"""Score, pseudo-label, generate or translate: ``python infer.py [task=submit|pseudolabel|generate|translate] ...``.

python infer.py runs=[RUN_DIR] data.test=test.parquet output=submission.csv      # task=submit (default)
python infer.py task=pseudolabel labeling=confident runs=[TEACHER] data.test=pairs.parquet output=pl.parquet
python infer.py task=generate generate=hf data.test=prompts.parquet output=pairs.parquet
python infer.py task=translate generate=hf data.test=pairs.parquet output=translated.parquet +translate.to=[Russian,Vietnamese]
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from duelist.config import Task, check_command_line, register_configs
from duelist.errors import exit_cleanly_on_user_error
from duelist.generation import generate
from duelist.logs import quiet_library_logs
from duelist.pseudolabel import pseudolabel
from duelist.submission import submit
from duelist.translation import translate

register_configs()
quiet_library_logs()

TASKS = {
    Task.submit: submit,
    Task.pseudolabel: pseudolabel,
    Task.generate: generate,
    Task.translate: translate,
}  # each takes the composed config


@hydra.main(version_base="1.3", config_path="conf", config_name="infer")
@exit_cleanly_on_user_error
def main(cfg: DictConfig) -> None:
    TASKS[cfg.task](cfg)


if __name__ == "__main__":
    exit_cleanly_on_user_error(check_command_line)(
        Path(__file__).parent / "conf", "infer", sys.argv[1:]
    )  # a typo: one line, exit 2
    main()
