"""The benchmark: token-budget batching beats naive padding on the long-tail mix; FLOPs and JSON checked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoConfig

from duelist import bench


def test_forward_flops_by_hand() -> None:
    config = AutoConfig.for_model("llama", hidden_size=64, num_attention_heads=4, num_hidden_layers=2, head_dim=16)
    # two rows of 10 and 20 tokens, N = 1000: 2*N per token + 4 * layers * heads * head_dim * L per token
    by_hand = (2 * 1000 + 4 * 2 * 4 * 16 * 10) * 10 + (2 * 1000 + 4 * 2 * 4 * 16 * 20) * 20
    assert bench.forward_flops(1000, config, [10, 20]) == by_hand


def test_synthetic_lengths_follow_the_documented_mix() -> None:
    lengths = bench.synthetic_lengths(20000, max_length=8192, median=1000, sigma=0.8, seed=0)
    assert abs(np.median(lengths) - 1000) < 30
    assert 0.03 < (lengths > 4096).mean() < 0.06  # the tail past 4k the docstring states
    assert lengths.min() >= 64 and lengths.max() <= 8192


def test_token_budget_beats_naive_padding_on_cpu(tmp_path) -> None:
    out = tmp_path / "bench.json"
    report = bench.main(["--model", "tiny_gemma2", "--rows", "128", "--max-length", "1024", "--median-tokens", "250", "--train", "--train-steps", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["device"].startswith("CPU") and saved["versions"]["torch"] == torch.__version__ and len(saved["commit"]) == 40
    inf = saved["inference"]
    assert inf["speedup_rows_per_s"] > 1.5  # sorted, budgeted batches vs padding every row to max_length
    for key in ("naive", "token_budget"):  # the reported rates follow from the measured seconds
        assert inf[key]["rows_per_s"] == pytest.approx(128 / inf[key]["seconds"])
        assert inf[key]["mfu_vs_measured"] == pytest.approx(inf["forward_flops"] / inf[key]["seconds"] / saved["peak_flops_measured_matmul"])
    assert saved["training"]["tokens_per_s"] > 0 and report["model"] == "tiny_gemma2"
