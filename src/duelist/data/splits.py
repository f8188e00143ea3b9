"""Which rows train and which validate: the training sources and their mix, repeated pairs, folds grouped by prompt,
the leakage guard, specialists' languages and quotas, and A/B-swap augmentation.

Training data is a list of *sources* (``data.train``): each a path, or a mapping ``{path, weight, max_rows,
validate}`` that sets the loss weight of its rows, caps its rows, and says whether its rows may be held out for
validation (pseudo-labelled and translated files never are).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from duelist.core.errors import DuelistError
from duelist.core.languages import language_name
from duelist.data.pairs import normalized, pair_keys, prompt_keys, swap_pairs
from duelist.data.reading import as_list, load_pairs

log = logging.getLogger(__name__)


def assign_folds(df: pd.DataFrame, n_folds: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Stratified k-fold by label and language: each (label, language) stratum is spread evenly.

    With ``groups`` (e.g. the normalised prompt), all rows of a group share a fold and the group is
    stratified by its first row, so no prompt is in both a training and a validation fold.
    """
    rng = np.random.default_rng(seed)
    codes = pd.factorize(pd.Series(groups if groups is not None else np.arange(len(df))))[0]
    first = pd.Series(np.arange(len(df))).groupby(codes).first().to_numpy()  # representative row per group
    rep = df.iloc[first]
    strata = (rep["p_a"].round(3).astype(str) + "|" + rep["language"].astype(str)).reset_index(drop=True)
    group_folds = np.zeros(len(first), dtype=np.int64)
    offset = 0
    for _, idx in sorted(strata.groupby(strata).groups.items()):
        idx = rng.permutation(np.asarray(idx))
        group_folds[idx] = (np.arange(len(idx)) + offset) % n_folds
        offset += len(idx)  # rotate so that small strata don't all start at fold 0
    return group_folds[codes]


def stratified_sample(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Keep ``n`` rows, proportionally from every (label, language) stratum."""
    if n >= len(df):
        return df
    folds = assign_folds(df, max(2, len(df) // max(1, n)), seed)
    tiebreak = np.random.default_rng(seed).permutation(
        len(df)
    )  # the fold cut short gives random rows, not the first ones
    order = np.lexsort((tiebreak, folds))
    return df.iloc[np.sort(order[:n])].reset_index(drop=True)


SOURCE_KEYS = ("path", "weight", "max_rows", "validate")


@dataclass
class Source:
    """One training file and how it enters the mix."""

    path: str
    weight: float = 1.0  # loss weight of its rows
    max_rows: int | None = None  # keep at most this many rows (stratified, seeded)
    validate: bool | None = None  # may its rows be held out for validation? None: yes, unless pseudo-labelled


def parse_sources(value: Any) -> list[Source]:
    """``data.train``: a path, or a list whose entries are paths or ``{path, weight, max_rows, validate}``."""
    if value is None or isinstance(value, str):
        value = [] if value is None else [value]
    sources = []
    for i, entry in enumerate(value):
        if isinstance(entry, str):
            sources.append(Source(entry))
            continue
        entry = dict(entry)
        unknown = sorted(set(entry) - set(SOURCE_KEYS))
        if unknown or "path" not in entry:
            what = f"unknown key {unknown[0]!r}" if unknown else "no 'path'"
            raise DuelistError(
                f"data.train[{i}]: {what}; a source is a path or "
                f"{{path: FILE, weight: 1.0, max_rows: null, validate: null}}"
            )
        source = Source(**entry)
        if not source.weight >= 0:
            raise DuelistError(f"data.train[{i}] ({source.path}): weight={source.weight} must be >= 0")
        sources.append(source)
    if not sources:
        raise DuelistError("data.train is empty: give one or more files, e.g. data.train=[train.parquet]")
    return sources


def dedup(df: pd.DataFrame) -> pd.DataFrame:
    """Drop repeated pairs across and within sources; the first source listed keeps its copy."""
    dup = pair_keys(df).duplicated()
    if dup.any():
        counts = df.loc[dup, "source"].value_counts().to_dict()
        log.info("dropped %d duplicate pairs (same prompt and responses), per source: %s", int(dup.sum()), counts)
    return df[~dup].reset_index(drop=True)


def load_sources(data_cfg: Any) -> pd.DataFrame:
    """All training sources in one table with ``weight``, ``validate`` and ``file`` (the source it came from) columns,
    capped and deduplicated."""
    frames = []
    for source in parse_sources(data_cfg.train):
        df = load_pairs(
            source.path, labelled=True, ties=data_cfg.ties, on_bad_rows=data_cfg.on_bad_rows, seed=data_cfg.split_seed
        )
        if source.max_rows is not None and source.max_rows < len(df):
            df = stratified_sample(df, int(source.max_rows), data_cfg.split_seed)
        may = ~(
            df["pseudo_label"].to_numpy(dtype=bool) | df["translated"].to_numpy(dtype=bool)
        )  # pseudo-labels and translations never validate
        validate = may if source.validate is None else np.full(len(df), bool(source.validate)) & may
        frames.append(df.assign(weight=float(source.weight), validate=validate, file=source.path))
    df = pd.concat(frames, ignore_index=True)
    dup = df["id"].duplicated()
    if dup.any():
        raise DuelistError(
            f"data.train: id {df.loc[dup, 'id'].iloc[0]} appears in more than one source; ids must be unique"
        )
    return dedup(df) if data_cfg.dedup else df


def language_quota(df: pd.DataFrame, quota: Any, seed: int) -> pd.DataFrame:
    """Keep at most ``quota[language]`` rows of each listed language (stratified by label, seeded)."""
    if not quota:
        return df
    quota = {language_name(k): v for k, v in dict(quota).items()}
    parts = []
    for language, rows in df.groupby("language", sort=False):
        cap = quota.get(language)
        parts.append(rows if cap is None else stratified_sample(rows.reset_index(drop=True), int(cap), seed))
    return pd.concat(parts, ignore_index=True)


def translations_of(train: pd.DataFrame, valid: pd.DataFrame) -> np.ndarray:
    """Translated training rows made from a validation pair, or from a pair whose prompt is a validation prompt. Found
    by the keys of their source texts (``source_pair``, ``source_prompt``), so a copy of the pair under another id (a
    duplicate that dedup dropped, another file, an id that seeded placement gave) is found too; translations written
    before those keys existed are found by ``source_id`` alone."""
    translated = train["translated"].to_numpy(dtype=bool)
    by_text = train["source_pair"].isin(set(pair_keys(valid))) | train["source_prompt"].isin(
        set(prompt_keys(valid["prompt"]))
    )
    by_id = train["source_pair"].isna() & train["source_id"].isin(set(valid["id"]))
    return translated & (by_text | by_id).to_numpy()


def load_train_valid(data_cfg: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and validation rows, each with ``fold``, ``weight`` and ``validate`` columns.

    With ``data.valid`` set, the validation file is fold -1 and train rows are fold 0; otherwise rows
    that may validate get stratified folds grouped by prompt and fold ``data.fold`` is held out
    (rows that may not validate, e.g. pseudo-labels, are fold -2 and always train). Leakage guard:
    no training row has a prompt that is also a validation prompt. ``data.languages`` (a specialist) keeps the rows of
    its languages after the split, so its validation rows are exactly a generalist's rows of those languages (same
    data and split settings) and their OOF predictions line up. The language quota applies to training rows only, so
    validation keeps the real language mix.
    """
    train = load_sources(data_cfg)
    if data_cfg.max_rows:
        train = stratified_sample(train, int(data_cfg.max_rows), data_cfg.split_seed)
    if data_cfg.valid:
        valid = load_pairs(
            data_cfg.valid,
            labelled=True,
            ties=data_cfg.ties,
            on_bad_rows=data_cfg.on_bad_rows,
            seed=data_cfg.split_seed,
        )
        overlap = set(valid["id"]) & set(train["id"])
        if overlap:
            raise DuelistError(
                f"data.valid: id {sorted(overlap)[0]} is also in data.train; validation rows must not be trained on"
            )
        train = train.assign(fold=0)
        valid = valid.assign(fold=-1, weight=1.0, validate=True, file=", ".join(as_list(data_cfg.valid)))
    else:
        if not 0 <= data_cfg.fold < data_cfg.n_folds:
            raise DuelistError(f"data.fold={data_cfg.fold}: must be in 0..{data_cfg.n_folds - 1}")
        can = train["validate"].to_numpy(dtype=bool)
        if not 2 <= data_cfg.n_folds <= int(can.sum()):
            raise DuelistError(
                f"data.n_folds={data_cfg.n_folds}: needs 2 <= n_folds <= number of rows that may validate "
                f"({int(can.sum())})"
            )
        folds = np.full(len(train), -2, dtype=np.int64)
        pool = train[can]
        prompts = normalized(pool["prompt"]).to_numpy()  # folds are grouped by prompt: no prompt in two folds
        folds[can] = assign_folds(pool, data_cfg.n_folds, data_cfg.split_seed, groups=prompts)
        train = train.assign(fold=folds)
        is_valid = train["fold"] == data_cfg.fold
        if is_valid.all() or not is_valid.any():
            raise DuelistError(
                f"data.fold={data_cfg.fold}: the split leaves no {'training' if is_valid.all() else 'validation'} rows "
                "(folds are grouped by prompt and there are too few distinct prompts for "
                f"data.n_folds={data_cfg.n_folds}); "
                "lower data.n_folds or give data.valid=FILE"
            )
        train, valid = train[~is_valid].reset_index(drop=True), train[is_valid].reset_index(drop=True)
    valid_prompts = set(normalized(valid["prompt"]))
    copies = translations_of(train, valid)
    if copies.any():  # a translation of a validation pair (or of a pair with a validation prompt) is that pair again
        log.warning(
            "dropped %d translated training rows whose source row is a validation row or has a validation prompt",
            int(copies.sum()),
        )
        train = train[~copies].reset_index(drop=True)
    leak = normalized(train["prompt"]).isin(valid_prompts)
    if leak.any():  # leakage guard: a validation prompt is never trained on
        counts = train.loc[leak, "source"].value_counts().to_dict()
        log.warning(
            "dropped %d training rows whose prompt is a validation prompt (per source: %s)", int(leak.sum()), counts
        )
        train = train[~leak].reset_index(drop=True)
        if len(train) == 0:
            raise DuelistError("data.train: no rows left after removing prompts that are validation prompts")
    if data_cfg.languages:  # after the split: a specialist's validation rows are the generalist's rows of its languages
        keep = {language_name(x) for x in data_cfg.languages}
        train = train[train["language"].isin(keep)].reset_index(drop=True)
        valid = valid[valid["language"].isin(keep)].reset_index(drop=True)
        if len(train) == 0 or len(valid) == 0:
            raise DuelistError(
                f"data.languages={sorted(keep)}: no {'training' if len(train) == 0 else 'validation'} rows in these "
                "languages"
            )
    train = language_quota(train, data_cfg.language_quota, data_cfg.split_seed)
    return train, valid


def augment(df: pd.DataFrame, swap: bool, same_batch: bool) -> pd.DataFrame:
    """Training rows after augmentation; with ``same_batch`` a pair and its swap stay adjacent (``pair`` column)."""
    df = df.assign(pair=np.arange(len(df)))
    if not swap:
        return df
    both = pd.concat([df, swap_pairs(df)], ignore_index=True)
    if same_batch:
        both = both.sort_values("pair", kind="stable").reset_index(drop=True)
    return both


def fingerprints(train: pd.DataFrame, valid: pd.DataFrame) -> dict[str, str]:
    """A digest of the rows each data file gives training and validation (ids, texts, labels, weights, folds, in
    order), by file: a resumed run checks it trains on the rows it started with and can name the file that changed."""
    rows = pd.concat([train.assign(part="train"), valid.assign(part="valid")], ignore_index=True)
    columns = ["part", "id", "prompt", "response_a", "response_b", "p_a", "weight", "fold"]
    out = {}
    for file, group in rows.groupby("file", sort=True):
        digest = pd.util.hash_pandas_object(group[columns].astype(str), index=False).to_numpy().tobytes()
        out[str(file)] = hashlib.sha256(digest).hexdigest()[:16]
    return out
