"""Language identification of rows without a language column, offline (py3langid), named as the WSDM data names them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import DATA, ROOT, WSDM_EXAMPLE
from duelist.core.languages import detect_languages
from duelist.data.reading import load_pairs, load_test

pytestmark = pytest.mark.fast
SAMPLE = ROOT / "src/duelist/assets/sample"


def test_short_prompts_in_17_languages() -> None:
    samples = json.loads((DATA / "language_samples.json").read_text())["samples"]
    texts = pd.Series([t for ts in samples.values() for t in ts])
    truth = [lang for lang, ts in samples.items() for _ in ts]
    got = list(detect_languages(texts))
    assert np.mean([g == t for g, t in zip(got, truth)]) >= 0.95
    by_language = {lang: [g for g, t in zip(got, truth) if t == lang] for lang in samples}
    # every script the issue names, without a miss: CJK, Cyrillic (Russian vs Ukrainian), Arabic script, Vietnamese,
    # Korean
    for lang in ("Chinese", "Japanese", "Korean", "Russian", "Ukrainian", "Persian", "Arabic", "Vietnamese"):
        assert by_language[lang] == [lang] * 6, (lang, by_language[lang])
    assert all(sum(g == lang for g in found) >= 5 for lang, found in by_language.items())


def test_the_bundled_chinese_and_english_prompts() -> None:
    zh = pd.read_parquet(SAMPLE / "oasst1_zh_rank.parquet").drop_duplicates("prompt")["prompt"]
    en = pd.read_parquet(SAMPLE / "hh_rlhf_harmless_test.parquet").drop_duplicates("prompt")["prompt"]
    assert (
        detect_languages(zh) == "Chinese"
    ).mean() >= 0.98  # the misses are prompts written in English ("who are you ?")
    assert (detect_languages(en) == "English").mean() >= 0.99
    assert list(detect_languages(pd.Series(["", None, "  \n", "12345 + 678", "你好啊"]))) == ["unknown"] * 4 + [
        "Chinese"
    ]


def test_a_file_without_languages_gets_them_detected(tmp_path) -> None:
    test = load_test(str(WSDM_EXAMPLE))  # id, prompt, response_a, response_b, scored: no language column
    assert list(test["language"]) == ["Spanish", "English", "Portuguese"]
    labelled = (
        pd.read_parquet(SAMPLE / "pandalm_test.parquet").head(20).assign(language="fr")
    )  # a given label is kept (named)
    labelled.to_parquet(tmp_path / "given.parquet")
    assert set(load_pairs(str(tmp_path / "given.parquet"))["language"]) == {"French"}
