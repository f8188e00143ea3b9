"""Hand-made features of a pair, for the feature model (``model=features``) and the stacker (``ensemble=stack``).

Every text (prompt, response A, response B) is measured on its own (:func:`text_features`): its length in characters,
words (runs of letters/digits; every CJK character counts as one, since those scripts do not separate words) and lines;
its markdown structure (headers, list items, code blocks, bold spans, links, table rows, blank-line paragraphs);
refusal or apology openings in the main WSDM languages; repetition (share of repeated lines, of repeated word
3-grams, and how well it compresses); and its language (detected, :mod:`duelist.core.languages`).

:func:`pair_features` turns the three into one row: the prompt's measures, each response's measures, their
difference (A - B) and A's share (A / (A + B)) for the counts, whether each response is written in the prompt's
language. It also gives the same rows with A and B exchanged, so a model can be trained and scored in both orders
without measuring the texts again.

With a sentence encoder (``model.encoder=use``, :mod:`duelist.data.sentence_embeddings`) it adds what the
measures cannot see, the meaning, in four columns: the cosine similarity of the prompt with each response, their
difference, and the similarity of the two responses.
"""

from __future__ import annotations

import re
import zlib

import numpy as np
import pandas as pd

from duelist.core.languages import CODES, detect_languages
from duelist.data.sentence_embeddings import embed

# the language vocabulary of the categorical language columns (fixed, so a saved model reads new rows the same way)
LANGUAGES = sorted(set(CODES.values())) + ["unknown"]
LANGUAGE_CODE = {name: float(i) for i, name in enumerate(LANGUAGES)}

CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
WORD = re.compile(rf"[{CJK}]|[^\W{CJK}]+")
HEADER = re.compile(r"^\s{0,3}#{1,6}\s", re.M)
LIST_ITEM = re.compile(r"^\s*(?:[-*+\u2022]|\d+[.)])\s+\S", re.M)
BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")
LINK = re.compile(r"https?://|\]\([^)]+\)")
TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$", re.M)
PARAGRAPH = re.compile(r"\n\s*\n")
# how answers that decline or apologise open, in the main languages of the WSDM data (lower case; read in the first 400
# characters)
REFUSALS = (
    "i'm sorry",
    "i am sorry",
    "i apologize",
    "i apologise",
    "sorry, but",
    "i cannot",
    "i can't",
    "i can not",
    "i'm unable",
    "i am unable",
    "i won't",
    "as an ai",
    "as a language model",
    "i'm not able",
    "i am not able",
    "извините",
    "к сожалению",
    "я не могу",
    "не могу помочь",
    "как ии",
    "как языковая модель",
    "抱歉",
    "对不起",
    "我无法",
    "我不能",
    "作为一个人工智能",
    "作为ai",
    "很遗憾",
    "xin lỗi",
    "tôi không thể",
    "là một ai",
    "es tut mir leid",
    "ich kann nicht",
    "leider kann ich",
    "申し訳",
    "できません",
    "お答えできません",
    "죄송",
    "할 수 없",
    "도와드릴 수 없",
    "lo siento",
    "no puedo",
    "lo lamento",
    "désolé",
    "je ne peux pas",
    "je suis désolé",
    "desculpe",
    "não posso",
    "sinto muito",
    "متاسفم",
    "نمی‌توانم",
    "عذرا",
    "لا أستطيع",
)
REFUSAL_HEAD = 400
CATEGORICAL = ("prompt_language", "a_language", "b_language")  # language codes: LightGBM splits them as categories

COUNTS = (
    "chars",
    "words",
    "lines",
    "paragraphs",
    "headers",
    "list_items",
    "code_blocks",
    "bold",
    "links",
    "table_rows",
)
MEASURES = COUNTS + ("empty", "refusal", "repeated_lines", "repeated_trigrams", "compression")


def text_features(text: str) -> dict[str, float]:
    """The measures of one text (see the module docstring)."""
    text = text or ""
    words = WORD.findall(text.lower())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    trigrams = list(zip(words, words[1:], words[2:]))
    raw = text.encode("utf-8")
    head = text[:REFUSAL_HEAD].lower()
    return {
        "chars": float(len(text)),
        "words": float(len(words)),
        "lines": float(len(lines)),
        "paragraphs": float(len(PARAGRAPH.split(text.strip()))) if text.strip() else 0.0,
        "headers": float(len(HEADER.findall(text))),
        "list_items": float(len(LIST_ITEM.findall(text))),
        "code_blocks": float(text.count("```") // 2),
        "bold": float(len(BOLD.findall(text))),
        "links": float(len(LINK.findall(text))),
        "table_rows": float(len(TABLE_ROW.findall(text))),
        "empty": float(not text.strip()),
        "refusal": float(any(marker in head for marker in REFUSALS)),
        "repeated_lines": 1.0 - len(set(lines)) / len(lines) if lines else 0.0,
        "repeated_trigrams": 1.0 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0,
        "compression": len(zlib.compress(raw)) / len(raw) if raw else 1.0,
    }


def _measure(texts: pd.Series) -> pd.DataFrame:
    values = texts.fillna("").astype(str)
    found = {text: text_features(text) for text in values.unique()}  # each distinct text once
    return pd.DataFrame([found[text] for text in values], index=texts.index)


def _languages(texts: pd.Series) -> np.ndarray:
    return detect_languages(texts).to_numpy()


def measure_texts(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per-text measures and detected language of ``prompt``, ``response_a`` and ``response_b`` (always detected, also
    where a file labels its rows: the same reading on training and test rows, whose labels are detected)."""
    return {
        column: _measure(df[column]).assign(language=_languages(df[column]))
        for column in ("prompt", "response_a", "response_b")
    }


def assemble(prompt: pd.DataFrame, a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """One feature row per pair from the measured prompt and responses (in this order: A, then B)."""
    cols: dict[str, np.ndarray] = {}
    for m in ("chars", "words", "lines"):
        cols[f"prompt_{m}"] = prompt[m].to_numpy()
    cols["prompt_language"] = np.array([LANGUAGE_CODE.get(x, np.nan) for x in prompt["language"]])
    for side, table in (("a", a), ("b", b)):
        for m in MEASURES:
            cols[f"{side}_{m}"] = table[m].to_numpy()
        cols[f"{side}_language"] = np.array([LANGUAGE_CODE.get(x, np.nan) for x in table["language"]])
        cols[f"{side}_same_language"] = (table["language"].to_numpy() == prompt["language"].to_numpy()).astype(float)
    for m in COUNTS + ("repeated_trigrams", "compression"):
        x, y = a[m].to_numpy(), b[m].to_numpy()
        cols[f"diff_{m}"] = x - y
        if m in COUNTS:
            cols[f"share_{m}"] = (x + 1.0) / (x + y + 2.0)
    cols["diff_same_language"] = cols["a_same_language"] - cols["b_same_language"]
    cols["diff_refusal"] = cols["a_refusal"] - cols["b_refusal"]
    return pd.DataFrame(cols)


def similarity_features(df: pd.DataFrame, encoder: str, cache_dir: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The encoder's cosine similarities of every pair as given and with A and B exchanged: prompt-A, prompt-B, their
    difference, A-B."""
    texts = [text for column in ("prompt", "response_a", "response_b") for text in df[column].fillna("").astype(str)]
    p, a, b = np.split(embed(texts, encoder, cache_dir), 3)
    pa, pb, ab = (p * a).sum(1), (p * b).sum(1), (a * b).sum(1)

    def table(x: np.ndarray, y: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({"sim_prompt_a": x, "sim_prompt_b": y, "sim_diff": x - y, "sim_a_b": ab})

    return table(pa, pb), table(pb, pa)


def pair_features(
    df: pd.DataFrame, encoder: str = "none", cache_dir: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Feature rows of every pair as given and with A and B exchanged (same row order, same columns); with an
    ``encoder`` (not ``none``) also the similarity columns (:func:`similarity_features`)."""
    texts = measure_texts(df)
    prompt, a, b = texts["prompt"], texts["response_a"], texts["response_b"]
    given, swapped = assemble(prompt, a, b), assemble(prompt, b, a)
    if encoder == "none":
        return given, swapped
    sim_given, sim_swapped = similarity_features(df, encoder, cache_dir)
    return pd.concat([given, sim_given], axis=1), pd.concat([swapped, sim_swapped], axis=1)
