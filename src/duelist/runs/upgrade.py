"""A run's saved config as this version names it (:func:`upgraded`): keys renamed since runs were first written
under their new names, and model keys a schema gained since with the values every run before them was trained with.
Every read of a run dir's config goes through it (:meth:`duelist.runs.run_dir.RunDir.read_config`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from duelist.core.config import NetworkModelConfig, TreesModelConfig

# top-level keys renamed since runs were first written: old name -> new name
RENAMED_KEYS = {"pseudolabel": "distillation"}
# model keys added to a schema after runs were first written, with the value every run written before them was
# trained with
ADDED_MODEL_KEYS: dict[type, dict[str, Any]] = {
    NetworkModelConfig: {
        "pooling": "model",
        "head": "pair",
        "length_hint": "none",
        "language_tag": False,
        "shape": None,
    },
    TreesModelConfig: {"encoder": "none"},
}


def _follows_older(model: Any, schema: type, added: dict[str, Any]) -> bool:
    """``model`` holds every key ``schema`` had before ``added``, none of them None: it was written under an older
    version of it (when one schema served both kinds, the other kind's keys were there as None)."""
    older = {f.name for f in dataclasses.fields(schema)} - set(added)
    return older <= set(model.keys()) and all(model[key] is not None for key in older)


def upgraded(cfg: Any) -> Any:
    """A run's saved config (a DictConfig or a plain dict) as this version names it, with the values its run was
    trained with. Changed in place and returned."""
    for old, new in RENAMED_KEYS.items():
        if old in cfg and new not in cfg:
            cfg[new] = cfg.pop(old)
    model = cfg.get("model")
    if model is None or not hasattr(model, "keys"):
        return cfg
    for schema, added in ADDED_MODEL_KEYS.items():
        if _follows_older(model, schema, added):
            for key, value in added.items():
                if key not in model:
                    model[key] = value
    return cfg
