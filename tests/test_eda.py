"""EDA numbers against independent pandas computations on a real file."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from browser import open_page
from conftest import ROOT, html_tables
from duelist.models.network_build import load_tokenizer

PANDALM = ROOT / "src/duelist/assets/sample/pandalm_test.parquet"


def run_eda(folder, *overrides: str) -> subprocess.CompletedProcess:
    """``python -m duelist eda data=files model=tiny_llama logger=none OVERRIDES`` writing into ``folder/eda``."""
    args = ["data=files", "model=tiny_llama", "logger=none", *overrides, f"hydra.run.dir={folder / 'eda'}"]
    return subprocess.run([sys.executable, "-m", "duelist", "eda", *args], capture_output=True, text=True, cwd=folder)


def test_eda_report_matches_pandas(tmp_path) -> None:
    raw = pd.read_parquet(PANDALM)
    valid = raw.iloc[:50].assign(id=lambda d: "v" + d["id"])  # a validation file sharing 50 prompts
    valid.to_parquet(tmp_path / "valid.parquet")
    out = tmp_path / "eda"
    res = run_eda(tmp_path, f"data.train={PANDALM}", f"data.valid={tmp_path / 'valid.parquet'}", "model.max_length=256")
    assert res.returncode == 0, res.stderr[-3000:]
    eda = json.loads((out / "eda.json").read_text())
    assert "<img src='data:image/png;base64," in (out / "eda.html").read_text()
    # as a user sees it: in a real browser, offline, no error, every chart drawn, not a blank page
    page = open_page(out / "eda.html", tmp_path / "browser")
    assert page.errors == [] and page.images >= 3 and page.images_drawn == page.images, page
    assert page.distinct_colours > 50, page

    q = eda["quality"]
    assert q["rows_read"] == len(raw)
    assert q["empty"]["response_a"] == int((raw["response_a"].str.strip() == "").sum())
    assert q["identical_responses"] == int((raw["response_a"] == raw["response_b"]).sum())
    assert q["duplicate_prompts"] == int(raw["prompt"].duplicated().sum())
    assert q["exact_duplicates"] == int(raw[["prompt", "response_a", "response_b"]].duplicated().sum())

    # every row is kept (empty responses are data); language codes read as the WSDM names
    ok = raw.assign(language=raw["language"].replace({"da": "Danish", "ca": "Catalan"}))
    assert eda["rows"] == len(ok) and (ok["response_a"].str.strip() == "").sum() > 0
    assert eda["winner_share"]["tie"] == float((ok["winner"] == "tie").mean())
    hard = ok[ok["winner"] != "tie"]
    longer = np.where(hard["response_a"].str.len() >= hard["response_b"].str.len(), "model_a", "model_b")
    assert eda["longer_wins"] == float(np.mean(longer == hard["winner"]))
    assert eda["position_bias_a_wins"] == float((hard["winner"] == "model_a").mean())
    bloom = pd.concat(
        [
            hard.loc[hard["model_a"] == "bloom-7b", "winner"] == "model_a",
            hard.loc[hard["model_b"] == "bloom-7b", "winner"] == "model_b",
        ]
    )
    assert eda["win_rate_by_model"]["bloom-7b"]["win_rate"] == float(bloom.mean())
    assert eda["prompt_overlap_train_valid"]["prompts"] == valid["prompt"].nunique()

    tok = load_tokenizer("pkg:duelist/assets/tiny_tokenizer")
    total = [
        sum(len(tok(r[c], add_special_tokens=False)["input_ids"]) for c in ("prompt", "response_a", "response_b"))
        for _, r in ok.iterrows()
    ]
    assert eda["truncation"]["share_truncated"] == float(np.mean(np.array(total) > 256))

    # the page shows the numbers as tables (no JSON dump), the truncation share up front
    page = (out / "eda.html").read_text()
    assert (
        "<pre>" not in page
        and f"<b>{np.mean(np.array(total) > 256):.0%}</b> of pairs are longer than model.max_length=256" in page
    )
    languages = html_tables(page)["languages"]
    assert [r["language"] for r in languages] == list(ok["language"].value_counts().index)
    english = ok["language"] == languages[0]["language"]
    assert int(languages[0]["rows"]) == int(english.sum())
    assert float(languages[0]["median tokens (pair)"]) == pytest.approx(
        float(np.median(np.array(total)[english.to_numpy()])), abs=1e-3
    )
    assert float(languages[0]["share truncated"]) == pytest.approx(
        float(np.mean(np.array(total)[english.to_numpy()] > 256)), abs=1e-3
    )
    hard_en = hard[hard["language"] == languages[0]["language"]]
    assert float(languages[0]["A wins"]) == pytest.approx(float((hard_en["winner"] == "model_a").mean()), abs=1e-3)
    models = {r["model"]: r for r in html_tables(page)["models"]}
    assert float(models["bloom-7b"]["win rate"]) == pytest.approx(float(bloom.mean()), abs=1e-3)


def test_eda_prompt_overlap_between_sources(tmp_path) -> None:
    raw = pd.read_parquet(PANDALM)
    raw = raw[(raw["response_a"].str.strip() != "") & (raw["response_b"].str.strip() != "")]
    main = raw.iloc[:200]
    extra = raw.iloc[150:260].assign(
        id=lambda d: "x" + d["id"], prompt=lambda d: d["prompt"].str.upper()
    )  # overlaps main in case only
    valid = raw.iloc[240:300].assign(id=lambda d: "v" + d["id"])
    for name, df in (("main", main), ("extra", extra), ("valid", valid)):
        df.to_parquet(tmp_path / f"{name}.parquet")
    out = tmp_path / "eda"
    sources = f"data.train=[{tmp_path / 'main.parquet'},{{path:{tmp_path / 'extra.parquet'},validate:false}}]"
    res = run_eda(tmp_path, sources, f"data.valid={tmp_path / 'valid.parquet'}")
    assert res.returncode == 0, res.stderr[-3000:]
    overlap = json.loads((out / "eda.json").read_text())["prompt_overlap_between_sources"]
    norm = lambda s: set(s.str.lower().str.split().str.join(" "))  # noqa: E731
    assert overlap["extra"]["main"] == overlap["main"]["extra"] == len(norm(main["prompt"]) & norm(extra["prompt"])) > 0
    assert overlap["valid"]["extra"] == len(norm(valid["prompt"]) & norm(extra["prompt"])) > 0
    assert overlap["valid"]["main"] == len(norm(valid["prompt"]) & norm(main["prompt"]))
