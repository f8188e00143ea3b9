"""One language vocabulary: the English names the WSDM Cup data uses (``English``, ``Russian``, ``Chinese``, ...).

Files label languages in many ways (``da``, ``zh-CN``, ``pt_BR``, ``english``); :func:`language_name` maps ISO 639-1
codes (with or without a region) and any capitalisation of a known name to the WSDM name. Labels it does not know
are kept as written; missing ones are ``unknown``.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

# ISO 639-1 code -> WSDM name (the languages of the WSDM/LMSYS arena data and their usual neighbours)
CODES = {
    "ar": "Arabic", "bg": "Bulgarian", "bn": "Bengali", "ca": "Catalan", "cs": "Czech", "da": "Danish", "de": "German",
    "el": "Greek", "en": "English", "es": "Spanish", "et": "Estonian", "eu": "Basque", "fa": "Persian", "fi": "Finnish",
    "fr": "French", "gl": "Galician", "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "hu": "Hungarian", "hy": "Armenian",
    "id": "Indonesian", "it": "Italian", "ja": "Japanese", "ka": "Georgian", "kk": "Kazakh", "ko": "Korean",
    "lt": "Lithuanian", "lv": "Latvian", "mn": "Mongolian", "mr": "Marathi", "ms": "Malay", "nb": "Norwegian",
    "nl": "Dutch", "nn": "Norwegian", "no": "Norwegian", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian",
    "ru": "Russian", "sk": "Slovak", "sl": "Slovenian", "sr": "Serbian", "sv": "Swedish", "sw": "Swahili", "ta": "Tamil",
    "te": "Telugu", "th": "Thai", "tl": "Tagalog", "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu", "uz": "Uzbek",
    "vi": "Vietnamese", "zh": "Chinese",
}
NAMES = {name.lower(): name for name in CODES.values()}


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
