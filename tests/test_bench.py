"""The benchmark: token-budget batching beats naive padding on the long-tail mix; FLOPs and JSON checked."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from transformers import AutoConfig

from conftest import ROOT
from duelist.tools import bench


@pytest.mark.fast
def test_forward_flops_by_hand() -> None:
    config = AutoConfig.for_model("llama", hidden_size=64, num_attention_heads=4, num_hidden_layers=2, head_dim=16)
    # two rows of 10 and 20 tokens, N = 1000: 2*N per token + 4 * layers * heads * head_dim * L per token
    by_hand = (2 * 1000 + 4 * 2 * 4 * 16 * 10) * 10 + (2 * 1000 + 4 * 2 * 4 * 16 * 20) * 20
    assert bench.forward_flops(1000, config, [10, 20]) == by_hand


@pytest.mark.fast
def test_synthetic_lengths_follow_the_documented_mix() -> None:
    lengths = bench.synthetic_lengths(20000, max_length=8192, median=1000, sigma=0.8, seed=0)
    assert abs(np.median(lengths) - 1000) < 30
    assert 0.03 < (lengths > 4096).mean() < 0.06  # the tail past 4k the docstring states
    assert lengths.min() >= 64 and lengths.max() <= 8192


def test_token_budget_computes_far_fewer_padded_tokens_than_naive_padding(tmp_path, monkeypatch) -> None:
    """What the speed-up means: the model sees fewer padded tokens. Counted at the model's input, not timed."""
    seen: list[int] = []
    real_build = bench.build

    def counting_build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.model.register_forward_pre_hook(
            lambda module, a, kw: seen.append(kw["input_ids"].numel()), with_kwargs=True
        )
        return model

    monkeypatch.setattr(bench, "build", counting_build)
    rows, max_length, batch = 128, 1024, 8
    out = tmp_path / "bench.json"
    report = bench.main(
        [
            "model=tiny_gemma2",
            f"rows={rows}",
            f"max_length={max_length}",
            "median_tokens=250",
            f"batch_size={batch}",
            "max_batch_tokens=8192",
            f"out={out}",
        ]
    )
    saved = json.loads(out.read_text())
    assert (
        saved["device"].startswith("CPU")
        and saved["versions"]["torch"] == torch.__version__
        and len(saved["commit"]) == 40
    )
    rest = seen[1:]  # after the warm-up batch
    naive_batches = rows // batch
    naive, budget = sum(rest[:naive_batches]), sum(rest[naive_batches:])
    assert naive == rows * max_length  # every row padded to max_length
    real = int(bench.synthetic_lengths(rows, max_length, 250, 0.8, 0).sum())
    assert real <= budget <= 1.25 * real  # sorted, budgeted batches pad little
    assert budget < 0.5 * naive
    assert max(rest[naive_batches:]) <= 8192  # no batch over the token budget
    inf = saved["inference"]
    assert inf["real_tokens"] == real
    for key in ("naive", "token_budget"):
        assert 0 < inf[key]["mfu_vs_measured"] < 1  # a FLOP count off by orders of magnitude would show here
    assert report["model"] == "tiny_gemma2"


def test_training_benchmark_reports_tokens(tmp_path, capfd) -> None:
    report = bench.main(
        [
            "model=tiny_gemma2",
            "rows=16",
            "max_length=256",
            "median_tokens=100",
            "train=true",
            "train_steps=1",
            "train_batch=2",
            f"out={tmp_path / 'b.json'}",
        ]
    )
    assert report["training"]["tokens_per_s"] > 0 and report["training"]["lora_r"] == 64
    said = capfd.readouterr()
    assert "incompatible with gradient checkpointing" not in said.out + said.err  # a classifier keeps no KV cache


def test_bench_runs_the_default_model_file_and_refuses_a_length_it_cannot_cover(tmp_path) -> None:
    # conf/model/minilm.yaml once set other groups and the bench could not load it
    report = bench.main(
        [
            "model=minilm",
            "rows=16",
            "max_length=128",
            "median_tokens=60",
            f"out={tmp_path / 'm.json'}",
        ]
    )
    assert report["model"] == "minilm" and report["inference"]["rows"] == 16
    with pytest.raises(bench.DuelistError, match="max_length=1024: model minilm covers at most 512 positions"):
        bench.run(bench.parse(["model=minilm", "max_length=1024", f"out={tmp_path / 'n.json'}"]))


@pytest.mark.fast
def test_the_vllm_page_carries_the_committed_results() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("vllm_vs_hf", ROOT / "bench" / "vllm_vs_hf.py")
    bench_module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench_module  # its dataclass looks its module up
    spec.loader.exec_module(bench_module)
    report = json.loads((ROOT / "bench" / "results" / "vllm-vs-hf-x86_64.json").read_text())
    page = (ROOT / "docs" / "vllm.md").read_text()
    shown = page.split("<!-- vllm-table -->\n", 1)[1].split("<!-- /vllm-table -->", 1)[0]
    assert shown.strip().splitlines() == bench_module.table(report)


def test_forward_calls_bench_times_every_shape_and_writes_its_json(tmp_path, monkeypatch) -> None:
    """bench/forward_calls.py on a tiny model: one entry per rows x width within max_length, tokens counted by
    hand, rates positive and finite, the JSON's provenance present."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import forward_calls

    out = tmp_path / "calls.json"
    forward_calls.main(["models=[tiny_qwen2]", "rows=[1,3]", "widths=[32,48,4096]", "repeats=1", f"out={out}"])
    report = json.loads(out.read_text())
    shapes = report["models"]["tiny_qwen2"]["shapes"]
    assert [(s["rows"], s["width"]) for s in shapes] == [(1, 32), (1, 48), (3, 32), (3, 48)]  # 4096 > max_length
    assert [s["tokens"] for s in shapes] == [32, 48, 96, 144]
    assert all(np.isfinite(s["tokens_per_s"]) and s["tokens_per_s"] > 0 for s in shapes)
    assert report["device"] and report["commit"] and report["versions"]["torch"]
