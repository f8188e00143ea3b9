"""Train one preference model: ``python train.py [group=option ...] [key=value ...]`` (``-m`` for sweeps)."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from duelist.core.command_line import check_command_line
from duelist.core.errors import exit_cleanly_on_user_error
from duelist.core.hydra_setup import TRUSTED_TARGETS, register_configs
from duelist.core.logs import quiet_library_logs
from duelist.sweeps.sweeper import sweep_trial
from duelist.tasks.train import train

register_configs()
quiet_library_logs()


@hydra.main(config_path="conf", config_name="train", execution_whitelist=TRUSTED_TARGETS)
@exit_cleanly_on_user_error
def main(cfg: DictConfig) -> float:
    run_dir = HydraConfig.get().runtime.output_dir
    return train(cfg, run_dir, trial=sweep_trial(HydraConfig.get(), run_dir))  # None outside an Optuna sweep


if __name__ == "__main__":
    exit_cleanly_on_user_error(check_command_line)(
        Path(__file__).parent / "conf", "train", sys.argv[1:]
    )  # a typo: exit 2
    main()
