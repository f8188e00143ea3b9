"""The two heads' cost on the same pairs: ``model.head=pair`` (one sequence per pair) against ``model.head=reward``
(prompt + A and prompt + B, two sequences), one model, measured in one process, alternating.

    python bench/heads.py                              # tiny_qwen2 and minilm on 256 pairs of the bundled sample
    python bench/heads.py models=[minilm] rows=512

For each head: tokens per pair (real, unpadded), scoring (``predict_p_a`` as infer.py runs it: sequences sorted by
length) and training steps (the loop's forward of a batch, ``pair_logits_of_batch``: sequences grouped by length;
pair loss, backward and AdamW on LoRA, ``batch_pairs`` pairs a step) in pairs/s and tokens/s; the best of ``repeats``
timings. Writes ``bench/results/heads-<machine>.json`` with device, versions and commit.
"""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List

import numpy as np
import torch
from omegaconf import OmegaConf

from duelist.core import options
from duelist.core.files import write_json
from duelist.core.logs import quiet_library_logs
from duelist.core.options import option
from duelist.data.reading import load_pairs
from duelist.models.heads import HEADS
from duelist.models.network_build import build_model
from duelist.models.network_scoring import predict_p_a
from duelist.models.network_training import pair_logits_of_batch, pair_losses
from duelist.tools.bench import compose_network, device_name, git_commit, versions
from duelist.tools.example_data import SAMPLE

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@dataclass
class HeadsOptions:
    models: List[str] = option(["tiny_qwen2", "minilm"], "model files to measure")
    rows: int = option(256, "pairs of the bundled sample (a seeded random draw)")
    train_steps: int = option(12, "training steps per timing")
    batch_pairs: int = option(16, "pairs per training step (the default job's trainer.batch_size)")
    repeats: int = option(5, "timings per head; the best is kept")
    out: str = option(str(ROOT / "bench" / "results" / f"heads-{platform.machine()}.json"), "JSON path")


def seconds_of(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(model_name: str, rows, opts: HeadsOptions) -> dict:
    setups = {}
    for name, head in HEADS.items():
        cfg = compose_network(model_name, "default")
        OmegaConf.update(cfg, "model.head", name)
        built = build_model(cfg.model, cfg.lora, CPU, seed=0)
        ids = head.encoder(built.tokenizer, cfg.model).encode(rows, None, desc=f"tokenize {name}")
        setups[name] = (built, ids, int(head.sequence_tokens(ids).sum()), cfg)
    for name, (built, ids, tokens, cfg) in setups.items():  # warm-up, both heads, before any timing
        predict_p_a(built.model, HEADS[name], ids[:8], built.tokenizer.pad_token_id, 8, CPU, quiet=True)
    results = {head: {} for head in setups}
    for _ in range(opts.repeats):  # alternate the heads: drift in the machine's speed hits both alike
        for head, (built, ids, tokens, cfg) in setups.items():
            pad_id = built.tokenizer.pad_token_id
            seconds = seconds_of(
                lambda: predict_p_a(built.model, HEADS[head], ids, pad_id, cfg.trainer.eval_batch_size, CPU, quiet=True)
            )
            results[head]["score_s"] = min(results[head].get("score_s", np.inf), seconds)
            model = built.model
            model.train()
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
            b = opts.batch_pairs
            batches = [list(range(i * b, i * b + b)) for i in range(opts.train_steps)]
            trained_tokens = 0

            def steps() -> None:
                nonlocal trained_tokens
                trained_tokens = 0
                for idx in batches:
                    logits, tokens = pair_logits_of_batch(
                        model, HEADS[head], [ids[i] for i in idx], pad_id, CPU, cfg.trainer.max_batch_tokens
                    )
                    pair_losses(logits, torch.full((len(idx),), 0.7)).mean().backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    trained_tokens += tokens

            seconds = seconds_of(steps)
            model.eval()
            results[head]["train_s"] = min(results[head].get("train_s", np.inf), seconds)
            results[head]["train_tokens"] = trained_tokens
    out = {}
    for head, (built, ids, tokens, cfg) in setups.items():
        r = results[head]
        out[head] = {
            "sequences_per_pair": HEADS[head].sequences_per_pair,
            "max_length_per_sequence": int(cfg.model.max_length),
            "tokens_per_pair": tokens / len(ids),
            "score_pairs_per_s": len(ids) / r["score_s"],
            "score_tokens_per_s": tokens / r["score_s"],
            "train_pairs_per_s": opts.batch_pairs * opts.train_steps / r["train_s"],
            "train_tokens_per_s": r["train_tokens"] / r["train_s"],
        }
    ratios = ("tokens_per_pair", "score_pairs_per_s", "score_tokens_per_s", "train_pairs_per_s", "train_tokens_per_s")
    out["reward_over_pair"] = {k: out["reward"][k] / out["pair"][k] for k in ratios}
    return out


def main(argv=None) -> None:
    quiet_library_logs()
    opts = options.parse(HeadsOptions, argv, "python bench/heads.py", __doc__.split("\n\n")[0])
    rows = load_pairs(SAMPLE, on_bad_rows="drop")
    rows = rows.iloc[np.random.default_rng(0).permutation(len(rows))[: opts.rows]].reset_index(drop=True)
    report = {
        "what": "model.head=pair vs reward on the same pairs of the bundled sample, one process, best of repeats",
        "device": device_name(CPU),
        "versions": versions(),
        "commit": git_commit(),
        "rows": opts.rows,
        "models": {name: measure(name, rows, opts) for name in opts.models},
    }
    write_json(Path(opts.out), report)
    for name, m in report["models"].items():
        for head in ("pair", "reward"):
            h = m[head]
            print(
                f"{name:11s} {head:6s} {h['tokens_per_pair']:6.0f} tokens/pair  score {h['score_pairs_per_s']:7.1f} "
                f"pairs/s {h['score_tokens_per_s']:9,.0f} tok/s  train {h['train_pairs_per_s']:6.1f} pairs/s "
                f"{h['train_tokens_per_s']:8,.0f} tok/s"
            )
        print(f"{name:11s} reward/pair: " + ", ".join(f"{k} {v:.2f}" for k, v in m["reward_over_pair"].items()))
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
