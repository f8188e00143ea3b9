"""Response generation with tiny HF models: pairs, quotas, sharded resume after a crash, clear errors."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import compose_infer, run_cli
from duelist.core.errors import DuelistError
from duelist.tasks import generate as generation


def prompts_file(tmp_path, n: int = 30):
    langs = ["English"] * (n - 10) + ["Russian"] * 10
    df = pd.DataFrame(
        {
            "id": [f"p{i}" for i in range(n)],
            "prompt": [f"Tell me about topic {i}." for i in range(n)],
            "language": langs,
        }
    )
    df = pd.concat(
        [df, df.iloc[:3].assign(id=["d0", "d1", "d2"], prompt=df["prompt"].iloc[:3].str.upper())]
    )  # repeated prompts
    path = tmp_path / "prompts.parquet"
    df.to_parquet(path)
    return path


def gen_cfg(prompts, output, *extra):
    return compose_infer(["task=generate", "generate=tiny", f"data.test={prompts}", f"output={output}", *extra])


def test_generate_pairs_with_two_generators(tmp_path) -> None:
    out = tmp_path / "pairs.parquet"
    generation.generate(gen_cfg(prompts_file(tmp_path), out, "+generate.language_quota.Russian=4"))
    pairs = pd.read_parquet(out)
    assert pairs["id"].is_unique and not pairs["id"].str.startswith("d").any()  # repeated prompts generate once
    assert (pairs["language"] == "Russian").sum() <= 4 and (pairs["language"] == "English").sum() >= 18
    assert (pairs["model_a"] != pairs["model_b"]).all()
    assert (
        set(pairs["model_a"]) == set(pairs["model_b"]) == {"tiny_qwen2_gen", "tiny_llama_gen"}
    )  # A/B placed both ways
    assert pairs["winner"].isna().all() and pairs["p_a"].isna().all() and (pairs["source"] == "generated:tiny").all()
    assert (pairs["response_a"].str.len() > 0).all() and (pairs["response_a"] != pairs["response_b"]).any()


def test_resume_after_a_crash_skips_finished_shards(tmp_path, monkeypatch) -> None:
    prompts = prompts_file(tmp_path)
    reference = tmp_path / "reference.parquet"
    generation.generate(gen_cfg(prompts, reference))  # an uninterrupted run

    calls: list[int] = []
    crash_at = [3]  # the third shard fails
    real = generation.HFBackend.generate

    def crashing(self, texts, seeds):
        calls.append(seeds[0])
        if len(calls) == crash_at[0]:
            raise RuntimeError("simulated crash (CUDA out of memory)")
        return real(self, texts, seeds)

    monkeypatch.setattr(generation.HFBackend, "generate", crashing)
    out = tmp_path / "pairs.parquet"
    with pytest.raises(RuntimeError, match="simulated crash"):
        generation.generate(gen_cfg(prompts, out))
    assert not out.exists()  # no final file after a crash
    done = sorted(p.name for p in (tmp_path / "pairs.shards").glob("shard-*.parquet"))
    assert done == ["shard-00000.tiny_qwen2_gen.parquet", "shard-00001.tiny_qwen2_gen.parquet"]

    calls.clear()
    crash_at[0] = -1
    generation.generate(gen_cfg(prompts, out))
    n_shards = 4  # 30 distinct prompts in shards of 8
    assert len(calls) == 2 * n_shards - 2  # the two finished parts are not generated again
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(reference))  # same pairs as without the crash

    with pytest.raises(DuelistError, match="different generation setup"):
        generation.generate(gen_cfg(prompts, out, "generate.max_new_tokens=5"))


def test_generate_cli_errors_are_one_line(tmp_path) -> None:
    prompts = prompts_file(tmp_path)
    res = run_cli(
        "infer.py",
        [
            "task=generate",
            "generate=vllm",
            f"data.test={prompts}",
            f"output={tmp_path / 'p.parquet'}",
            f"hydra.run.dir={tmp_path / 'h'}",
        ],
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "vllm" in res.stderr.strip().splitlines()[-1].lower()
    assert not (tmp_path / "p.shards").exists()  # nothing written: the next call with generate=tiny is not blocked
    res = run_cli(
        "infer.py",
        [
            "task=generate",
            "generate=tiny",
            f"data.test={prompts}",
            f"output={tmp_path / 'p.parquet'}",
            f"hydra.run.dir={tmp_path / 'h'}",
        ],
    )
    assert res.returncode == 0, res.stderr[-2000:]
    (tmp_path / "no_prompt.csv").write_text("id,question\n1,hi\n")
    res = run_cli(
        "infer.py",
        [
            "task=generate",
            "generate=tiny",
            f"data.test={tmp_path / 'no_prompt.csv'}",
            f"output={tmp_path / 'q.parquet'}",
            f"hydra.run.dir={tmp_path / 'h'}",
        ],
    )
    assert res.returncode == 2 and "no 'prompt' column" in res.stderr and not (tmp_path / "q.parquet").exists()


@pytest.mark.fast
def test_a_long_prompt_keeps_its_end_where_the_generation_prompt_is() -> None:
    from duelist.models.network_build import load_tokenizer

    tok = load_tokenizer("pkg:duelist/assets/tiny_tokenizer")  # has a Gemma-style chat template
    long_prompt = "word " * 500
    full = tok(generation.chat_text(tok, long_prompt), add_special_tokens=False)["input_ids"]
    ids = generation.prompt_ids(tok, long_prompt, 64)
    assert len(full) > 64 and ids == full[-64:]
    assert tok.decode(ids).rstrip().endswith("<start_of_turn>model")  # the template's cue to answer survives the cut
