"""Score a test file with trained runs: ``python infer.py runs=[RUN_DIR] data.test=test.parquet output=submission.csv``."""

import hydra
from omegaconf import DictConfig

from duelist.config import register_configs
from duelist.errors import exit_cleanly_on_user_error
from duelist.inference import infer

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="infer")
@exit_cleanly_on_user_error
def main(cfg: DictConfig) -> None:
    infer(cfg)


if __name__ == "__main__":
    main()
