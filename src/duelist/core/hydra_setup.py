"""What Hydra needs before an entry point composes a config: the ``conf/`` folder (:func:`conf_dir`), the schemas
of :mod:`duelist.core.config` and our resolvers registered (:func:`register_configs`), and the targets Hydra may
instantiate (:data:`TRUSTED_TARGETS`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from duelist.core.config import MODEL_SCHEMAS, InferConfig, TrainConfig


def conf_dir() -> Path:
    """The ``conf/`` folder: ``$DUELIST_CONF`` if set, else ``./conf`` (a checkout, or the Kaggle package next to its
    infer.py), else the checkout this package is installed from (``pip install -e .``). Works for wheel installs too."""
    candidates = [Path(os.environ["DUELIST_CONF"])] if os.environ.get("DUELIST_CONF") else []
    candidates += [Path.cwd() / "conf", Path(__file__).resolve().parents[3] / "conf"]
    for folder in candidates:
        if (folder / "train.yaml").is_file():
            return folder
    from duelist.core.errors import DuelistError

    raise DuelistError(
        f"no conf/ folder with train.yaml in {', '.join(map(str, candidates))}: run from a duelist checkout or set "
        "DUELIST_CONF=PATH/conf"
    )


# what Hydra may instantiate from our configs (hydra.main's execution_whitelist): our callbacks and plugins, Hydra's
# launchers and Optuna's samplers, and the logging handlers of Hydra's job_logging
TRUSTED_TARGETS = ("duelist.*", "hydra_plugins.*", "hydra._internal.*", "optuna.samplers.*", "logging.*")


def compose_train(overrides: list[str]) -> Any:
    """train.py's config as Hydra composes it from :func:`conf_dir` with ``overrides`` (the tools that measure or plan
    a model file by name); a model file that is not there is one line naming those that are."""
    from hydra import compose, initialize_config_dir

    from duelist.core.errors import DuelistError

    conf = conf_dir()
    for override in overrides:
        key, _, name = override.partition("=")
        if key == "model" and not (conf / "model" / f"{name}.yaml").is_file():
            known = ", ".join(sorted(p.stem for p in (conf / "model").glob("*.yaml")))
            raise DuelistError(f"model={name}: no conf/model/{name}.yaml; known: {known}")
    register_configs()
    with initialize_config_dir(str(conf)):
        return compose("train", overrides=overrides)


def multirun_group() -> Optional[str]:
    """Resolver ``duelist_multirun_group``: the W&B group of a multirun job (the Optuna study name, else the sweep
    dir, so every multirun is one group); None outside a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hc = HydraConfig.get()
    return str(hc.sweeper.get("study_name") or hc.sweep.dir)


def multirun_job_name() -> Optional[str]:
    """Resolver ``duelist_multirun_job_name``: what sets a multirun job apart, its overrides that the command line did
    not give every job (``lora.r=16`` from ``-m lora.r=16,32,64``; an Optuna trial's sampled values); None outside a
    multirun."""
    import sys

    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hc = HydraConfig.get()
    parser = OverridesParser.create()
    try:  # the local launcher runs every job in the process the command started: its argv holds the common overrides
        common = {
            o.get_key_element()
            for o in parser.parse_overrides([a for a in sys.argv[1:] if "=" in a and not a.startswith("-")])
            if not o.is_sweep_override()
        }
    except Exception:  # another launcher's entry point: keep every override
        common = set()
    own = [
        str(o.input_line) for o in parser.parse_overrides(list(hc.overrides.task)) if o.get_key_element() not in common
    ]
    return ",".join(own) if own else f"job{hc.job.num}"


def register_configs() -> None:
    """Register the two top-level schemas (every group is typed through them), the two model schemas (under
    ``schemas/``, named by each model file's defaults list; not a group of train.yaml) and our resolvers."""
    from duelist.core.metrics import direction

    if not OmegaConf.has_resolver("duelist_direction"):
        OmegaConf.register_resolver("duelist_direction", direction)
    for name, resolver in (
        ("duelist_multirun_group", multirun_group),
        ("duelist_multirun_job_name", multirun_job_name),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_resolver(name, resolver)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig, replace=True)
    cs.store(name="infer_schema", node=InferConfig, replace=True)
    for name, schema in MODEL_SCHEMAS.items():
        cs.store(group="schemas", name=name, node=schema, replace=True)
