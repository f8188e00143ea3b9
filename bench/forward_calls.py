"""What one training forward call costs by its shape: rows x width (padded tokens) of a forward and backward pass of
the model as the default trainer builds it (LoRA), on random token ids, in tokens per second. The evidence for
``trainer.max_batch_tokens``, the cap on padded tokens a call:

    python bench/forward_calls.py                                  # tiny_qwen2 and minilm
    python bench/forward_calls.py models=[tiny_qwen2] widths=[64,256]

Writes ``bench/results/forward-calls-<machine>.json`` with device, versions and commit; the best of ``repeats``
timings per shape.
"""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List

import torch
from omegaconf import OmegaConf

from duelist.core import options
from duelist.core.files import write_json
from duelist.core.logs import quiet_library_logs
from duelist.core.options import option
from duelist.models.network_build import build_model
from duelist.tools.bench import compose_network, device_name, git_commit, versions

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@dataclass
class ForwardCallsOptions:
    models: List[str] = option(["tiny_qwen2", "minilm"], "model files to measure (the reward head, as the default job)")
    rows: List[int] = option([1, 2, 4, 8, 16, 32], "sequences a call")
    widths: List[int] = option([32, 64, 128, 256, 384], "tokens a sequence (cut at the model's max_length)")
    repeats: int = option(5, "timings per shape; the best is kept")
    out: str = option(str(ROOT / "bench" / "results" / f"forward-calls-{platform.machine()}.json"), "JSON path")


def call_seconds(model: torch.nn.Module, rows: int, width: int, repeats: int) -> float:
    ids = torch.randint(5, 200, (rows, width), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model(input_ids=ids, attention_mask=mask).logits.float().sum().backward()
        best = min(best, time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return best


def measure(model_name: str, opts: ForwardCallsOptions) -> dict:
    cfg = compose_network(model_name, "default")
    OmegaConf.update(cfg, "model.head", "reward")
    model = build_model(cfg.model, cfg.lora, CPU, seed=0).model.train()
    call_seconds(model, 4, 64, 2)  # warm-up
    widths = [w for w in opts.widths if w <= int(cfg.model.max_length)]
    shapes = []
    for rows in opts.rows:
        for width in widths:
            seconds = call_seconds(model, rows, width, opts.repeats)
            rate = rows * width / seconds
            shapes.append(dict(rows=rows, width=width, tokens=rows * width, seconds=seconds, tokens_per_s=rate))
            print(f"{model_name:11s} {rows:3d} x {width:4d} = {rows * width:6,d} tokens  {rate:9,.0f} tok/s")
    return {"max_length": int(cfg.model.max_length), "shapes": shapes}


def main(argv=None) -> None:
    quiet_library_logs()
    opts = options.parse(ForwardCallsOptions, argv, "python bench/forward_calls.py", __doc__.split("\n\n")[0])
    report = {
        "what": "one forward + backward call (LoRA, reward head) by rows x width, best of repeats, tokens per second",
        "device": device_name(CPU),
        "versions": versions(),
        "commit": git_commit(),
        "models": {name: measure(name, opts) for name in opts.models},
    }
    write_json(Path(opts.out), report)
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
