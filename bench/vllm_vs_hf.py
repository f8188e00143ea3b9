"""The two scoring backends on the same merged runs and rows, in one process: ``backend=hf`` (transformers, duelist's
token-budget batches) against ``backend=vllm`` (vLLM's pooling runner). Run it where vLLM is installed (on a CPU: the
README's vLLM environment):

    .venv-vllm/bin/python bench/vllm_vs_hf.py            # tiny runs it trains itself, on the example test file
    .venv-vllm/bin/python bench/vllm_vs_hf.py runs=[RUN_MERGED,...] test=test.parquet

For each run: the time to load it (vLLM: its engine's start), the time to score every row once (rows/s, tokens/s of
real tokens), and the largest difference in p_a between the two. Writes ``bench/results/vllm-vs-hf-<machine>.json``
with device, versions and commit.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List

import numpy as np

from duelist.core import options
from duelist.core.options import option

ROOT = Path(__file__).resolve().parents[1]
TINY_RUNS = {  # trained here when no runs are given: two heads, two architectures, heads of 32 (vLLM's CPU minimum)
    "llama_pair": ["model=tiny_llama", "model.config_overrides.num_attention_heads=2"]
    + ["model.config_overrides.num_key_value_heads=1", "model.config_overrides.head_dim=32"],
    "qwen3_reward": ["model=tiny_qwen3_rm", "model.name_or_path={work}/tiny_qwen3_rm"],
}


@dataclass
class VllmBenchOptions:
    runs: List[str] = option([], "merged run dirs to score ([]: train and merge two tiny runs first)")
    test: str = option("", "the rows to score ('': the example test file, 300 rows)")
    out: str = option(str(ROOT / "bench" / "results" / f"vllm-vs-hf-{platform.machine()}.json"), "JSON path")


def tiny_runs(work: Path) -> list[str]:
    """Two tiny runs trained with LoRA on the example files and merged (what backend=vllm serves)."""
    python = [sys.executable]
    subprocess.run([*python, "-m", "duelist", "example-data", "reward_model=true"], cwd=work, check=True)
    merged = []
    for name, overrides in TINY_RUNS.items():
        train = ["logger=none", "data=files", "data.train=train.parquet", "trainer.max_steps=4", "lora.r=8"]
        train += [o.format(work=work) for o in overrides] + [f"hydra.run.dir=runs/{name}"]
        subprocess.run([*python, str(ROOT / "train.py"), *train], cwd=work, check=True, capture_output=True)
        export = ["-m", "duelist", "export", f"run=runs/{name}", f"out=runs/{name}-merged"]
        subprocess.run([*python, *export], cwd=work, check=True, capture_output=True)
        merged.append(str(work / "runs" / f"{name}-merged"))
    return merged


def measure(run: str, rows, cache: str) -> dict:
    """Load and score with each backend, fresh: seconds, rows/s, tokens/s; the p_a of both."""
    import torch
    from omegaconf import OmegaConf

    from duelist.models.heads import head_of
    from duelist.models.network_scoring import HFScorer, VllmScorer
    from duelist.runs.run_dir import RunDir

    cfg = OmegaConf.load(ROOT / "conf" / "infer.yaml")
    cfg = OmegaConf.create(
        {k: cfg[k] for k in ("batch_size", "max_batch_tokens", "precision", "quantization", "cpu_kv_cache_gb")}
        | {"tta": "none", "cache_dir": cache, "device_map": None, "devices": [], "backend": "hf"}
    )
    run_cfg = RunDir(run).read_checkpoint_config()
    out, p_a = {"model": run_cfg.model.name, "head": run_cfg.model.head}, {}
    for backend in ("hf", "vllm"):
        started = time.perf_counter()
        scorer = HFScorer(Path(run), cfg, torch.device("cpu")) if backend == "hf" else VllmScorer(Path(run), cfg)
        loaded = time.perf_counter() - started
        scorer.score(rows.iloc[:8])  # warm-up (and the token cache for both)
        started = time.perf_counter()
        p_a[backend] = scorer.score(rows)
        seconds = time.perf_counter() - started
        tokens = int(head_of(run_cfg.model).sequence_tokens(scorer.encoder.encode(rows, cache)).sum())
        out[backend] = {
            "load_s": loaded,
            "score_s": seconds,
            "rows_per_s": len(rows) / seconds,
            "tokens_per_s": tokens / seconds,
        }
    out["max_abs_diff_p_a"] = float(np.abs(p_a["vllm"] - p_a["hf"]).max())
    out["vllm_over_hf_rows_per_s"] = out["vllm"]["rows_per_s"] / out["hf"]["rows_per_s"]
    return out


def table(report: dict) -> list[str]:
    """The docs' table (docs/vllm.md) of a committed report."""
    lines = [
        "| run | backend | load (s) | one pass over the rows (s) | rows/s | tokens/s | vLLM ÷ transformers, rows/s | "
        "max \\|Δp_a\\| |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in report["runs"].items():
        for backend, shown in (("hf", "transformers"), ("vllm", "vLLM")):
            b = r[backend]
            ratio, diff = (
                (f"{r['vllm_over_hf_rows_per_s']:.2f}", f"{r['max_abs_diff_p_a']:.1e}")
                if backend == "vllm"
                else ("", "")
            )
            lines.append(
                f"| {name} ({r['model']}, {r['head']} head) | {shown} | {b['load_s']:.1f} | {b['score_s']:.2f} | "
                f"{b['rows_per_s']:.0f} | {b['tokens_per_s']:,.0f} | {ratio} | {diff} |"
            )
    return lines


def main(argv: list[str]) -> None:
    from importlib.metadata import version

    import torch
    import vllm

    from duelist.core.files import write_json
    from duelist.core.hardware import leave_after_vllm
    from duelist.core.logs import quiet_library_logs
    from duelist.data.reading import load_test
    from duelist.tools.bench import device_name

    quiet_library_logs()
    opts = options.parse(VllmBenchOptions, argv, "python bench/vllm_vs_hf.py", __doc__.split("\n\n")[0])
    with tempfile.TemporaryDirectory(prefix="duelist-vllm-bench-") as tmp:
        work = Path(tmp)
        runs = opts.runs or tiny_runs(work)
        rows = load_test(opts.test or str(work / "test.parquet"))
        results = {Path(run).name: measure(run, rows, str(work / "cache")) for run in runs}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    report = {
        "what": "backend=hf vs backend=vllm on the same merged runs and rows, one process: load (vLLM: engine start), "
        "one scoring pass (no TTA), largest |p_a difference|",
        "device": device_name(torch.device("cpu")),
        "versions": {p: version(p) for p in ("torch", "transformers")}
        | {"vllm": vllm.__version__}
        | {"python": sys.version.split()[0]},
        "commit": commit.strip(),
        "rows": len(rows),
        "runs": results,
    }
    write_json(Path(opts.out), report)
    print("\n".join(table(report)))
    for name, r in results.items():
        for backend in ("hf", "vllm"):
            b = r[backend]
            print(
                f"{name:24s} {backend:4s} load {b['load_s']:6.1f} s  score {b['score_s']:6.2f} s  "
                f"{b['rows_per_s']:7.1f} rows/s {b['tokens_per_s']:9,.0f} tok/s"
            )
        print(f"{name:24s} vllm/hf rows/s {r['vllm_over_hf_rows_per_s']:.2f}, max |dp_a| {r['max_abs_diff_p_a']:.1e}")
    print(f"wrote {opts.out}")
    leave_after_vllm()


if __name__ == "__main__":
    main(sys.argv[1:])
