"""The trees kind (``model=features``): gradient-boosted trees (LightGBM) on the hand-made features of
:mod:`duelist.data.features`, trained, saved and scored like any run (:class:`TreesKind`).

:class:`FeatureModel` is the model of ``model=features`` runs and of the ``ensemble=stack`` stacker: it learns
P(A wins) with LightGBM's cross-entropy objective (so soft labels, ties at 0.5 and pseudo-labels are learnt as
given, each row with its loss weight), records the validation curves per round (optionally stops early on the
validation log loss: ``trees.early_stopping_rounds``), and saves as text: LightGBM's own
model file (``booster.txt``) and the column list (``columns.json``), nothing executable. ``extra`` columns (the
stacker's members' p_a) are added to the features by name.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from duelist.core import plots
from duelist.core.config import TrainerConfig
from duelist.core.errors import DuelistError
from duelist.core.files import atomic_dir, write_json, write_text
from duelist.core.metrics import accuracy, compute_metrics
from duelist.core.time_budget import Deadline
from duelist.data.features import CATEGORICAL, LANGUAGES, pair_features
from duelist.data.sentence_embeddings import package_of, require_encoder
from duelist.models.distributed import Distributed
from duelist.models.interface import Fitted, Trial
from duelist.runs.run_dir import RunDir
from duelist.runs.states import SavedState

log = logging.getLogger(__name__)

BOOSTER = "booster.txt"
COLUMNS = "columns.json"


def lgb_params(trees: Any, seed: int) -> dict[str, Any]:
    """LightGBM parameters from a ``trees`` config block (``model.trees`` / ``ensemble.trees``)."""
    return {
        "objective": "cross_entropy",  # labels in [0, 1]: hard, tie (0.5) and soft pseudo-labels alike
        "metric": "cross_entropy",
        "learning_rate": float(trees.learning_rate),
        "num_leaves": int(trees.num_leaves),
        "min_data_in_leaf": int(trees.min_child_samples),
        "feature_fraction": float(trees.feature_fraction),
        "bagging_fraction": float(trees.bagging_fraction),
        "bagging_freq": 1 if float(trees.bagging_fraction) < 1 else 0,
        "lambda_l2": float(trees.lambda_l2),
        "seed": int(seed),
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": int(trees.threads),
        "verbosity": -1,
    }


def check_trees(trees: Any, what: str) -> None:
    if trees is None:
        raise DuelistError(
            f"{what} is missing: a feature model needs its trees settings (see conf/model/features.yaml)"
        )
    if trees.n_estimators < 1 or trees.num_leaves < 2 or not 0 < trees.learning_rate <= 1:
        raise DuelistError(
            f"{what}: n_estimators >= 1, num_leaves >= 2 and 0 < learning_rate <= 1 are needed "
            f"(got {trees.n_estimators}, {trees.num_leaves}, {trees.learning_rate})"
        )
    if not (0 < trees.feature_fraction <= 1 and 0 < trees.bagging_fraction <= 1):
        raise DuelistError(f"{what}: feature_fraction and bagging_fraction must be in (0, 1]")


class FeatureModel:
    """A LightGBM booster, the columns it reads (features, then ``extra``) and the sentence encoder behind its
    similarity columns (``none``: no such columns)."""

    def __init__(self, booster: Any, columns: list[str], extra: list[str], encoder: str = "none"):
        self.booster, self.columns, self.extra, self.encoder = booster, columns, extra, encoder

    @staticmethod
    def features(
        df: pd.DataFrame, extra: pd.DataFrame | None = None, encoder: str = "none", cache_dir: str | None = None
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Feature tables of ``df`` as given and A/B-exchanged (with ``encoder``'s similarities, its embeddings cached
        in ``cache_dir``); ``extra`` columns are p_a values, so their swapped copies are ``1 - p_a``."""
        given, swapped = pair_features(df, encoder, cache_dir)
        if extra is not None and len(extra.columns):
            given = pd.concat([given, extra.reset_index(drop=True)], axis=1)
            swapped = pd.concat([swapped, 1.0 - extra.reset_index(drop=True)], axis=1)
        return given, swapped

    @classmethod
    def fit(
        cls,
        x: pd.DataFrame,
        target: np.ndarray,
        weight: np.ndarray,
        trees: Any,
        seed: int,
        extra: list[str] | None = None,
        valid: tuple[pd.DataFrame, np.ndarray] | None = None,
        evaluate: Any = None,
        encoder: str = "none",
    ) -> tuple["FeatureModel", dict[str, list]]:
        """Train on feature rows ``x`` (targets in [0, 1], loss weights). With ``valid`` (features, targets) training
        stops when its log loss has not improved for ``trees.early_stopping_rounds`` rounds and keeps the best round;
        ``evaluate(p_a)`` (optional) is called on the validation predictions every round for the curves. Returns the
        model and the per-round curves (``train/loss``, ``val/log_loss`` and what ``evaluate`` returns)."""
        import lightgbm as lgb

        params = lgb_params(trees, seed)
        categorical = [c for c in CATEGORICAL if c in x.columns]
        train_set = lgb.Dataset(
            x,
            label=np.asarray(target, dtype=np.float64),
            weight=np.asarray(weight, dtype=np.float64),
            categorical_feature=categorical,
            free_raw_data=False,
        )
        sets, names = [train_set], ["train"]
        valid_set = None
        if valid is not None:
            valid_set = lgb.Dataset(
                valid[0],
                label=np.asarray(valid[1], dtype=np.float64),
                reference=train_set,
                categorical_feature=categorical,
            )
            sets.append(valid_set)
            names.append("valid")
        record: dict[str, Any] = {}
        callbacks = [lgb.record_evaluation(record)]
        if valid is not None and trees.early_stopping_rounds:  # on the log loss (the first metric) only
            stop = lgb.early_stopping(int(trees.early_stopping_rounds), first_metric_only=True, verbose=False)
            callbacks.append(stop)

        def per_round(p_a: np.ndarray, data: Any) -> list[tuple[str, float, bool]]:
            # LightGBM keeps every set's predictions up to date as trees are added: no re-prediction per round. The
            # training set gets the same names (NaN): LightGBM's early stopping expects one list of metrics per set
            values = evaluate(p_a) if data is valid_set else dict.fromkeys(evaluate_keys, float("nan"))
            return [(key, value, True) for key, value in values.items()]

        evaluate_keys = (
            list(evaluate(np.full(len(valid[1]), 0.5))) if valid is not None and evaluate is not None else []
        )
        started = time.perf_counter()
        booster = lgb.train(
            params,
            train_set,
            num_boost_round=int(trees.n_estimators),
            valid_sets=sets,
            valid_names=names,
            callbacks=callbacks,
            feval=per_round if valid is not None and evaluate is not None else None,
        )
        rounds = len(record["train"]["cross_entropy"])
        best = booster.best_iteration if booster.best_iteration > 0 else rounds
        log.info(
            "trees: %d rows, %d features, %d rounds (best %d) in %.1f s",
            len(x),
            x.shape[1],
            rounds,
            best,
            time.perf_counter() - started,
        )
        curves = {"train/loss": [[i + 1, v] for i, v in enumerate(record["train"]["cross_entropy"])]}
        for key, values in record.get("valid", {}).items():
            curves["val/log_loss" if key == "cross_entropy" else key] = [[i + 1, v] for i, v in enumerate(values)]
        kept = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))  # the best round only
        return cls(kept, list(x.columns), list(extra or []), str(encoder)), curves

    def predict(self, x: pd.DataFrame, swapped: pd.DataFrame | None = None) -> np.ndarray:
        """P(A wins) of feature rows; with ``swapped`` (the same rows, A and B exchanged) the mean of p_a and 1 -
        p_a(swapped)."""
        p_a = self.booster.predict(x[self.columns])
        if swapped is not None:
            p_a = (p_a + 1.0 - self.booster.predict(swapped[self.columns])) / 2.0
        return np.asarray(p_a, dtype=np.float64)

    def importance(self) -> dict[str, float]:
        """Total gain of every column's splits (what the model relies on), largest first."""
        gain = self.booster.feature_importance(importance_type="gain")
        return dict(sorted(((c, float(g)) for c, g in zip(self.columns, gain)), key=lambda kv: -kv[1]))

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        write_text(folder / BOOSTER, self.booster.model_to_string())
        meta = {"columns": self.columns, "extra": self.extra, "languages": LANGUAGES, "encoder": self.encoder}
        write_json(folder / COLUMNS, meta)

    @classmethod
    def load(cls, folder: str | Path) -> "FeatureModel":
        import lightgbm as lgb

        folder = Path(folder)
        if not (folder / BOOSTER).is_file() or not (folder / COLUMNS).is_file():
            raise DuelistError(f"{folder}: incomplete feature-model checkpoint (needs {BOOSTER} and {COLUMNS})")
        meta = json.loads((folder / COLUMNS).read_text())
        if meta.get("languages") != LANGUAGES:
            raise DuelistError(
                f"{folder}: saved with another language list than this duelist version's; retrain the feature model"
            )
        booster = lgb.Booster(model_str=(folder / BOOSTER).read_text())
        return cls(booster, list(meta["columns"]), list(meta["extra"]), meta.get("encoder", "none"))


class TreesTraining:
    """The trees kind's training job: one process on the CPU, the curves recorded per boosting round on the
    validation rows; the same run dir as a network's (``checkpoint/`` holds the booster as text)."""

    def __init__(self, cfg: DictConfig, run: RunDir):
        self.cfg, self.run = cfg, run
        self.dist, self.device = Distributed(), torch.device("cpu")

    def fit(
        self,
        train: pd.DataFrame,
        valid: pd.DataFrame,
        tracker: Any,
        resume: SavedState | None,
        trial: Trial | None = None,
    ) -> Fitted:
        """Boosting has one validation, at the end: nothing to report to a sweep trial on the way."""
        cfg = self.cfg
        encoder, cache_dir = str(cfg.model.encoder), cfg.cache_dir
        x, x_swapped = FeatureModel.features(train, encoder=encoder, cache_dir=cache_dir)
        target, weight = train["p_a"].to_numpy(dtype=float), train["weight"].to_numpy(dtype=float)
        if cfg.augment.swap:  # every pair in both orders, label flipped
            x = pd.concat([x, x_swapped], ignore_index=True)
            target, weight = np.concatenate([target, 1.0 - target]), np.concatenate([weight, weight])
        x_valid, _ = FeatureModel.features(valid, encoder=encoder, cache_dir=cache_dir)
        sizes = (len(train), len(x), len(valid), x.shape[1])
        log.info("feature model: train %d rows (%d with swaps), valid %d rows, %d features", *sizes)
        winner = valid["winner"].to_numpy(dtype=object)
        model, curves = FeatureModel.fit(
            x,
            target,
            weight,
            cfg.model.trees,
            cfg.trainer.seed,
            valid=(x_valid, valid["p_a"].to_numpy(dtype=float)),
            evaluate=lambda p_a: {"val/accuracy": accuracy(p_a, winner)},
            encoder=encoder,
        )
        p_a = model.predict(x_valid)
        with atomic_dir(self.run.checkpoint) as tmp:
            OmegaConf.save(cfg, tmp / "config.yaml", resolve=True)
            model.save(tmp)
        trees = model.booster.num_trees()
        metrics = {
            **compute_metrics(valid, p_a),
            "best_step": trees,
            "train/rows": len(x),
            "train/trees": trees,
            "train/features": len(model.columns),
            "train/top_features": [[name, gain] for name, gain in list(model.importance().items())[:10]],  # split gain
            "device": "cpu",
            "processes": 1,
        }
        baseline = metrics["val/baseline_longer_wins"]
        by_round = dict(curves.get("val/accuracy", []))
        evals = [
            (
                step,
                {
                    "val/accuracy": by_round.get(step, float("nan")),
                    "val/log_loss": loss,
                    "val/baseline_longer_wins": baseline,
                },
            )
            for step, loss in curves.get("val/log_loss", [])
        ]
        for step, m in evals:
            tracker.log({"val/accuracy": m["val/accuracy"], "val/log_loss": m["val/log_loss"]}, step)
        importance = self.run.path / "feature_importance.png"
        plots.importance_bars(importance, model.importance(), "feature model: total gain of each feature's splits")
        tracker.image("feature_importance", str(importance))
        return Fitted(p_a, metrics, [tuple(point) for point in curves["train/loss"]], evals, "boosting round")


class TreesScorer:
    """A feature-model run, loaded once: every row at once on the CPU (seconds), swap-TTA from the swapped features."""

    def __init__(self, run: RunDir, cfg: Any):
        self.model, self.cfg = FeatureModel.load(run.checkpoint), cfg

    def close(self) -> None:
        del self.model

    def score(
        self, rows: pd.DataFrame, tta: str | None = None, deadline: Deadline | None = None, order: Any = None
    ) -> np.ndarray:
        given, swapped = self.model.features(rows, encoder=self.model.encoder, cache_dir=self.cfg.cache_dir)
        return self.model.predict(given, swapped if (self.cfg.tta if tta is None else tta) == "swap" else None)


class TreesKind:
    """``model=features``: see :class:`~duelist.models.interface.ModelKind`."""

    name = "trees"
    timed_by_flops = False  # LightGBM on hand-made features: seconds on a CPU
    # what a feature model never reads: adapters, the network's optimisation, distillation (pseudo-labels are learnt
    # as given); trainer.seed seeds LightGBM
    unused = (
        "lora.",
        "distillation.",
        "augment.same_batch",
        *(f"trainer.{f.name}" for f in fields(TrainerConfig) if f.name != "seed"),
    )

    def check(self, cfg: DictConfig) -> None:
        check_trees(cfg.model.trees, "model.trees")
        if cfg.model.encoder != "none":
            require_encoder(str(cfg.model.encoder))
        log.info(
            "model=features: LightGBM; lora, distillation and the trainer's settings other than its seed do not apply"
        )

    def tags(self, cfg: DictConfig) -> list[str]:
        encoder = [f"encoder={cfg.model.encoder}"] if cfg.model.encoder != "none" else []
        return [f"model={cfg.model.name}", f"data={cfg.data.name}", "features", *encoder]

    def training(self, cfg: DictConfig, run: RunDir) -> TreesTraining:
        return TreesTraining(cfg, run)

    def scorer(self, run: RunDir, cfg: Any, device: torch.device) -> TreesScorer:
        return TreesScorer(run, cfg)

    def export(self, run: RunDir, out: Path, dtype: str) -> None:
        raise DuelistError(
            f"{run.path}: a feature-model run (LightGBM) has nothing to merge: infer.py scores it as it is"
        )

    def packages(self, run: RunDir, merge: bool, quantization: str) -> set[str]:
        encoder = str(run.read_checkpoint_config().model.encoder)
        return {"lightgbm"} | ({package_of(encoder)} if encoder != "none" else set())

    def projected(self, run: RunDir, rows: pd.DataFrame, flops_per_s: float, tta: str, cache_dir: str | None) -> None:
        return None  # LightGBM on hand-made features: seconds on a CPU
