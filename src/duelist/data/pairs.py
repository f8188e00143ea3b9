"""The canonical pair table: its columns and what is done to a pair wherever it comes from.

Canonical columns: ``id, prompt, response_a, response_b, winner, model_a, model_b, language, source, p_a,
pseudo_label, translated, source_id, source_pair, source_prompt`` (the last five: rows written by ``infer.py
task=pseudolabel`` / ``task=translate``, which train but never validate; a translation names the row it was made
from: ``source_id``, and keys of its texts, ``source_pair`` (:func:`pair_keys`) and ``source_prompt``
(:func:`prompt_keys`), which find the pair again whatever id another file gives it).
``winner`` is ``model_a``/``model_b``/``tie`` (None on test rows); ``p_a`` is the probability that A wins (1, 0, 0.5
for a kept tie, or a soft label given in the file).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import pandas as pd

TEXT_COLUMNS = ("prompt", "response_a", "response_b")
CANONICAL_COLUMNS = [
    "id",
    "prompt",
    "response_a",
    "response_b",
    "winner",
    "model_a",
    "model_b",
    "language",
    "source",
    "p_a",
    "pseudo_label",
    "translated",
    "source_id",
    "source_pair",
    "source_prompt",
]
WINNERS = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5}


def is_text(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def normalized(text: pd.Series) -> pd.Series:
    """Lower-case, whitespace-collapsed text: the key for prompt overlap."""
    return text.astype(str).str.lower().str.split().str.join(" ")


def pair_keys(df: pd.DataFrame) -> pd.Series:
    """Hash of the normalised prompt and the unordered pair of normalised responses (A/B swapped = same pair)."""
    p, a, b = (normalized(df[c]) for c in TEXT_COLUMNS)
    lo, hi = np.where(a <= b, a, b), np.where(a <= b, b, a)
    return pd.Series(
        [hashlib.sha1(f"{x}\x00{y}\x00{z}".encode()).hexdigest() for x, y, z in zip(p, lo, hi)], index=df.index
    )


def prompt_keys(prompts: pd.Series) -> pd.Series:
    """Hash of the normalised prompt: the leakage guard's key (no validation prompt is ever trained on) and what
    cross-fitting groups rows by (``oof.parquet`` keeps it as ``prompt_key``)."""
    return pd.Series([hashlib.sha256(x.encode()).hexdigest() for x in normalized(prompts)], index=prompts.index)


def prompt_parts(keys: pd.Series, parts: int) -> np.ndarray:
    """Cross-fitting part of every row from its :func:`prompt_keys` key: rows of one prompt share a part."""
    return np.array([int(key[:8], 16) % parts for key in keys])


def swap_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """The same pairs with A and B exchanged and the label flipped (``id`` gets a ``#swap`` suffix)."""
    out = df.copy()
    out["response_a"], out["response_b"] = df["response_b"].to_numpy(), df["response_a"].to_numpy()
    out["model_a"], out["model_b"] = df["model_b"].to_numpy(), df["model_a"].to_numpy()
    out["p_a"] = 1.0 - df["p_a"]
    flip = {"model_a": "model_b", "model_b": "model_a", "tie": "tie"}
    out["winner"] = [flip.get(w) if isinstance(w, str) else None for w in df["winner"]]
    out["id"] = df["id"].astype(str) + "#swap"
    return out
