"""``ensemble=stack``: a feature model (:mod:`duelist.models.trees`) trained on the members' out-of-fold p_a plus the
hand-made features of the pair, the way several LMSYS teams combined LLMs with length features.

The stacker learns from the validation rows every member scored (their texts are read again from the first
member's data config, so the features can be measured). Its OOF score is cross-fitted: the rows are cut into
:data:`PARTS` parts, grouped by prompt, and every part is scored by a stacker trained on the other parts only, so no
row is scored by a stacker that saw it. The stacker that scores the test file is trained on all of those rows. Every
stacker learns each pair in both orders (A/B exchanged, the members' p_a turned into 1 - p_a) and predicts the mean
of both orders.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from duelist.core.errors import DuelistError
from duelist.core.files import atomic_dir, write_json
from duelist.core.metrics import accuracy, log_loss, longer_answer_p_a
from duelist.data.pairs import prompt_keys, prompt_parts
from duelist.data.splits import load_train_valid
from duelist.models.trees import FeatureModel, check_trees
from duelist.predict.ensemble import combine, read_oof
from duelist.runs.run_dir import RunDir

log = logging.getLogger(__name__)

PARTS = 5


def member_columns(k: int) -> list[str]:
    return [f"member{i}_p_a" for i in range(k)]


def validation_rows(runs: Sequence[str | Path], ids: pd.Series) -> pd.DataFrame:
    """The validation rows (texts included) of ``ids``, in that order, re-read from the first run's data config."""
    run = RunDir(runs[0])
    _, valid = load_train_valid(run.read_config().data)
    found = valid.drop_duplicates("id").set_index("id")
    missing = ~ids.isin(found.index)
    if missing.any():
        raise DuelistError(
            f"{run.path}: its data config's validation rows lack {int(missing.sum())} of the {len(ids)} shared OOF ids "
            f"(e.g. {ids[missing].iloc[0]}); the stacker needs the texts: run infer.py where the runs were trained, "
            "with the same data files"
        )
    return found.loc[ids.to_numpy()].reset_index()


def _fit(
    x: pd.DataFrame, x_swapped: pd.DataFrame, target: np.ndarray, trees: Any, seed: int, extra: list[str]
) -> FeatureModel:
    both = pd.concat([x, x_swapped], ignore_index=True)
    model, _ = FeatureModel.fit(
        both, np.concatenate([target, 1.0 - target]), np.ones(2 * len(x)), trees, seed, extra=extra
    )
    return model


def fit(runs: Sequence[str | Path], trees: Any, seed: int = 0) -> tuple[dict[str, Any], FeatureModel]:
    """Train the stacker on the runs' shared OOF rows; returns the report (members', their mean's and the cross-fitted
    stacker's OOF scores) and the stacker trained on every shared row."""
    check_trees(trees, "ensemble.trees")
    specialists = [str(r) for r in runs if RunDir(r).specialty()]
    if specialists:
        raise DuelistError(
            f"ensemble=stack learns from rows every member scored; {', '.join(specialists)} is a specialist "
            "(data.languages): "
            f"use ensemble=weighted to route specialists, or stack generalist runs"
        )
    k = len(runs)
    oof = read_oof(runs)
    p_cols = [f"p_a_{i}" for i in range(k)]
    oof = oof[oof[p_cols].notna().all(axis=1)].reset_index(drop=True)
    if len(oof) < 2 * PARTS:
        raise DuelistError(
            f"runs {', '.join(map(str, runs))} share {len(oof)} validation ids; the stacker needs more: train them on "
            "the same data and split"
        )
    rows = validation_rows(runs, oof["id"])
    p = oof[p_cols].to_numpy()
    extra = pd.DataFrame(p, columns=member_columns(k))
    x, x_swapped = FeatureModel.features(rows, extra)
    target, winner = oof["target"].to_numpy(dtype=float), oof["winner"].to_numpy()
    part = prompt_parts(prompt_keys(rows["prompt"]), PARTS)
    honest = np.full(len(oof), np.nan)
    for j in range(PARTS):
        held = part == j
        if not held.any() or held.all():
            continue
        model = _fit(x[~held], x_swapped[~held], target[~held], trees, seed, list(extra.columns))
        honest[held] = model.predict(x[held], x_swapped[held])
    if np.isnan(honest).any():
        raise DuelistError(
            f"the {len(oof)} shared OOF rows have too few distinct prompts for {PARTS} cross-fitting parts"
        )
    model = _fit(x, x_swapped, target, trees, seed, list(extra.columns))
    mean = combine(p, np.full(k, 1.0 / k), "prob")
    report: dict[str, Any] = {
        "runs": [str(r) for r in runs],
        "combine": "stack",
        "shared_oof_rows": int(len(oof)),
        "weights": {"*": [1.0] * k},  # every member is scored: the stacker reads them all
        "oof/accuracy": {
            **{f"member{i}": accuracy(p[:, i], winner) for i in range(k)},
            "mean": accuracy(mean, winner),
            "stack_cross_fitted": accuracy(honest, winner),
        },
        "oof/log_loss": {
            **{f"member{i}": log_loss(p[:, i], target) for i in range(k)},
            "mean": log_loss(mean, target),
            "stack_cross_fitted": log_loss(honest, target),
        },
        "oof/rule_accuracy": accuracy(longer_answer_p_a(rows["response_a"], rows["response_b"]), winner),
        "stack/top_features": [[name, gain] for name, gain in list(model.importance().items())[:10]],
    }
    return report, model


def predict(model: FeatureModel, test: pd.DataFrame, members: np.ndarray) -> np.ndarray:
    """The stacker's p_a for the test rows from their members' p_a (columns of ``members``), both orders averaged."""
    x, x_swapped = FeatureModel.features(test, pd.DataFrame(members, columns=member_columns(members.shape[1])))
    return model.predict(x, x_swapped)


REPORT = "stacker.json"


def save(model: FeatureModel, report: dict[str, Any], folder: str | Path) -> None:
    """The fitted stacker as an ensemble artifact (written atomically): LightGBM's text model and its columns, and the
    report it was fitted with (the members it expects, their OOF scores). Text and JSON only."""
    with atomic_dir(folder) as tmp:
        model.save(tmp)
        write_json(tmp / REPORT, report)


def load(folder: str | Path, runs: Sequence[str | Path]) -> tuple[dict[str, Any], FeatureModel]:
    """A stacker saved by :func:`save` for these ``runs`` (``ensemble.stacker=FOLDER``): scoring with it needs neither
    the training data nor a refit, so it runs from the offline Kaggle package."""
    folder = Path(folder)
    if not (folder / REPORT).is_file():
        raise DuelistError(
            f"ensemble.stacker={folder}: no {REPORT} there; pass the SUBMISSION.stacker folder an earlier "
            "infer.py ensemble=stack wrote"
        )
    report = json.loads((folder / REPORT).read_text())
    model = FeatureModel.load(folder)
    if len(model.extra) != len(runs):
        raise DuelistError(
            f"ensemble.stacker={folder}: it combines {len(model.extra)} members and runs=[...] names {len(runs)}; "
            f"pass the runs it was fitted on, in that order ({', '.join(report['runs'])})"
        )
    return {**report, "stacker": str(folder.resolve())}, model
