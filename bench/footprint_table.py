"""The projection table of docs/real-width.md, from the committed footprint results (bench/results/footprint-*.json).

    python bench/footprint_table.py            # prints the markdown tables the docs page carries

tests/test_footprint.py checks that the page carries exactly these lines.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MODELS = ("gemma2_9b_random", "qwen2_5_14b_random", "llama3_1_8b_random", "qwen3_8b_random")


def load(model: str) -> dict:
    return json.loads((RESULTS / f"footprint-{model}-x86_64.json").read_text())


def memory_table() -> list[str]:
    lines = [
        "| shape | layers | training recipe @ 2048 tokens, 1 row | peak GB | weights | gradients + AdamW | saved "
        "activations | + recomputed layer |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model in MODELS:
        r = load(model)
        p = r["projection"]
        for name, step in p["training"].items():
            parts = step["parts_gb"]
            lines.append(
                f"| {model} | {p['layers']} | {name} | {step['peak_gb']:.1f} | {parts['weights']:.1f} | "
                f"{parts['gradients'] + parts['optimizer']:.2f} | {parts['saved_activations']:.1f} | "
                f"{parts['recomputed_layer']:.1f} |"
            )
    return lines


def scoring_table() -> list[str]:
    """Weights as measured; hours of 25k rows with swap TTA where the model and a batch fit (derived from the measured
    weights and counted FLOPs by the rules plan and infer.py use: duelist.tools.plan.hours_by_placement)."""
    from duelist.core.hydra_setup import compose_train
    from duelist.tools.footprint import kaggle_hours

    lines = [
        "| shape | weights fp16 GB | int8 | nf4 | 25k rows with swap TTA on 2×T4 (h): fp16 | int8 | nf4 | on one H100, "
        "bf16 (h) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model in MODELS:
        p = load(model)["projection"]
        w = {k: v["weights_gb"] for k, v in p["scoring"].items()}
        flops = 2 * p["kaggle_rows"]["forward_flops"]
        hours = kaggle_hours(compose_train([f"model={model}"]), p["scoring"], p["max_length"], flops, ["t4x2", "h100"])
        cells = [_hours(hours["t4x2"][q]) for q in ("none", "int8", "nf4")] + [_hours(hours["h100"]["none"], 2)]
        lines.append(f"| {model} | {w['fp16']:.1f} | {w['int8']:.1f} | {w['nf4']:.1f} | " + " | ".join(cells) + " |")
    return lines


def _hours(h: dict, digits: int = 1) -> str:
    """Hours and where: a copy per device, split over the devices (one busy at a time), or does not fit."""
    if h["hours"] is None:
        return "does not fit"
    where = "" if h["devices_busy"] > 1 or "split" not in h["placement"] else " (split)"
    return f"{h['hours']:.{digits}f}{where}"


def check_table() -> list[str]:
    r = load("gemma2_9b_random")
    lines = [
        "| gemma2_9b_random, 4 layers | FLOPs projected from 2 | counted at 4 | saved activations projected (B/token) "
        "| measured at 4 | step's growth projected (GB) | resident growth measured (GB) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    check = r["check"]["4"]
    for name, step in check["projected"]["training"].items():
        got = check["measured"]["training"][name]
        measured_saved = sum(got["saved_activation_bytes"].values()) / got["tokens"]
        lines.append(
            f"| {name} | {step['step_flops']:.6g} | {sum(got['flops'].values()):.6g} | "
            f"{step['saved_activation_bytes_per_token']:.0f} | {measured_saved:.0f} | "
            f"{step['growth_in_step_gb']:.2f} | {got['rss_growth_gb_in_step']:.2f} |"
        )
    return lines


def tables() -> list[str]:
    return [*memory_table(), "", *scoring_table(), "", *check_table()]


if __name__ == "__main__":
    sys.stdout.write("\n".join(tables()) + "\n")
