"""``hydra/sweeper=duelist_optuna``: Hydra finds sweepers in ``hydra_plugins`` only; the work is in
:mod:`duelist.tools.sweeper`. Without hydra-optuna-sweeper (a scoring-only install, such as the Kaggle package) there is
nothing to register."""

from importlib.util import find_spec
from typing import Any

if find_spec("hydra_plugins.hydra_optuna_sweeper") is not None and find_spec("optuna") is not None:
    from hydra.core.config_store import ConfigStore
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

    from duelist.tools.sweeper import DuelistOptunaSweeperConf, RetryingSweeperImpl

    class DuelistOptunaSweeper(OptunaSweeper):
        def __init__(self, heartbeat_interval: int, grace_period: int, max_retry: int, **kwargs: Any) -> None:
            self.sweeper = RetryingSweeperImpl(heartbeat_interval, grace_period, max_retry, **kwargs)

    ConfigStore.instance().store(
        group="hydra/sweeper", name="duelist_optuna", node=DuelistOptunaSweeperConf, provider="duelist"
    )
