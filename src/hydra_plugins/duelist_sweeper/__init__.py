"""``hydra/sweeper=duelist_optuna``: Hydra finds sweepers in ``hydra_plugins`` only; the work is in
:mod:`duelist.sweeps.sweeper`. Also the sampler option ``hydra/sweeper/sampler=tpe_multivariate`` (the sweeper's
default). Without hydra-optuna-sweeper (a scoring-only install, such as the Kaggle package) there is nothing to
register."""

from importlib.util import find_spec
from typing import Any

if find_spec("hydra_plugins.hydra_optuna_sweeper") is not None and find_spec("optuna") is not None:
    from hydra.core.config_store import ConfigStore
    from hydra.utils import instantiate
    from hydra_plugins.hydra_optuna_sweeper.config import TPESamplerConfig
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

    from duelist.core.errors import exit_cleanly_on_user_error
    from duelist.core.hydra_setup import TRUSTED_TARGETS
    from duelist.sweeps.sweeper import DuelistOptunaSweeperConf, RetryingSweeperImpl

    class DuelistOptunaSweeper(OptunaSweeper):
        @exit_cleanly_on_user_error
        def __init__(
            self, sampler: Any, heartbeat_interval: int, grace_period: int, max_retry: int, pruner: Any, **kwargs: Any
        ) -> None:
            sampler = instantiate(sampler, _execution_whitelist_=TRUSTED_TARGETS)
            self.sweeper = RetryingSweeperImpl(
                heartbeat_interval, grace_period, max_retry, pruner, sampler=sampler, **kwargs
            )

        @exit_cleanly_on_user_error
        def sweep(self, arguments: list[str]) -> None:
            return self.sweeper.sweep(arguments)

    store = ConfigStore.instance()
    store.store(group="hydra/sweeper", name="duelist_optuna", node=DuelistOptunaSweeperConf, provider="duelist")
    store.store(
        group="hydra/sweeper/sampler",
        name="tpe_multivariate",
        node=TPESamplerConfig(multivariate=True, constant_liar=True),
        provider="duelist",
    )
