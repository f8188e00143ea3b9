"""Ensemble weights tuned on out-of-fold predictions, and the weighted combination of members.

Members' ``oof.parquet`` files are joined on their validation ids (a specialist, trained with ``data.languages``,
has only its languages' rows: see :class:`Routes`). Weights are searched on a grid over the simplex (step
``grid_step``), minimising log loss (ties broken by accuracy) on the rows every member of a route scored; with
``per_language`` a language with enough shared rows gets its own weights, the others the global ones.
Probabilities are combined as a weighted mean of ``p_a`` or of its logit.

Weights tuned on the rows they are scored on flatter the ensemble: :func:`fit` also reports a
cross-fitted score (each fifth of the shared rows scored with weights tuned on the other four fifths),
and, for a cascade of two members, what the second member adds when it scores only the 25/50/100% of
rows the first is least sure of.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from duelist.core.errors import DuelistError
from duelist.core.metrics import accuracy, least_confident_first, log_loss
from duelist.data.pairs import prompt_parts
from duelist.runs.run_dir import RunDir

log = logging.getLogger(__name__)

GLOBAL = "*"
EPS = 1e-6


def combine(p: np.ndarray, weights: np.ndarray, how: str) -> np.ndarray:
    """Weighted mean of members' p_a (columns of ``p``) as probabilities (``prob``) or logits (``logit``)."""
    w = np.asarray(weights, dtype=np.float64)
    if how == "prob":
        return p @ w
    q = np.clip(p, EPS, 1 - EPS)  # logit
    return 1.0 / (1.0 + np.exp(-(np.log(q / (1 - q)) @ w)))


def simplex_grid(k: int, step: float) -> np.ndarray:
    n = int(round(1.0 / step))
    points = [c for c in itertools.product(range(n + 1), repeat=k - 1) if sum(c) <= n]
    return np.array([[*c, n - sum(c)] for c in points], dtype=np.float64) / n


def tune_weights(p: np.ndarray, target: np.ndarray, winner: np.ndarray, how: str, step: float) -> np.ndarray:
    """The grid point with the lowest log loss (then the highest accuracy)."""
    best, best_key = None, None
    for w in simplex_grid(p.shape[1], step):
        q = combine(p, w, how)
        key = (round(log_loss(q, target), 10), -accuracy(q, winner))
        if best_key is None or key < best_key:
            best, best_key = w, key
    assert best is not None
    return best


def read_oof(runs: Sequence[str | Path]) -> pd.DataFrame:
    """One row per validation id of any run: ``p_a_<i>`` per member (NaN where member i did not validate that row, e.g.
    a specialist on another language's rows), target, winner, language and the prompt's key (None for runs written
    before ``oof.parquet`` kept it)."""
    merged, order = None, []
    for i, run in enumerate(runs):
        oof = RunDir(run).read_oof()
        order.append(oof["id"])
        if "target" not in oof:
            oof["target"] = np.where(oof["winner"] == "model_a", 1.0, np.where(oof["winner"] == "model_b", 0.0, 0.5))
        if "prompt_key" not in oof:  # a run written before oof.parquet kept it
            oof["prompt_key"] = None
        if "rule_p_a" not in oof:  # the same: the longer-answer rule's p_a is not known
            oof["rule_p_a"] = np.nan
        oof = oof[["id", "p_a", "target", "winner", "language", "prompt_key", "rule_p_a"]].rename(
            columns={"p_a": f"p_a_{i}"}
        )
        if merged is None:
            merged = oof
        else:
            merged = merged.merge(oof, on="id", how="outer", suffixes=("", "_new"))
            for column in ("target", "winner", "language", "prompt_key", "rule_p_a"):
                merged[column] = merged[column].where(merged[column].notna(), merged.pop(f"{column}_new"))
            merged = merged.drop(columns=[c for c in merged.columns if c.endswith("_new")])
    assert merged is not None
    first_seen = pd.Index(
        pd.concat(order, ignore_index=True)
    ).unique()  # the first run's row order, then the others' new ids
    return merged.set_index("id").loc[first_seen].reset_index()


CROSS_FIT_PARTS = 5
CASCADE_COVERAGE = (0.25, 0.5, 1.0)
MIN_SHARED = 0.9  # members sharing fewer of their validation rows than this are warned about
NOT_ACCOUNTED_FOR = (
    "the members were chosen on these same OOF rows (the best of several trials, the best evaluation step): "
    "the cross-fitted figure does not account for that selection, so it is still somewhat optimistic"
)


class Routes:
    """Which members score which rows. Generalists (no ``data.languages``) score every row; a specialist only the rows
    of its languages. A language with specialists is combined from the generalists and its specialists; every
    other language from the generalists alone (``GLOBAL``)."""

    def __init__(self, specialties: Sequence[Iterable[str] | None]):
        self.k = len(specialties)
        self.specialties = [None if s is None else set(s) for s in specialties]
        self.generalists = [i for i, s in enumerate(self.specialties) if s is None]
        covered = sorted({lang for s in self.specialties if s for lang in s})
        self.groups = {
            lang: self.generalists + [i for i, s in enumerate(self.specialties) if s and lang in s] for lang in covered
        }

    @property
    def has_specialists(self) -> bool:
        return len(self.generalists) < self.k

    def members(self, language: str) -> list[int]:
        return self.groups.get(language, self.generalists)

    def scores(self, i: int, languages: np.ndarray) -> np.ndarray:
        """Rows member ``i`` scores."""
        s = self.specialties[i]
        return np.ones(len(languages), dtype=bool) if s is None else np.isin(languages, sorted(s))

    def uncovered(self, languages: np.ndarray) -> list[str]:
        """Languages of ``languages`` that no member scores (only specialists, none of theirs)."""
        return [] if self.generalists else sorted(set(map(str, languages)) - set(self.groups))

    def equal_weights(self) -> dict[str, list[float]]:
        """1/k within each route (``GLOBAL``: the generalists; each specialist language: its generalists +
        specialists)."""
        routes = ({GLOBAL: self.generalists} if self.generalists else {}) | self.groups
        return {
            lang: [float(x) for x in self.expand(members, np.full(len(members), 1.0 / len(members)))]
            for lang, members in routes.items()
        }

    def expand(self, members: list[int], w: np.ndarray) -> np.ndarray:
        full = np.zeros(self.k)
        full[members] = w
        return full


def _complete(p: np.ndarray, members: list[int]) -> np.ndarray:
    return ~np.isnan(p[:, members]).any(axis=1)


@dataclass
class Tuning:
    """How weights are tuned: ``ensemble.combine``, ``grid_step``, ``per_language`` and ``min_language_rows``."""

    combine: str  # prob | logit
    grid_step: float
    per_language: bool
    min_language_rows: int

    @classmethod
    def of(cls, ens: Any) -> "Tuning":
        return cls(ens.combine, ens.grid_step, ens.per_language, ens.min_language_rows)


@dataclass
class Oof:
    """Shared out-of-fold rows: members' p_a (columns, NaN where a member did not validate the row), the target, the
    winner and the language of each row."""

    p: np.ndarray
    target: np.ndarray
    winner: np.ndarray
    languages: np.ndarray
    prompts: np.ndarray  # the prompts' keys (None where a run did not record them)

    def __getitem__(self, rows: np.ndarray) -> "Oof":
        return Oof(self.p[rows], self.target[rows], self.winner[rows], self.languages[rows], self.prompts[rows])

    def parts(self, parts: int = CROSS_FIT_PARTS) -> tuple[np.ndarray, str]:
        """Cross-fitting parts grouped by prompt (rows of one prompt share a part, as the stacker's do), and how they
        were made; rows of runs written before ``oof.parquet`` kept the prompt's key fall back to random parts."""
        if all(isinstance(key, str) for key in self.prompts):
            return prompt_parts(pd.Series(self.prompts), parts), "grouped by prompt"
        return np.random.default_rng(0).permutation(
            len(self.p)
        ) % parts, "random (a run's oof.parquet has no prompt_key)"

    def __len__(self) -> int:
        return len(self.p)


def tune(oof: Oof, tuning: Tuning, routes: Routes | None = None) -> dict[str, np.ndarray]:
    """Weights per route: ``GLOBAL`` over the generalists (tuned on the rows they all scored), own weights for every
    language with specialists (tuned on its rows that its members all scored: at least ``min_language_rows``, else
    equal), and with ``per_language`` for every other language with enough rows."""
    p, languages = oof.p, oof.languages
    routes = routes or Routes([None] * p.shape[1])
    enough = tuning.min_language_rows

    def fit(rows: np.ndarray, members: list[int]) -> np.ndarray:
        if not rows.any():
            return routes.expand(members, np.full(len(members), 1.0 / len(members)))
        part = oof[rows]
        best = tune_weights(part.p[:, members], part.target, part.winner, tuning.combine, tuning.grid_step)
        return routes.expand(members, best)

    weights: dict[str, np.ndarray] = {}
    gens = routes.generalists
    if gens:
        shared = _complete(p, gens)
        if not shared.any():
            raise DuelistError(
                "the generalist runs share no validation ids; train them on the same data and split "
                "(data.split_seed, data.fold)"
            )
        weights[GLOBAL] = fit(shared, gens)
        if tuning.per_language:
            for lang in sorted(set(map(str, languages[shared])) - set(routes.groups)):
                rows = shared & (languages == lang)
                if rows.sum() >= enough:
                    weights[lang] = fit(rows, gens)
    for lang, members in routes.groups.items():
        rows = (languages == lang) & _complete(p, members)
        if rows.sum() < enough:
            log.warning(
                "%s: %d OOF rows that all its runs scored (ensemble.min_language_rows=%d): equal weights for its "
                "%d runs",
                lang,
                int(rows.sum()),
                enough,
                len(members),
            )
        weights[lang] = fit(rows if rows.sum() >= enough else np.zeros(len(p), dtype=bool), members)
    return weights


def cross_fitted(
    oof: Oof, tuning: Tuning, routes: Routes | None = None
) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Cross-fitting: the rows cut in :data:`CROSS_FIT_PARTS` parts (:meth:`Oof.parts`) and, for each, the weights
    tuned on the other parts: ``(rows of the part, weights)``. Every row is then combined with weights that never saw
    it (an honest OOF score, up to the choice of the members themselves)."""
    part, _ = oof.parts()
    fewer = replace(tuning, min_language_rows=tuning.min_language_rows * (CROSS_FIT_PARTS - 1) // CROSS_FIT_PARTS)
    return [(part == k, tune(oof[part != k], fewer, routes)) for k in range(CROSS_FIT_PARTS) if (part == k).any()]


def combined(
    oof: Oof, folds: list[tuple[np.ndarray, dict[str, np.ndarray]]], how: str, reached: np.ndarray | None = None
) -> np.ndarray:
    """Each part's rows combined with its own weights; with ``reached`` (a cascade) only those rows, member 0 alone
    elsewhere."""
    out = oof.p[:, 0].astype(np.float64).copy()
    for held, weights in folds:
        rows = held if reached is None else held & reached
        if rows.any():
            out[rows] = apply(oof.p[rows], oof.languages[rows], weights, how)
    return out


def evaluated_rows(p: np.ndarray, languages: np.ndarray, routes: Routes) -> np.ndarray:
    """OOF rows the routed ensemble can score: every member of the row's route validated it."""
    ok = np.zeros(len(p), dtype=bool)
    for lang in set(map(str, languages)):
        rows = languages == lang
        members = routes.members(lang)
        if members:
            ok[rows] = _complete(p[rows], members)
    return ok


def fit(
    runs: Sequence[str | Path], tuning: Tuning, specialties: Sequence[Iterable[str] | None] | None = None
) -> dict[str, Any]:
    """Tune weights on the runs' OOF rows (``specialties``: each run's ``data.languages``, None for a generalist; see
    :class:`Routes`); returns weights and the OOF scores of members and ensemble (as tuned, and cross-fitted), and for
    two generalists the cascade's scores at 25/50/100% coverage. Scores are over the rows every member of their route
    validated; a member's own score over those of them it scored."""
    routes = Routes(specialties if specialties is not None else [None] * len(runs))
    table = read_oof(runs)
    every = Oof(
        table[[f"p_a_{i}" for i in range(len(runs))]].to_numpy(),
        table["target"].to_numpy(),
        table["winner"].to_numpy(),
        table["language"].astype(str).to_numpy(),
        table["prompt_key"].to_numpy(dtype=object),
    )
    rows = evaluated_rows(every.p, every.languages, routes)
    if not rows.any():
        raise DuelistError(
            f"runs {', '.join(map(str, runs))} share no validation ids; train them on the same data and split "
            "(data.split_seed, data.fold)"
        )
    oof = every[rows]
    shared = shared_share(every, routes)
    if shared < MIN_SHARED:
        log.warning(
            "the members share %.0f%% of their validation rows: weights are tuned and scored on those alone; for an "
            "ensemble that represents them, train the members on the same data, data.split_seed and data.fold",
            100 * shared,
        )
    weights = tune(oof, tuning, routes)
    report = {
        "runs": [str(r) for r in runs],
        "combine": tuning.combine,
        "shared_oof_rows": int(len(oof.p)),
        "shared_share": shared,  # of the validation rows of the generalist that validated most
        "weights": {lang: [float(x) for x in w] for lang, w in weights.items()},
        **scores(oof, weights, routes, tuning.combine),
    }
    rule = table["rule_p_a"].to_numpy(dtype=float)[rows]
    if not np.isnan(rule).any():  # the longer-answer rule on the same rows (older oof.parquet files lack it)
        report["oof/rule_accuracy"] = accuracy(rule, oof.winner)
    if routes.has_specialists:
        report["specialists"] = {str(runs[i]): sorted(s) for i, s in enumerate(routes.specialties) if s is not None}
        report["oof/rows"] = {f"member{i}": int((~np.isnan(oof.p[:, i])).sum()) for i in range(len(runs))}
        if routes.generalists:  # a specialist's validation rows should be the generalists' rows of its languages
            report["specialist_coverage"] = specialist_coverage(runs, every, routes)
    cross_fitted_scores(report, oof, tuning, routes)
    return report


def scores(oof: Oof, weights: dict[str, np.ndarray], routes: Routes, how: str) -> dict[str, dict[str, float]]:
    """Accuracy and log loss of each member (on the rows it scored), of the ensemble as tuned, and of every member
    with the same weight (``mean``, for more than one member)."""
    p, target, winner, k = oof.p, oof.target, oof.winner, oof.p.shape[1]
    ensemble_p = apply(p, oof.languages, weights, how)
    scored = [~np.isnan(p[:, i]) for i in range(k)]
    out = {
        "oof/accuracy": {f"member{i}": accuracy(p[scored[i], i], winner[scored[i]]) for i in range(k)},
        "oof/log_loss": {f"member{i}": log_loss(p[scored[i], i], target[scored[i]]) for i in range(k)},
    }
    out["oof/accuracy"]["ensemble"] = accuracy(ensemble_p, winner)
    out["oof/log_loss"]["ensemble"] = log_loss(ensemble_p, target)
    if k > 1:  # every member with the same weight (ensemble=mean)
        mean = apply(p, oof.languages, routes.equal_weights(), how)
        out["oof/accuracy"]["mean"], out["oof/log_loss"]["mean"] = accuracy(mean, winner), log_loss(mean, target)
    return out


def cross_fitted_scores(report: dict[str, Any], oof: Oof, tuning: Tuning, routes: Routes) -> None:
    """The ensemble's cross-fitted scores into ``report`` (each part of the rows combined with weights tuned on the
    others), and for two generalists the cascade's: the second member on the 25/50/100% of rows the first is least
    sure of, cross-fitted too."""
    how, p, target, winner = tuning.combine, oof.p, oof.target, oof.winner
    folds = cross_fitted(oof, tuning, routes)
    honest = combined(oof, folds, how)
    report["oof/accuracy"]["ensemble_cross_fitted"] = accuracy(honest, winner)
    report["oof/log_loss"]["ensemble_cross_fitted"] = log_loss(honest, target)
    report["cross_fitting"] = {"parts": CROSS_FIT_PARTS, "rows": oof.parts()[1], "not_accounted_for": NOT_ACCOUNTED_FOR}
    if p.shape[1] != 2 or routes.has_specialists:
        return
    order = least_confident_first(p[:, 0])
    report["oof/cascade_cross_fitted"] = {}
    for share in CASCADE_COVERAGE:
        reached = np.zeros(len(p), dtype=bool)
        reached[order[: int(round(share * len(p)))]] = True
        q = combined(oof, folds, how, reached)
        report["oof/cascade_cross_fitted"][f"{int(share * 100)}%"] = {
            "accuracy": accuracy(q, winner),
            "log_loss": log_loss(q, target),
        }


def shared_share(every: Oof, routes: Routes) -> float:
    """Rows every generalist validated, as a share of the rows of the generalist that validated most (1.0 when
    they were trained on the same split; 0 for runs of different folds)."""
    if not routes.generalists:
        return 1.0
    own = max(int((~np.isnan(every.p[:, i])).sum()) for i in routes.generalists)
    return float(_complete(every.p, routes.generalists).sum() / own) if own else 0.0


def specialist_coverage(runs: Sequence[str | Path], every: Oof, routes: Routes) -> dict[str, float]:
    """Share of the generalists' OOF rows in its languages that each specialist scored (warned under 90%)."""
    shared = _complete(every.p, routes.generalists)
    coverage = {}
    for i, s in enumerate(routes.specialties):
        if s is None:
            continue
        mine = shared & np.isin(every.languages, sorted(s))
        coverage[str(runs[i])] = float((~np.isnan(every.p[mine, i])).mean()) if mine.any() else 0.0
        if coverage[str(runs[i])] < 0.9:
            log.warning(
                "%s scored %.0f%% of the generalists' OOF rows in %s: train specialists with the generalists' data "
                "and split settings (data.languages keeps rows after the split) so their weights are tuned on enough "
                "rows",
                runs[i],
                100 * coverage[str(runs[i])],
                ", ".join(sorted(s)),
            )
    return coverage


def apply(p: np.ndarray, languages: np.ndarray, weights: dict[str, Sequence[float]], how: str) -> np.ndarray:
    """Combine members row by row with the row's language weights (global weights otherwise). A member with weight 0
    on a row may leave it unscored (NaN: a specialist on another language)."""
    out = np.full(len(p), np.nan)
    languages = np.asarray(languages).astype(str)
    own = np.zeros(len(p), dtype=bool)
    for lang, w in weights.items():
        if lang != GLOBAL:
            own |= languages == lang
    for lang, w in weights.items():
        rows = ~own if lang == GLOBAL else languages == lang
        if rows.any():
            w = np.asarray(w, dtype=np.float64)
            part = p[rows]
            part = np.where(np.isnan(part) & (w == 0)[None, :], 0.5, part)  # any finite value: its weight is 0
            out[rows] = combine(part, w, how)
    if np.isnan(out).any():
        lost = sorted(set(languages[np.isnan(out)]))
        raise DuelistError(
            f"rows in {', '.join(lost)} have no combination: a member they need left them unscored, or no run covers "
            f"these languages (only specialists of other languages: add a generalist run)"
        )
    return out


def equal_weights(k: int) -> dict[str, list[float]]:
    return {GLOBAL: [1.0 / k] * k}
