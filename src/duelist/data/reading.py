"""Read preference pairs from any supported layout into the canonical table (:mod:`duelist.data.pairs`) and check
them: one clear line for a bad file or row.

The layout of a file is chosen by the columns it has, never by its name:
- ``lmsys``: LMSYS arena 55k CSV (JSON-encoded turn lists, one-hot winner_model_a/b/tie);
- ``arena_conversations``: lmsys/chatbot_arena_conversations (``conversation_a/b`` lists of
  ``{role, content}``, ``winner`` model_a/model_b/tie/"tie (bothbad)");
- ``chosen_rejected``: preference pairs ``prompt, chosen, rejected`` (texts or message lists, as in
  UltraFeedback-binarized); the chosen response is placed as A or B at random (seeded);
- ``pairs``: WSDM Cup train/test parquet and any file with the canonical columns.

A source is a parquet, csv or jsonl file, or a Hugging Face dataset ``hf:NAME[#CONFIG][@SPLIT]``
(a Hub id, a ``save_to_disk`` folder or a folder of data files; see :func:`read_hub`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from duelist.core.errors import DuelistError
from duelist.core.files import resolve_path
from duelist.core.languages import detect_languages, language_names
from duelist.data.pairs import CANONICAL_COLUMNS, TEXT_COLUMNS, WINNERS, is_null

log = logging.getLogger(__name__)

ARENA_WINNERS = {"model_a": "model_a", "model_b": "model_b", "tie": "tie", "tie (bothbad)": "tie"}
LMSYS_LABELS = ("winner_model_a", "winner_model_b", "winner_tie")

# ----------------------------------------------------------------------------- reading files


HUB_PREFIX = "hf:"


def read_hub(spec: str) -> pd.DataFrame:
    """A Hugging Face ``datasets`` source: ``hf:NAME[#CONFIG][@SPLIT]`` (split ``train`` unless given).

    NAME is a Hub id (``hf:lmsys/lmsys-arena-human-preference-55k``; needs the network or the local
    ``datasets`` cache), a folder written by ``Dataset.save_to_disk`` (``hf:/data/pairs``), or a local
    folder of parquet/csv/jsonl files that ``datasets.load_dataset`` reads."""
    try:
        import datasets
    except ImportError as err:  # the Kaggle package leaves it out: scoring reads files
        raise DuelistError(
            f"{spec}: reading hf: sources needs the datasets package (pip install datasets); or pass a "
            "parquet/csv/jsonl file"
        ) from err

    rest = spec[len(HUB_PREFIX) :]
    rest, _, split = rest.partition("@")
    name, _, config = rest.partition("#")
    split = split or "train"
    local = resolve_path(name)
    try:
        if os.path.isdir(local) and any(
            os.path.exists(os.path.join(local, f)) for f in ("dataset_info.json", "dataset_dict.json", "state.json")
        ):
            ds = datasets.load_from_disk(local)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DuelistError(f"{spec}: no split {split!r}; it has {', '.join(ds)} (choose one with @SPLIT)")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(local if os.path.isdir(local) else name, config or None, split=split)
    except DuelistError:
        raise
    except Exception as err:  # hub, network, missing split/config, bad files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        offline = (
            ""
            if os.path.isdir(local)
            else "; without network, download it elsewhere (datasets save_to_disk) and pass hf:FOLDER"
        )
        raise DuelistError(f"{spec}: cannot load this Hugging Face dataset ({first}){offline}") from err
    return ds.to_pandas()


def check_csv(path: str, real: str) -> None:
    """Refuse a CSV whose records do not all have the header's field count, or whose quoting is broken, naming the line:
    pandas would shift the text into the wrong columns (or fill a missing field with NaN) and the row would be
    scored."""
    import csv

    with open(real, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, strict=True)
        start = 1
        try:
            header = next(reader, None)
            if header is None:
                return
            while True:
                start = reader.line_num + 1
                row = next(reader, None)
                if row is None:
                    return
                if len(row) != len(header) and row:
                    where = (
                        f"line {start}"
                        if reader.line_num == start
                        else f"the record starting at line {start} (it runs to line {reader.line_num})"
                    )
                    raise DuelistError(
                        f"{path}: {where} has {len(row)} fields, the header has {len(header)}: a quote is not closed "
                        "or a comma inside a text is not quoted; fix the file (texts with commas or newlines go in "
                        "double quotes)"
                    )
        except csv.Error as err:
            what = (
                "a quoted text is never closed (it runs to the end of the file)"
                if "end of data" in str(err)
                else f"broken quoting ({err})"
            )
            raise DuelistError(
                f'{path}: line {start}: {what}; fix the file (a quote inside a quoted text is written "")'
            ) from err


# columns read as text whatever their values look like (answers "4" and "2" stay texts; ids stay as written)
STRING_COLUMNS = (
    "id",
    "question_id",
    "prompt",
    "response_a",
    "response_b",
    "chosen",
    "rejected",
    "winner",
    "model_a",
    "model_b",
    "language",
    "source",
    "source_id",
)


def read_parquet(real: str) -> pd.DataFrame:
    """A parquet file; an integer id column with nulls keeps its integers (pandas would turn them into floats,
    ``101`` into ``101.0``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    df = pd.read_parquet(real)
    if "id" in df and pa.types.is_integer(pq.read_schema(real).field("id").type):
        df["id"] = pq.read_table(real, columns=["id"]).column("id").cast(pa.string()).to_pylist()
    return df


def read_json(path: str, real: str, lines: bool) -> pd.DataFrame:
    """A JSON Lines file (or one JSON array of records) with every value as written: strings stay strings, numbers
    stay numbers, null is null (pandas' type guessing would turn answers "4" into integers and ids into floats)."""
    with open(real, encoding="utf-8") as f:
        if not lines:
            records = json.load(f)
        else:
            records = []
            for n, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except ValueError as err:
                        raise DuelistError(f"{path}: line {n} is not valid JSON ({err}); fix the file") from err
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DuelistError(f"{path}: expected one JSON object per line (or a JSON list of objects)")
    return pd.DataFrame(records, dtype=object)


def read_table(path: str) -> pd.DataFrame:
    """Read a parquet, csv or jsonl file, or a ``hf:`` dataset; any failure is one clear line naming the file."""
    if path.startswith(HUB_PREFIX):
        return read_hub(path)
    real = resolve_path(path)
    if not os.path.exists(real):
        raise DuelistError(f"{path}: file not found (check the path; relative paths are from the directory you run in)")
    if os.path.isdir(real):
        raise DuelistError(f"{path}: is a directory, expected a .parquet, .csv or .jsonl file")
    suffix = Path(real).suffix.lower()
    try:
        if suffix == ".parquet":
            df = read_parquet(real)
        elif suffix == ".csv":
            check_csv(path, real)
            df = pd.read_csv(real, keep_default_na=False, na_values=[""], dtype=dict.fromkeys(STRING_COLUMNS, str))
        elif suffix in (".jsonl", ".json"):
            df = read_json(path, real, lines=suffix == ".jsonl")
        else:
            raise DuelistError(f"{path}: unsupported file type '{suffix}' (use .parquet, .csv or .jsonl)")
    except DuelistError:
        raise
    except Exception as err:  # pyarrow/pandas raise many types for corrupt files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DuelistError(
            f"{path}: cannot read as {suffix.lstrip('.')} ({first}); is the file complete and in that format?"
        ) from err
    return df


ID_TEXTS = ("prompt", "response_a", "response_b", "chosen", "rejected", "conversation_a", "conversation_b")


def id_text(value: Any) -> str:
    """An id as text, as written: ``101`` is ``"101"``; a whole float (an integer column that had nulls somewhere
    upstream) is its integer."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


class Malformed(str):
    """A cell that cannot be read as a text (the reason is the string); canonicalize reports its row."""


def _render_turns(value: Any) -> Any:
    """LMSYS cells are JSON lists of turns (a turn may be null); render them as one text.

    One turn is its text; several turns are joined with ``[Turn i]`` markers. A null cell is None (an empty
    text); a cell that is not a JSON list is :class:`Malformed`.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if not isinstance(value, str):
        return Malformed(f"not a JSON list of turns ({type(value).__name__})")
    try:
        turns = json.loads(value)
    except ValueError:
        return Malformed("not a JSON list of turns (broken JSON)")
    if not isinstance(turns, list):
        return Malformed("not a JSON list of turns")
    return _join_turns(["" if t is None else str(t) for t in turns])


def _join_turns(texts: list[str]) -> str:
    if len(texts) == 1:
        return texts[0]
    return "\n\n".join(f"[Turn {i + 1}]\n{t}" for i, t in enumerate(texts))


def split_turns(text: str) -> list[str]:
    """The turns of a text written by :func:`_join_turns` (``[Turn 1]``, ``[Turn 2]``, ... in order); any other text
    is one turn."""
    first = "[Turn 1]\n"
    if not text.startswith(first):
        return [text]
    parts = re.split(r"\n\n\[Turn (\d+)\]\n", text[len(first) :])
    numbers = [int(n) for n in parts[1::2]]
    if len(parts) < 3 or numbers != list(range(2, len(numbers) + 2)):
        return [text]
    return parts[0::2]


def _messages(value: Any, role: str) -> Any:
    """Texts of one role in a chat (a list of ``{role, content}``, or its JSON), joined; None if not a chat."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, np.ndarray):
        value = list(value)
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m for m in value):
        return None
    texts = ["" if m.get("content") is None else str(m.get("content")) for m in value if m["role"] == role]
    return _join_turns(texts) if texts else None


def _from_lmsys(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    out = pd.DataFrame({"id": df["id"] if "id" in df else None}, index=range(len(df)))
    for col in TEXT_COLUMNS:
        out[col] = [_render_turns(v) for v in df[col]]
    labels = df[list(LMSYS_LABELS)].to_numpy()
    winner = []
    for row in labels:
        hits = [
            name
            for name, flag in zip(("model_a", "model_b", "tie"), row)
            if str(flag).strip() in ("1", "1.0", "True", "true")
        ]
        winner.append(hits[0] if len(hits) == 1 else f"invalid one-hot {list(row)}")
    out["winner"] = winner
    for col in ("model_a", "model_b", "language", "source"):
        if col in df:
            out[col] = df[col].to_numpy()
    return out


def _from_arena_conversations(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    out = pd.DataFrame(
        {"id": df["question_id"] if "question_id" in df else (df["id"] if "id" in df else None)}, index=range(len(df))
    )
    out["prompt"] = [_messages(c, "user") for c in df["conversation_a"]]
    out["response_a"] = [_messages(c, "assistant") for c in df["conversation_a"]]
    out["response_b"] = [_messages(c, "assistant") for c in df["conversation_b"]]
    if "winner" in df:
        out["winner"] = [ARENA_WINNERS.get(w, w) if isinstance(w, str) else w for w in df["winner"]]
    for col in ("model_a", "model_b", "language", "source"):
        if col in df:
            out[col] = df[col].to_numpy()
    return out


def _from_chosen_rejected(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    def response(value: Any) -> Any:  # a chat's assistant turns, else the value itself (plain text)
        text = _messages(value, "assistant")
        return value if text is None else text

    chosen = [response(c) for c in df["chosen"]]
    rejected = [response(r) for r in df["rejected"]]
    if "prompt" in df:
        prompt = list(df["prompt"])
    else:  # the prompt is the user turns of the chosen chat
        prompt = [_messages(c, "user") for c in df["chosen"]]
    a_is_chosen = np.random.default_rng(seed).random(len(df)) < 0.5  # seeded: the same file always gives the same pairs
    out = pd.DataFrame({"id": df["id"] if "id" in df else None, "prompt": prompt}, index=range(len(df)))
    out["response_a"] = np.where(a_is_chosen, np.asarray(chosen, dtype=object), np.asarray(rejected, dtype=object))
    out["response_b"] = np.where(a_is_chosen, np.asarray(rejected, dtype=object), np.asarray(chosen, dtype=object))
    out["winner"] = np.where(a_is_chosen, "model_a", "model_b")
    for col in ("language", "source"):
        if col in df:
            out[col] = df[col].to_numpy()
    return out


def _from_pairs(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    return df.copy()


# layout name -> (columns that identify it, converter to canonical); the first match wins
LAYOUTS: dict[str, tuple[tuple[str, ...], Callable[[pd.DataFrame, int], pd.DataFrame]]] = {
    "lmsys": (TEXT_COLUMNS + LMSYS_LABELS, _from_lmsys),
    "arena_conversations": (("conversation_a", "conversation_b"), _from_arena_conversations),
    "chosen_rejected": (("chosen", "rejected"), _from_chosen_rejected),
    "pairs": (TEXT_COLUMNS, _from_pairs),
}


def find_layout(columns: Iterable[str]) -> str | None:
    """The first layout whose identifying columns are all present, or None."""
    cols = set(columns)
    return next((name for name, (required, _) in LAYOUTS.items() if set(required) <= cols), None)


def detect_layout(columns: Iterable[str], path: str) -> str:
    layout = find_layout(columns)
    if layout is not None:
        return layout
    cols = set(columns)
    missing = sorted(set(TEXT_COLUMNS) - cols)
    raise DuelistError(
        f"{path}: missing column(s) {', '.join(missing)}; expected the WSDM/canonical layout "
        "(id, prompt, response_a, response_b[, winner, ...]), the LMSYS layout (+ "
        "winner_model_a/winner_model_b/winner_tie), "
        "chatbot-arena-conversations (conversation_a, conversation_b, winner) or preference pairs (prompt, chosen, "
        "rejected)"
    )


# ----------------------------------------------------------------------------- checking rows


def _texts(values: Iterable[Any], col: str, bad: list[tuple[int, str]]) -> tuple[list[Any], int]:
    """A text column as read: null and whitespace-only texts become "" (an answer of nothing is data; it is counted);
    a non-string or malformed cell is a bad row. Returns the texts and how many are empty."""
    out, empty = [], 0
    for i, value in enumerate(values):
        if isinstance(value, Malformed):
            bad.append((i, f"column {col} is {value}"))
            out.append(None)
        elif is_null(value) or (isinstance(value, str) and not value.strip()):
            out.append("")
            empty += 1
        elif isinstance(value, str):
            out.append(value)
        else:
            bad.append((i, f"column {col} is not a string ({type(value).__name__})"))
            out.append(None)
    return out, empty


def canonicalize(
    raw: pd.DataFrame, path: str, *, labelled: bool, ties: str, on_bad_rows: str, seed: int = 42
) -> pd.DataFrame:
    """Convert one file's rows to the canonical table and apply the bad-row policy."""
    if len(raw) == 0:
        raise DuelistError(f"{path}: the file has no rows")
    layout = detect_layout(raw.columns, path)
    df = LAYOUTS[layout][1](raw, seed).reset_index(drop=True)
    df["id"] = _ids(df, raw, path)
    detect = "language" not in df  # a file without languages (the WSDM test file, extra data): detected below
    df = _provenance(df, path)
    bad: list[tuple[int, str]] = []
    _read_texts(df, path, bad)
    if labelled:
        _read_labels(df, path, bad)
    else:
        df["winner"], df["p_a"] = None, math.nan
    _refuse_duplicate_ids(df, path)
    if bad:
        df = _drop_bad_rows(df, path, bad, on_bad_rows, labelled)
    if labelled and ties == "drop":
        n_ties = int((df["p_a"] == 0.5).sum())
        if n_ties:
            log.info("%s: dropped %d tie rows (data.ties=drop; data.ties=soft keeps them as p_a=0.5)", path, n_ties)
        df = df[df["p_a"] != 0.5].reset_index(drop=True)
    if len(df) == 0:
        raise DuelistError(
            f"{path}: no rows left after filtering (bad rows and ties removed); check the file and "
            "data.ties/on_bad_rows"
        )
    if detect:
        df["language"] = detect_languages(df["prompt"])
        shares = df["language"].value_counts(normalize=True).head(5)
        log.info(
            "%s: no language column; detected from the prompts: %s",
            path,
            ", ".join(f"{k} {v:.0%}" for k, v in shares.items()),
        )
    return df[CANONICAL_COLUMNS]


def _ids(df: pd.DataFrame, raw: pd.DataFrame, path: str) -> list[str]:
    """The rows' ids as text; a file without ids gets ids unique across sources (the file's name and a digest of its
    texts as written: not of the A/B placement, which is seeded) and the same on every run."""
    if "id" not in df or df["id"].isna().all():
        texts = raw[[c for c in ID_TEXTS if c in raw]].astype(str)
        digest = hashlib.sha256(pd.util.hash_pandas_object(texts, index=False).to_numpy().tobytes()).hexdigest()[:8]
        return [f"{Path(path).stem}-{digest}-{i}" for i in range(len(df))]
    missing = df["id"].isna().to_numpy()
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise DuelistError(
            f"{path}: row {i} has no id ({int(missing.sum())} row(s) in all); give every row an id, or leave the id "
            "column out and duelist makes them"
        )
    return [id_text(v) for v in df["id"]]


def _provenance(df: pd.DataFrame, path: str) -> pd.DataFrame:
    """Where each row comes from: its source (the file's name unless given), language in the WSDM names (da ->
    Danish; "unknown" until detected), the models, and the marks of rows duelist wrote: pseudo-labelled rows
    (``infer.py task=pseudolabel``) and translations with the row they translate (``task=translate``) train but never
    validate."""
    if "source" not in df:
        df["source"] = Path(path).stem
    df["language"] = language_names(df["language"]) if "language" in df else "unknown"
    for col in ("model_a", "model_b"):
        if col not in df:
            df[col] = None
    for mark in ("pseudo_label", "translated"):
        df[mark] = df[mark].fillna(False).astype(bool) if mark in df else False
    for col in ("source_id", "source_pair", "source_prompt"):  # a translation's source (see data.pairs)
        df[col] = [None if is_null(x) else id_text(x) for x in df[col]] if col in df else None
    return df


def _read_texts(df: pd.DataFrame, path: str, bad: list[tuple[int, str]]) -> None:
    """The three text columns as read (:func:`_texts`): empty texts are data and kept; a column empty on every row is
    the wrong file or column."""
    empty: dict[str, int] = {}
    for col in TEXT_COLUMNS:
        df[col], empty[col] = _texts(df[col], col, bad)
        if col != "prompt" and empty[col] == len(df):
            raise DuelistError(
                f"{path}: column {col} is null or empty on every row; is this the right file (or the right column)?"
            )
    if any(empty.values()):
        counts = ", ".join(f"{n} {col}" for col, n in empty.items() if n)
        log.info("%s: empty texts kept as data (%s): a model that answered nothing is a response", path, counts)


def _read_labels(df: pd.DataFrame, path: str, bad: list[tuple[int, str]]) -> None:
    """``p_a`` from a soft label in [0, 1] where given, else from ``winner`` (model_a/model_b/tie)."""
    if "winner" not in df and "p_a" not in df:
        raise DuelistError(f"{path}: no labels: expected a 'winner' column (model_a/model_b/tie) or a soft label 'p_a'")
    if "winner" not in df:
        df["winner"] = None
    p_a = []
    for i, (winner, soft) in enumerate(zip(df["winner"], df["p_a"] if "p_a" in df else [None] * len(df))):
        if soft is not None and not (isinstance(soft, float) and math.isnan(soft)):
            if not isinstance(soft, (int, float, np.number)) or not 0.0 <= float(soft) <= 1.0:
                bad.append((i, f"p_a={soft!r} is not a probability in [0, 1]"))
                p_a.append(math.nan)
            else:
                p_a.append(float(soft))
        elif isinstance(winner, str) and winner in WINNERS:
            p_a.append(WINNERS[winner])
        else:
            bad.append((i, f"winner={winner!r} is not one of model_a, model_b, tie"))
            p_a.append(math.nan)
    df["p_a"] = p_a
    df["winner"] = [w if isinstance(w, str) and w in WINNERS else None for w in df["winner"]]


def _refuse_duplicate_ids(df: pd.DataFrame, path: str) -> None:
    dup = df["id"].duplicated(keep=False)
    if dup.any():
        first = df.loc[dup, "id"].iloc[0]
        rows = list(np.flatnonzero(df["id"].to_numpy() == first)[:2])
        raise DuelistError(f"{path}: duplicate id {first} (rows {rows[0]} and {rows[1]}); ids must be unique")


def _drop_bad_rows(
    df: pd.DataFrame, path: str, bad: list[tuple[int, str]], on_bad_rows: str, labelled: bool
) -> pd.DataFrame:
    """``on_bad_rows``: fail at the first bad row (named, with what to do), or drop them all (counted)."""
    if on_bad_rows == "fail":
        i, what = bad[0]
        fix = (
            "fix the file or set data.on_bad_rows=drop to skip such rows"
            if labelled
            else "fix the file: every test row is scored"
        )
        raise DuelistError(f"{path}: row {i} (id={df['id'].iloc[i]}): {what}; {len(bad)} bad value(s) in all ({fix})")
    drop = sorted({i for i, _ in bad})
    log.warning("%s: dropped %d of %d rows with bad values (first: row %d, %s)", path, len(drop), len(df), *bad[0])
    return df.drop(index=drop).reset_index(drop=True)


def as_list(paths: Any) -> list[str]:
    if paths is None:
        return []
    if isinstance(paths, str):
        return [paths]
    return [str(p) for p in paths]


def load_pairs(
    paths: Any, *, labelled: bool = True, ties: str = "drop", on_bad_rows: str = "fail", seed: int = 42
) -> pd.DataFrame:
    """Read one or several files into one canonical table (ids must be unique across files)."""
    files = as_list(paths)
    if not files:
        raise DuelistError("no data file given (set data.train=PATH, or data.test=PATH for infer.py)")
    frames = [
        canonicalize(read_table(p), p, labelled=labelled, ties=ties, on_bad_rows=on_bad_rows, seed=seed) for p in files
    ]
    df = pd.concat(frames, ignore_index=True)
    dup = df["id"].duplicated()
    if dup.any():
        raise DuelistError(
            f"{', '.join(files)}: id {df.loc[dup, 'id'].iloc[0]} appears in more than one file; ids must be unique"
        )
    return df


def load_test(path: str) -> pd.DataFrame:
    """Test rows keep their input order and every row gets scored: null or empty texts are scored as empty, a winner
    column is ignored; a row that cannot be read at all (a text that is not a string) stops the run, named."""
    if not path:
        raise DuelistError("data.test is not set: give the file to score, e.g. data.test=test.parquet")
    return load_pairs(path, labelled=False, on_bad_rows="fail")
