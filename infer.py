"""Score, pseudo-label, generate or translate: ``python infer.py [task=submit|pseudolabel|generate|translate] ...``.

python infer.py runs=[RUN_DIR] data.test=test.parquet output=submission.csv      # task=submit (default)
python infer.py task=pseudolabel labeling=confident runs=[TEACHER] data.test=pairs.parquet output=pl.parquet
python infer.py task=generate generate=hf data.test=prompts.parquet output=pairs.parquet
python infer.py task=translate generate=hf data.test=pairs.parquet output=tr.parquet +translate.to=[Russian]
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from duelist.core.command_line import check_command_line
from duelist.core.errors import exit_cleanly_on_user_error
from duelist.core.hardware import leave_after_vllm
from duelist.core.hydra_setup import TRUSTED_TARGETS, register_configs
from duelist.core.logs import quiet_library_logs
from duelist.tasks.infer import infer

register_configs()
quiet_library_logs()


@hydra.main(config_path="conf", config_name="infer", execution_whitelist=TRUSTED_TARGETS)
@exit_cleanly_on_user_error
def main(cfg: DictConfig) -> None:
    infer(cfg)


if __name__ == "__main__":
    exit_cleanly_on_user_error(check_command_line)(
        Path(__file__).parent / "conf", "infer", sys.argv[1:]
    )  # a typo: exit 2
    main()
    leave_after_vllm()  # after every job (a -m sweep too): vLLM's CPU build can abort at the interpreter's teardown
