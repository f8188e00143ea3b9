"""Measure inference and training speed on synthetic pairs: ``python -m duelist bench``.

    python -m duelist bench model=tiny_gemma2 max_length=1024 median_tokens=250 rows=256   # CPU, seconds
    python -m duelist bench model=gemma2_9b_random rows=2000 train=true                   # one GPU

Rows are random token ids whose lengths follow a documented long-tailed mix like the WSDM Cup data
(prompt + both responses): lognormal with median ``median_tokens`` (default 1000) and sigma
``sigma`` (0.8: about 4% of pairs past 4096 tokens), at least 64 tokens, cut at ``max_length``.

Inference, two ways over the same rows: *naive* (every row padded to max_length, a fixed batch of
``batch_size`` rows: how public notebooks do it) and *token budget* (rows sorted by length, batches
of at most ``max_batch_tokens`` padded tokens). Training (``train=true``): LoRA r=64 on sequences of
max_length with gradient checkpointing, AdamW, tokens/s and peak memory.

MFU = useful model FLOPs per second / peak FLOPs of the device. FLOPs counted (see ``forward_flops``):
per token 2·N (N = parameters outside the embedding table) plus attention 4·layers·L·heads·head_dim
for a row of L tokens (scores and weighted sum over the full L×L matrix, as eager attention computes it).
Training counts forward + backward as 3× the forward (the usual 6·N) plus one more forward when gradient
checkpointing recomputes activations — an upper-bound convention for LoRA, stated as such in the JSON.
Peak: the vendor's dense number for known GPUs, and the measured matmul ceiling of this device.

Writes JSON (device, versions, git commit, settings, numbers) to ``out`` (default
``outputs/bench/<device>-<model>.json``; results worth keeping are committed under ``bench/results/`` with ``out=``)
and prints a table. On a GPU it also prints a projection of the time to score 25k rows on Kaggle's 2×T4 (fp16, 65 TFLOPS
each) at the MFU measured here.
"""

from __future__ import annotations

import math
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf

from duelist.core import options
from duelist.core.errors import DuelistError, exit_cleanly_on_user_error
from duelist.core.files import write_json
from duelist.core.logs import quiet_library_logs
from duelist.core.options import option
from duelist.models.heads import PairHead

# dense tensor-core peaks (bf16, fp16 on the T4) from the vendors' data sheets
NOMINAL_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "T4": 65e12}
KAGGLE_ROWS, T4_PEAK = 25_000, 65e12


def synthetic_lengths(n: int, max_length: int, median: float = 1000.0, sigma: float = 0.8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(np.exp(rng.normal(math.log(median), sigma, size=n))), 64, max_length).astype(int)


def synthetic_rows(lengths: Sequence[int], vocab: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=int(n)).tolist() for n in lengths]


def body_parameters(model: torch.nn.Module) -> int:
    """N: parameters doing matmuls per token (everything except the input embedding table)."""
    return sum(
        p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name and "embeddings" not in name
    )


def forward_flops(n_params: int, config: Any, lengths: Sequence[int]) -> float:
    """Model FLOPs of one forward pass over rows of these lengths: 2·N per token + attention."""
    lengths = np.asarray(lengths, dtype=np.float64)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = (
        4.0 * config.num_hidden_layers * config.num_attention_heads * head_dim * lengths
    )  # per token, row of length L
    return float((2.0 * n_params + attention) @ lengths)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def nominal_peak(name: str) -> float | None:
    for key, flops in NOMINAL_PEAK_FLOPS.items():
        if key in name:
            return flops
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul in ``dtype``: what this device really reaches."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        a @ b
        reps += 1
    sync(device)
    return 2.0 * n**3 * reps / (time.perf_counter() - start)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def compose_network(model_name: str, lora: str) -> Any:
    """train.py's config composed with ``model=<model_name>`` (a network) and ``lora=<lora>``, adapter dropout off
    (a measurement wants the same numbers every step), read through the pair head: one sequence per row, which is
    what the measurements time (a head's few outputs cost nothing measurable; a reward head's two sequences per pair
    are counted where a row's sequences are, in ``plan``)."""
    from duelist.core.hydra_setup import compose_train
    from duelist.models.kinds import kind_of

    cfg = compose_train([f"model={model_name}", f"lora={lora}"])
    if kind_of(cfg.model).name != "network":
        raise DuelistError(f"model={model_name}: the benchmark measures networks; {model_name} has none")
    cfg.lora.dropout = 0.0
    OmegaConf.update(cfg, "model.head", PairHead.name)
    return cfg


def build(model_name: str, device: torch.device, lora: bool, gradient_checkpointing: bool = False) -> Any:
    """The model of ``conf/model/<model_name>.yaml`` (random-init configs need no download), with LoRA r=64 as
    ``conf/lora/default.yaml`` has it (the WSDM recipe's, without dropout) or without adapters."""
    from duelist.models.network_build import build_model

    cfg = compose_network(model_name, "default" if lora else "none")
    return build_model(cfg.model, cfg.lora, device, seed=0, gradient_checkpointing=gradient_checkpointing)


def bench_inference(args: BenchOptions, device: torch.device, amp: torch.dtype | None) -> dict[str, Any]:
    from duelist.models.network_scoring import predict_p_a

    head = PairHead()  # compose_network's: one sequence per row

    built = build(args.model, device, lora=False)
    model, pad_id = built.model, built.tokenizer.pad_token_id
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and args.max_length > limit:
        raise DuelistError(
            f"max_length={args.max_length}: model {args.model} covers at most {limit} positions; pass max_length="
            f"{limit} or less"
        )
    lengths = synthetic_lengths(args.rows, args.max_length, args.median_tokens, args.sigma, args.seed)
    rows = synthetic_rows(lengths, len(built.tokenizer), args.seed)
    n_params = body_parameters(model)
    useful = forward_flops(n_params, model.config, lengths)
    warm = rows[: max(1, args.batch_size)]
    predict_p_a(model, head, warm, pad_id, args.batch_size, device, amp, desc="warm-up")
    naive_rows = [r + [pad_id] * (args.max_length - len(r)) for r in rows]  # padded to max_length, as in the notebooks
    _, naive_s = timed(
        lambda: predict_p_a(model, head, naive_rows, pad_id, args.batch_size, device, amp, desc="naive"), device
    )
    _, budget_s = timed(
        lambda: predict_p_a(
            model, head, rows, pad_id, 10**9, device, amp, desc="token budget", max_tokens=args.max_batch_tokens
        ),
        device,
    )
    real_tokens = int(lengths.sum())
    result = {
        "body_parameters": n_params,
        "rows": args.rows,
        "real_tokens": real_tokens,
        "length_percentiles": {str(q): float(np.percentile(lengths, q)) for q in (10, 50, 90, 99)},
        "share_at_max_length": float((lengths >= args.max_length).mean()),
        "forward_flops": useful,
    }
    for name, seconds in (("naive", naive_s), ("token_budget", budget_s)):
        result[name] = {
            "seconds": seconds,
            "rows_per_s": args.rows / seconds,
            "tokens_per_s": real_tokens / seconds,
            "flops_per_s": useful / seconds,
        }
    result["speedup_rows_per_s"] = naive_s / budget_s
    return result


def bench_training(args: BenchOptions, device: torch.device, amp: torch.dtype | None) -> dict[str, Any]:
    from duelist.core.batching import pad
    from duelist.models.network_training import pair_losses

    built = build(args.model, device, lora=True, gradient_checkpointing=True)
    model = built.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    rows = synthetic_rows([args.max_length] * args.train_batch, len(built.tokenizer), args.seed)
    ids, mask = (t.to(device) for t in pad(rows, built.tokenizer.pad_token_id))
    target = torch.full((len(rows),), 0.7, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(input_ids=ids, attention_mask=mask).logits
        pair_losses(logits, target).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _, seconds = timed(lambda: [step() for _ in range(args.train_steps)], device)
    tokens = args.train_steps * args.train_batch * args.max_length
    n_params = body_parameters(model)
    # forward + backward = 3 forwards (6·N), + 1 forward recomputed by gradient checkpointing
    flops = 4.0 * forward_flops(
        n_params,
        model.get_base_model().config if hasattr(model, "get_base_model") else model.config,
        [args.max_length] * (args.train_steps * args.train_batch),
    )
    out = {
        "lora_r": 64,
        "gradient_checkpointing": True,
        "batch": args.train_batch,
        "max_length": args.max_length,
        "steps": args.train_steps,
        "tokens_per_s": tokens / seconds,
        "flops_per_s": flops / seconds,
        "flops_convention": "4x forward FLOPs (forward, backward as 2 forwards, checkpoint recompute)",
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
    }
    return out


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> dict[str, str]:
    import peft
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "cuda": torch.version.cuda or "none",
    }


def projection(inference: dict[str, Any], mfu: float, rows: int) -> dict[str, float]:
    """Hours to score the Kaggle test set on 2×T4 at the MFU measured here (a projection, not a measurement)."""
    per_row = inference["forward_flops"] / rows
    one_pass = KAGGLE_ROWS * per_row / (2 * T4_PEAK * mfu) / 3600
    return {"one_model_h": one_pass, "one_model_tta_h": 2 * one_pass, "two_models_tta_h": 4 * one_pass}


def run(args: BenchOptions) -> dict[str, Any]:
    from duelist.core.hardware import autocast_dtype

    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    amp = autocast_dtype("auto", device)
    name = device_name(device)
    ceiling = matmul_ceiling(device, amp or torch.float32)
    peak = nominal_peak(name) if device.type == "cuda" else None
    report: dict[str, Any] = {
        "device": name,
        "versions": versions(),
        "commit": git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "model": args.model,
        "dtype": str(amp or torch.float32).replace("torch.", ""),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "length_distribution": (
            f"lognormal(median={args.median_tokens}, sigma={args.sigma}) clipped to [64, {args.max_length}]"
        ),
        "peak_flops_nominal": peak,
        "peak_flops_measured_matmul": ceiling,
    }
    inf = report["inference"] = bench_inference(args, device, amp)
    for key in ("naive", "token_budget"):
        inf[key]["mfu_vs_measured"] = inf[key]["flops_per_s"] / ceiling
        if peak:
            inf[key]["mfu"] = inf[key]["flops_per_s"] / peak
    if args.train:
        tr = report["training"] = bench_training(args, device, amp)
        tr["mfu_vs_measured"] = tr["flops_per_s"] / ceiling
        if peak:
            tr["mfu"] = tr["flops_per_s"] / peak
    if device.type == "cuda":
        mfu = inf["token_budget"].get("mfu", inf["token_budget"]["mfu_vs_measured"])
        report["projection_2xT4"] = {
            **projection(inf, mfu, args.rows),
            "assumes": f"the MFU measured here ({mfu:.2f}) at fp16 on each T4 (65 TFLOPS)",
        }
    out = Path(
        args.out or f"outputs/bench/{slug(name)}-{args.model}.json"
    )  # never the committed bench/results/ unless asked
    write_json(out, report)
    print_report(report, out)
    return report


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-").replace("--", "-")[:60]


def print_report(r: dict[str, Any], out: Path) -> None:
    inf = r["inference"]
    print(f"device: {r['device']}  model: {r['model']}  dtype: {r['dtype']}  commit: {r['commit'][:10]}")
    print(
        f"matmul ceiling {r['peak_flops_measured_matmul'] / 1e12:.2f} TFLOPS"
        + (f", nominal peak {r['peak_flops_nominal'] / 1e12:.0f} TFLOPS" if r["peak_flops_nominal"] else "")
    )
    print(
        f"rows: {inf['rows']} ({r['length_distribution']}; median {inf['length_percentiles']['50']:.0f}, p99 "
        f"{inf['length_percentiles']['99']:.0f} tokens)"
    )
    print(f"{'inference':<14}{'rows/s':>10}{'tokens/s':>12}{'MFU':>8}{'MFU(ceil)':>11}")
    for key in ("naive", "token_budget"):
        m = inf[key]
        mfu = f"{m['mfu']:.3f}" if "mfu" in m else "-"
        print(f"{key:<14}{m['rows_per_s']:>10.2f}{m['tokens_per_s']:>12.0f}{mfu:>8}{m['mfu_vs_measured']:>11.3f}")
    print(f"token budget vs naive: {inf['speedup_rows_per_s']:.2f}x rows/s")
    if "training" in r:
        t = r["training"]
        mem = f", peak memory {t['peak_memory_gb']:.1f} GB" if t["peak_memory_gb"] is not None else ""
        print(
            f"training LoRA r=64, {t['max_length']} tokens: {t['tokens_per_s']:.0f} tokens/s, MFU(ceil) "
            f"{t['mfu_vs_measured']:.3f}{mem}"
        )
    if "projection_2xT4" in r:
        p = r["projection_2xT4"]
        print(
            f"PROJECTION for {KAGGLE_ROWS} rows on 2xT4 ({p['assumes']}): one model {p['one_model_h']:.1f} h, "
            f"with TTA {p['one_model_tta_h']:.1f} h, two models with TTA {p['two_models_tta_h']:.1f} h"
        )
    print(f"wrote {out}")


@dataclass
class BenchOptions:
    model: str = option("tiny_gemma2", "a conf/model name (gemma2_9b_random: the 9B shape, random weights)")
    rows: int = option(256, "synthetic pairs to score")
    max_length: int = option(1024, "tokens per pair at most (rows are cut here)")
    median_tokens: float = option(1000.0, "median pair length of the synthetic mix")
    sigma: float = option(0.8, "lognormal sigma of the pair lengths (0.8: ~4% past 4x the median)")
    batch_size: int = option(8, "naive: rows per batch")
    max_batch_tokens: int = option(8192, "token budget: padded tokens per batch at most")
    train: bool = option(False, "also measure LoRA training at max_length")
    train_batch: int = option(2, "training rows per step")
    train_steps: int = option(3, "timed training steps (after one warm-up step)")
    device: str = option("auto", "auto | cpu")
    seed: int = option(0, "seed of the synthetic rows")
    out: Optional[str] = option(
        None, "JSON path (default outputs/bench/<device>-<model>.json; bench/results/... to commit a result)"
    )


def parse(argv: Sequence[str] | None = None) -> BenchOptions:
    return options.parse(BenchOptions, argv, "python -m duelist bench", __doc__.split("\n\n")[0])


@exit_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    quiet_library_logs()
    return run(parse(argv))
