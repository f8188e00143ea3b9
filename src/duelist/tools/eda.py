"""Exploratory report of a preference dataset: ``eda.json`` (the numbers) and ``eda.html`` (charts inline).

    python -m duelist eda data=files data.train=train.parquet [data.valid=valid.parquet] hydra.run.dir=DIR

It composes the same config as train.py: ``data`` picks the files, ``model`` the tokenizer whose token
counts and ``max_length`` truncation are reported, ``logger`` where the report is also logged.
Data-quality numbers are taken from the rows as read, before bad rows are dropped.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from duelist.core.files import write_json, write_text
from duelist.core.metrics import longer_answer_p_a, predicted_winner
from duelist.data.pairs import TEXT_COLUMNS, normalized
from duelist.data.reading import LAYOUTS, detect_layout, load_pairs, read_table
from duelist.data.splits import parse_sources

log = logging.getLogger(__name__)

EXTREME_CHARS = 20_000  # a response longer than this (characters) counts as extreme
LENGTH_RATIO_BUCKETS = [0, 0.5, 0.8, 1.25, 2.0, np.inf]  # len(A) / len(B)


def quality(paths: list[str]) -> dict[str, Any]:
    """Duplicates, empty/identical/non-string texts and extreme lengths, on the rows as read."""
    frames = []
    for path in paths:
        raw = read_table(path)
        frames.append(LAYOUTS[detect_layout(raw.columns, path)][1](raw, 0))
    df = pd.concat(frames, ignore_index=True)
    texts = df[list(TEXT_COLUMNS)]
    non_string = {c: int((~texts[c].map(lambda v: isinstance(v, str))).sum()) for c in TEXT_COLUMNS}
    empty = {c: int(texts[c].map(lambda v: isinstance(v, str) and v.strip() == "").sum()) for c in TEXT_COLUMNS}
    as_text = texts.astype(str)
    return {
        "rows_read": int(len(df)),
        "exact_duplicates": int(as_text.duplicated().sum()),
        "duplicate_prompts": int(as_text["prompt"].duplicated().sum()),
        "identical_responses": int((as_text["response_a"] == as_text["response_b"]).sum()),
        "empty": empty,
        "non_string": non_string,
        "extreme_responses": int(
            (
                (as_text["response_a"].str.len() > EXTREME_CHARS) | (as_text["response_b"].str.len() > EXTREME_CHARS)
            ).sum()
        ),
    }


def describe(values: pd.Series) -> dict[str, float]:
    return {"median": float(values.median()), "p90": float(values.quantile(0.9)), "max": float(values.max())}


def token_counts(tokenizer: Any, texts: list[str], chunk: int = 2000) -> list[int]:
    """Tokens per text, tokenised a chunk at a time so only the counts stay in memory (48k long rows at once took 11
    GB)."""
    counts: list[int] = []
    for start in range(0, len(texts), chunk):
        counts.extend(
            len(ids) for ids in tokenizer(texts[start : start + chunk], add_special_tokens=False)["input_ids"]
        )
    return counts


def report(df: pd.DataFrame, tokenizer: Any, max_length: int, valid: pd.DataFrame | None) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": int(len(df))}
    out["rows_by_source"] = df["source"].value_counts().to_dict()
    out["rows_by_language"] = df["language"].value_counts().to_dict()
    chars = pd.DataFrame({c: df[c].str.len() for c in TEXT_COLUMNS})
    tokens = pd.DataFrame({c: token_counts(tokenizer, df[c].tolist()) for c in TEXT_COLUMNS})
    out["chars"] = {c: describe(chars[c]) for c in TEXT_COLUMNS}
    out["tokens"] = {c: describe(tokens[c]) for c in TEXT_COLUMNS}
    total = tokens.sum(axis=1)
    out["tokens_per_language"] = {str(k): describe(total[idx]) for k, idx in df.groupby("language").indices.items()}
    over = total > max_length
    out["truncation"] = {
        "max_length": int(max_length),
        "share_truncated": float(over.mean()),
        "mean_share_of_tokens_cut": float(((total - max_length).clip(lower=0) / total.clip(lower=1))[over].mean())
        if over.any()
        else 0.0,
    }
    hard_rows = df["winner"].isin(["model_a", "model_b"]).to_numpy()
    longer_is_winner = (
        predicted_winner(longer_answer_p_a(df["response_a"], df["response_b"])) == df["winner"].to_numpy()
    )
    per_language = {}
    for lang, idx in df.groupby("language").indices.items():
        hard_idx = idx[hard_rows[idx]]
        per_language[str(lang)] = {
            "rows": int(len(idx)),
            "median_tokens": float(total.iloc[idx].median()),
            "share_truncated": float(over.iloc[idx].mean()),
            "a_wins": float((df["winner"].to_numpy()[hard_idx] == "model_a").mean()) if len(hard_idx) else float("nan"),
            "longer_wins": float(longer_is_winner[hard_idx].mean()) if len(hard_idx) else float("nan"),
        }
    out["by_language"] = dict(sorted(per_language.items(), key=lambda kv: -kv[1]["rows"]))
    hard = df[df["winner"].isin(["model_a", "model_b"])]
    out["winner_share"] = df["winner"].value_counts(normalize=True).to_dict()
    out["a_wins_by_language"] = (
        hard.groupby("language")["winner"].apply(lambda w: float((w == "model_a").mean())).to_dict()
    )
    out["position_bias_a_wins"] = float((hard["winner"] == "model_a").mean()) if len(hard) else float("nan")
    len_a, len_b = hard["response_a"].str.len(), hard["response_b"].str.len()
    ratio = len_a / len_b.clip(lower=1)
    longer_wins = (
        predicted_winner(longer_answer_p_a(hard["response_a"], hard["response_b"])) == hard["winner"].to_numpy()
    )
    buckets = pd.cut(ratio, LENGTH_RATIO_BUCKETS, right=False)
    out["longer_wins"] = float(longer_wins.mean()) if len(hard) else float("nan")
    out["longer_wins_by_length_ratio"] = {
        str(b): {"rows": int(len(g)), "longer_wins": float(g.mean())}
        for b, g in pd.Series(longer_wins).groupby(buckets.to_numpy(), observed=True)
    }
    if df["model_a"].notna().any():
        wins = pd.concat(
            [
                pd.DataFrame({"model": hard["model_a"], "won": hard["winner"] == "model_a"}),
                pd.DataFrame({"model": hard["model_b"], "won": hard["winner"] == "model_b"}),
            ]
        ).dropna()
        stats = wins.groupby("model")["won"].agg(["mean", "count"]).sort_values("count", ascending=False)
        out["win_rate_by_model"] = {
            str(m): {"win_rate": float(r["mean"]), "battles": int(r["count"])} for m, r in stats.iterrows()
        }
    if valid is not None:
        shared = set(df["prompt"]) & set(valid["prompt"])
        out["prompt_overlap_train_valid"] = {
            "prompts": len(shared),
            "valid_rows": int(valid["prompt"].isin(shared).sum()),
        }
    # distinct normalised prompts shared by each pair of source files (and with the validation file): extra data
    # that repeats competition prompts is dropped from training by the leakage guard, so it is worth knowing
    groups = {str(k): set(normalized(g["prompt"])) for k, g in df.groupby("file" if "file" in df else "source")}
    if valid is not None:
        groups["valid"] = set(normalized(valid["prompt"]))
    names = sorted(groups)
    out["prompt_overlap_between_sources"] = {a: {b: len(groups[a] & groups[b]) for b in names if b != a} for a in names}
    return out


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return f"<img src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>"


def charts(df: pd.DataFrame, numbers: dict[str, Any]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    fig, ax = plt.subplots(figsize=(7, 3))
    langs = pd.Series(numbers["rows_by_language"]).head(15)
    ax.bar(langs.index.astype(str), langs.to_numpy())
    ax.set(title="rows by language (top 15)", xlabel="language", ylabel="rows")
    ax.tick_params(axis="x", rotation=60)
    out.append(("Languages", _png(fig)))
    fig, ax = plt.subplots(figsize=(7, 3))
    for col in TEXT_COLUMNS:
        ax.hist(np.log10(df[col].str.len().clip(lower=1)), bins=50, alpha=0.5, label=col)
    ax.set(title="length of each text", xlabel="characters (log10 scale: 2 = 100, 3 = 1,000)", ylabel="rows")
    ax.legend(fontsize=8)
    out.append(("Lengths", _png(fig)))
    fig, ax = plt.subplots(figsize=(7, 3))
    buckets = numbers["longer_wins_by_length_ratio"]
    ax.bar(list(buckets), [b["longer_wins"] for b in buckets.values()])
    ax.axhline(0.5, color="grey", ls=":")
    ax.set(
        title="win rate of the longer response by length ratio",
        xlabel="len(A) / len(B) in characters",
        ylim=(0, 1),
        ylabel="share of pairs the longer one wins",
    )
    out.append(("Length bias", _png(fig)))
    return out


def _table(rows: list[dict[str, Any]], table_id: str) -> str:
    if not rows:
        return "<p>(none)</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in rows[0])

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if np.isnan(v) else f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3f}"
        return html.escape(str(v))

    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row.values()) + "</tr>" for row in rows)
    return f"<table id={table_id}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def key_facts(numbers: dict[str, Any]) -> list[str]:
    """The few numbers a reader must not miss, as sentences."""
    t = numbers["truncation"]
    facts = [
        f"<b>{t['share_truncated']:.0%}</b> of pairs are longer than model.max_length={t['max_length']} tokens and get "
        f"cut (those lose {t['mean_share_of_tokens_cut']:.0%} of their tokens on average)"
        + (
            ": the model cannot see which answer is longer; consider model.length_hint=buckets or a longer max_length"
            if t["share_truncated"] > 0.2
            else ""
        )
    ]
    facts.append(f"The longer answer wins <b>{numbers['longer_wins']:.1%}</b> of decided pairs: the baseline to beat")
    facts.append(
        f"Response A wins <b>{numbers['position_bias_a_wins']:.1%}</b> of decided pairs (position bias; 50% = none)"
    )
    q = numbers["quality"]
    facts.append(
        f"{q['rows_read']} rows read: {q['exact_duplicates']} exact duplicates, {q['identical_responses']} with "
        "identical responses, "
        f"{sum(q['empty'].values())} empty texts, {sum(q['non_string'].values())} non-string texts, "
        f"{q['extreme_responses']} responses over {EXTREME_CHARS:,} characters"
    )
    return facts


def eda_html(files: list[str], numbers: dict[str, Any], figures: list[tuple[str, str]]) -> str:
    languages = [
        {
            "language": k,
            "rows": v["rows"],
            "median tokens (pair)": v["median_tokens"],
            "share truncated": v["share_truncated"],
            "A wins": v["a_wins"],
            "longer wins": v["longer_wins"],
        }
        for k, v in numbers["by_language"].items()
    ]
    sources = [{"source": k, "rows": v} for k, v in numbers["rows_by_source"].items()]
    ratio = [
        {"len(A)/len(B)": k, "rows": v["rows"], "longer wins": v["longer_wins"]}
        for k, v in numbers["longer_wins_by_length_ratio"].items()
    ]
    lengths = [
        {
            "column": c,
            **{f"chars {k}": v for k, v in numbers["chars"][c].items()},
            **{f"tokens {k}": v for k, v in numbers["tokens"][c].items()},
        }
        for c in numbers["chars"]
    ]
    models = [
        {"model": k, "battles": v["battles"], "win rate": v["win_rate"]}
        for k, v in numbers.get("win_rate_by_model", {}).items()
    ]
    facts = "".join(f"<li>{f}</li>" for f in key_facts(numbers))
    sections = [
        ("Languages", _table(languages, "languages")),
        ("Sources", _table(sources, "sources")),
        ("Lengths", _table(lengths, "lengths")),
        ("Length bias", _table(ratio, "length_ratio")),
        ("Win rate per model name", _table(models, "models") if models else "<p>The files name no models.</p>"),
    ]
    charts_html = "".join(f"<h3>{html.escape(t)}</h3>{img}" for t, img in figures)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>duelist EDA</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:1.5em "
        "2em;color:#222}table{border-collapse:collapse;font-size:13px;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:3px "
        "7px;text-align:right}th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}"
        ".facts{background:#fff6e0;border-left:4px solid #e0a000;padding:.5em 1.5em}</style></head><body>"
        f"<h1>EDA of {html.escape(', '.join(files))}</h1><div class=facts><ul>{facts}</ul></div>"
        + "".join(f"<h2>{html.escape(t)}</h2>{body}" for t, body in sections)
        + f"<h2>Charts</h2>{charts_html}<p>All numbers are also in eda.json next to this page.</p></body></html>"
    )


def run_eda(cfg: Any, out_dir: str | Path) -> dict[str, Any]:
    """Compute the report for ``cfg.data`` with ``cfg.model``'s tokenizer; write eda.json and eda.html."""
    from duelist.core.tracking import make_tracker
    from duelist.models.network_build import load_tokenizer

    out_dir = Path(out_dir)
    files = [source.path for source in parse_sources(cfg.data.train)]
    numbers = {"files": files, "quality": quality(files)}
    # ties kept here: their share is reported; `file` names the source file (for prompt overlap between sources)
    df = pd.concat(
        [load_pairs(f, ties="soft", on_bad_rows="drop").assign(file=Path(f).stem) for f in files], ignore_index=True
    )
    valid = load_pairs(cfg.data.valid, ties="soft", on_bad_rows="drop") if cfg.data.valid else None
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    numbers.update(report(df, tokenizer, cfg.model.max_length, valid))
    numbers["tokenizer"] = cfg.model.name_or_path
    page = eda_html(files, numbers, charts(df, numbers))
    write_json(out_dir / "eda.json", numbers)
    write_text(out_dir / "eda.html", page)
    tracker = make_tracker(cfg.logger, str(out_dir), {"eda": True, "files": files}, name=f"eda-{out_dir.name}")
    tracker.summary({k: v for k, v in numbers.items() if k != "files"})
    tracker.finish()
    print(f"EDA of {len(df)} rows: {out_dir / 'eda.html'} and {out_dir / 'eda.json'}")
    return numbers


def main(argv: list[str]) -> None:
    """``python -m duelist eda [group=option ...] [key=value ...]``: train.py's config and command line (Hydra)."""
    import sys

    import hydra
    from hydra.core.hydra_config import HydraConfig

    from duelist.core.errors import exit_cleanly_on_user_error
    from duelist.core.hydra_setup import TRUSTED_TARGETS, conf_dir, register_configs
    from duelist.core.options import plain

    if any(a in ("-h", "--help") for a in argv):  # its own page, not train.py's (whose config it composes)
        print(plain(__doc__.strip()))
        print("\nGroups that matter here: data (data=files data.train=FILE,...), model (the tokenizer), logger.")
        print("Their options: python train.py --help; their keys: conf/GROUP/OPTION.yaml.")
        return
    register_configs()

    @hydra.main(config_path=str(conf_dir()), config_name="train", execution_whitelist=TRUSTED_TARGETS)
    @exit_cleanly_on_user_error
    def run(cfg: Any) -> None:
        run_eda(cfg, HydraConfig.get().runtime.output_dir)

    sys.argv = [sys.argv[0], *argv]  # Hydra reads the overrides from sys.argv
    run()
