"""Bad input: one clear line naming the file and the problem, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY, WSDM_EXAMPLE, compose_infer, compose_train, run_cli
from duelist.core.errors import DuelistError
from duelist.data.reading import load_pairs, load_test
from duelist.tasks.train import train


def good_rows(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "prompt": [f"prompt {i}" for i in range(n)],
            "response_a": [f"answer a {i}" for i in range(n)],
            "response_b": [f"answer b {i}" for i in range(n)],
            "winner": ["model_a", "model_b"] * (n // 2),
        }
    )


def assert_one_line_error(res, *needles: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


def no_outputs(run_dir: Path) -> None:
    for name in ("metrics.json", "oof.parquet", "checkpoint"):
        assert not (run_dir / name).exists(), name


def test_train_cli_missing_file(tmp_path) -> None:
    run = tmp_path / "run"
    res = run_cli("train.py", [*TINY, "data=files", f"data.train={tmp_path / 'nope.parquet'}", f"hydra.run.dir={run}"])
    assert_one_line_error(res, "nope.parquet", "file not found")
    no_outputs(run)


def test_train_cli_corrupt_parquet_shows_traceback_only_with_full_error(tmp_path) -> None:
    bad = tmp_path / "train.parquet"
    bad.write_bytes(b"PAR1 this is not really parquet")
    run = tmp_path / "run"
    res = run_cli("train.py", [*TINY, "data=files", f"data.train={bad}", f"hydra.run.dir={run}"])
    assert_one_line_error(res, "train.parquet", "cannot read as parquet")
    no_outputs(run)
    import os

    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        res = run_cli("train.py", [*TINY, "data=files", f"data.train={bad}", f"hydra.run.dir={run}"])
    finally:
        del os.environ["HYDRA_FULL_ERROR"]
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_train_cli_typo_in_config_key() -> None:
    res = run_cli("train.py", ["lora.rnak=8"])
    assert_one_line_error(res, "lora.rnak: no such setting", "lora has: enabled, r, alpha")
    assert "+lora.rnak" not in res.stderr  # Hydra's own advice would add the typo as a new, unused key
    assert_one_line_error(
        run_cli("train.py", ["-m", "lora.r=16,32", "lora.rnak=8"]), "lora.rnak"
    )  # a sweep is checked before it starts
    assert_one_line_error(run_cli("train.py", ["+lora.rnak=8"]), "lora has no setting rnak to add")
    assert_one_line_error(
        run_cli("train.py", ["trainer.precision=bf17"]),
        "trainer.precision=bf17: Invalid value 'bf17', expected one of [auto, fp32, bf16, fp16",
    )
    assert_one_line_error(run_cli("train.py", ["model=tiny_gema2"]), "model=tiny_gema2: no such option", "tiny_gemma2")
    assert_one_line_error(run_cli("infer.py", ["ensemble.combine=lgoit"]), "expected one of [prob, logit]")


def test_train_cli_qlora_without_cuda_stops_before_loading(tmp_path) -> None:
    run = tmp_path / "run"
    res = run_cli("train.py", [*TINY, "lora=qlora", f"hydra.run.dir={run}"])
    assert_one_line_error(res, "lora.qlora=true needs a CUDA GPU")
    no_outputs(run)


def test_train_cli_8bit_optimizer_without_cuda(tmp_path) -> None:
    run = tmp_path / "run"
    res = run_cli("train.py", [*TINY, "trainer.optimizer=adamw_8bit", f"hydra.run.dir={run}"])
    assert_one_line_error(res, "trainer.optimizer=adamw_8bit needs a CUDA GPU")
    no_outputs(run)


def test_train_cli_hub_id_without_network_says_how_to_point_at_a_local_copy(tmp_path) -> None:
    res = run_cli(
        "train.py",
        [
            *TINY,
            "model=gemma2_9b",
            "lora.qlora=false",
            "model.name_or_path=google/gemma-2-9b-it",
            f"hydra.run.dir={tmp_path}",
        ],
    )
    assert_one_line_error(res, "google/gemma-2-9b-it", "model.name_or_path=DIR")


def test_an_unreachable_hub_fails_at_once_without_retrying(tmp_path) -> None:
    """Not offline by setting, but the hub does not answer (a closed port): one probe, then the cache alone, and the
    clear line at once; transformers on its own retried the dead connection for about 50 s first."""
    import time

    started = time.monotonic()
    res = run_cli(
        "train.py",
        [*TINY, "model=qwen3_8b", f"hydra.run.dir={tmp_path}"],
        env={"HF_HUB_OFFLINE": "", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")},
    )
    took = time.monotonic() - started
    assert_one_line_error(res, "Qwen/Qwen3-8B", "the hub cannot be reached", "model.name_or_path=DIR")
    assert "Retrying" not in res.stderr and took < 30, (took, res.stderr[-2000:])


def test_infer_cli_empty_test_file_writes_nothing(tmp_path, tiny_run) -> None:
    empty = tmp_path / "test.parquet"
    pd.read_parquet(WSDM_EXAMPLE).iloc[:0].to_parquet(empty)
    run = tiny_run
    out = tmp_path / "submission.csv"
    res = run_cli("infer.py", [f"runs=[{run}]", f"data.test={empty}", f"output={out}"])
    assert_one_line_error(res, "test.parquet", "no rows")
    assert not out.exists() and not out.with_suffix(".parquet").exists()
    assert not list(tmp_path.glob(".submission*"))  # no temporary file left behind


def test_infer_cli_run_dir_without_checkpoint(tmp_path) -> None:
    out = tmp_path / "submission.csv"
    res = run_cli("infer.py", [f"runs=[{tmp_path}]", f"data.test={WSDM_EXAMPLE}", f"output={out}"])
    assert_one_line_error(res, str(tmp_path), "checkpoint/config.yaml")
    assert not out.exists()


def test_quantized_inference_without_cuda(tmp_path) -> None:
    from duelist.core.hardware import check_quantization

    with pytest.raises(DuelistError, match="quantization=int8 needs a CUDA GPU"):
        check_quantization("int8", torch.device("cpu"))
    from hydra.errors import ConfigCompositionException

    with pytest.raises(
        ConfigCompositionException
    ) as err:  # an unknown kind stops at compose time, before any model is loaded
        compose_infer(["quantization=int4", "data.test=t.parquet"])
    assert "none, int8, nf4" in str(err.value.__cause__)


# the remaining cases through the same functions the CLIs call (each raises the one-line DuelistError)


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda df: df.drop(columns=["response_b"]), "missing column(s) response_b"),
        (lambda df: df.assign(response_a=None), "column response_a is null or empty on every row"),
        (
            lambda df: df.assign(response_b=["", " ", None, "", "\n", ""]),
            "column response_b is null or empty on every row",
        ),
        (
            lambda df: df.assign(response_a=[["a list"]] + list(df["response_a"][1:])),
            "row 0 (id=r0): column response_a is not a string (list)",
        ),
        (lambda df: df.assign(prompt=[1.5] + list(df["prompt"][1:])), "column prompt is not a string (float)"),
        (
            lambda df: df.assign(winner=["model_c"] + list(df["winner"][1:])),
            "winner='model_c' is not one of model_a, model_b, tie",
        ),
        (lambda df: df.assign(id=["r0"] * 2 + list(df["id"][2:])), "duplicate id r0 (rows 0 and 1)"),
    ],
)
def test_bad_rows_fail_with_file_row_and_column(tmp_path, mutate, needle: str) -> None:
    path = tmp_path / "train.jsonl"  # jsonl keeps mixed types (a float among strings) as written
    mutate(good_rows()).to_json(path, orient="records", lines=True)
    with pytest.raises(DuelistError) as err:
        load_pairs(str(path))
    assert str(path) in str(err.value) and needle in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_rows_dropped_by_policy_with_count(tmp_path, caplog) -> None:
    df = good_rows().astype(object)
    df.loc[1, "prompt"] = 7  # not a text
    df.loc[3, "winner"] = "nobody"
    df.to_json(tmp_path / "train.jsonl", orient="records", lines=True)
    out = load_pairs(str(tmp_path / "train.jsonl"), on_bad_rows="drop")
    assert list(out["id"]) == ["r0", "r2", "r4", "r5"]
    assert "dropped 2 of 6 rows" in caplog.text


@pytest.mark.fast
def test_empty_and_null_texts_are_data_in_training_and_test_files(tmp_path, caplog) -> None:
    import logging

    caplog.set_level(logging.INFO)
    df = good_rows().astype(object)
    df.loc[1, "response_a"] = None  # a null answer
    df.loc[2, "response_b"] = "   \n"  # whitespace only
    df.loc[4, "prompt"] = ""
    df.to_parquet(tmp_path / "train.parquet")
    out = load_pairs(str(tmp_path / "train.parquet"), on_bad_rows="fail")
    assert list(out["id"]) == list(df["id"])  # nothing dropped, nothing failed
    assert (out.loc[1, "response_a"], out.loc[2, "response_b"], out.loc[4, "prompt"]) == ("", "", "")
    assert "empty texts kept as data (1 prompt, 1 response_a, 1 response_b)" in caplog.text
    test = load_test(str(tmp_path / "train.parquet"))  # the winner column of a test file is ignored
    assert list(test["id"]) == list(df["id"]) and test["winner"].isna().all()


def test_a_test_file_never_loses_a_row(tmp_path, tiny_run) -> None:
    run = tiny_run
    test = pd.read_parquet(WSDM_EXAMPLE).astype({"id": str})
    test = pd.concat([test, test.assign(id=test["id"] + "x", response_a=[None, "", "  "])], ignore_index=True)
    test.to_parquet(tmp_path / "test.parquet")
    out = tmp_path / "sub.csv"
    res = run_cli(
        "infer.py",
        [f"runs=[{run}]", f"data.test={tmp_path / 'test.parquet'}", f"output={out}", "data.on_bad_rows=drop"],
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert list(pd.read_csv(out, dtype={"id": str})["id"]) == list(
        test["id"].astype(str)
    )  # every id, in order, whatever on_bad_rows says
    bad = test.astype(object)
    bad.loc[4, "response_b"] = 12  # a row that cannot be read: the run stops and names it
    bad.to_json(tmp_path / "bad.jsonl", orient="records", lines=True)
    res = run_cli(
        "infer.py",
        [
            f"runs=[{run}]",
            f"data.test={tmp_path / 'bad.jsonl'}",
            f"output={tmp_path / 'bad.csv'}",
            "data.on_bad_rows=drop",
        ],
    )
    assert_one_line_error(res, "row 4", "column response_b is not a string (int)", "every test row is scored")
    assert not (tmp_path / "bad.csv").exists()


@pytest.mark.fast
@pytest.mark.parametrize(
    "text,needle",
    [
        (
            'id,prompt,response_a,response_b,winner\n1,hi,"a, b",c,model_a\n2,"never closed,x,y,model_b\n3,p,q,r,tie\n',
            "line 3: a quoted text is never closed",
        ),
        (
            "id,prompt,response_a,response_b,winner\n1,hi,a,b,model_a\n2,p,q,model_b\n",
            "line 3 has 4 fields, the header has 5",
        ),
        ("id,prompt,response_a,response_b,winner\n1,hi,a,b,c,model_a\n", "line 2 has 6 fields, the header has 5"),
        ('id,prompt,response_a,response_b,winner\n1,hi,"a "x" b",c,model_a\n', "line 2: broken quoting"),
    ],
)
def test_csv_is_read_strictly(tmp_path, text: str, needle: str) -> None:
    path = tmp_path / "train.csv"
    path.write_text(text)
    with pytest.raises(DuelistError) as err:
        load_pairs(str(path))
    assert str(path) in str(err.value) and needle in str(err.value) and "\n" not in str(err.value)
    path.write_text(
        'id,prompt,response_a,response_b,winner\n1,hi,"a, ""quoted""\nand a new line",,model_a\n2,p,q,r,model_b\n'
    )  # what is allowed
    row = load_pairs(str(path)).iloc[0]
    assert (row["response_a"], row["response_b"]) == ('a, "quoted"\nand a new line', "")


@pytest.mark.fast
def test_files_without_ids_combine_with_unique_stable_ids(tmp_path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        good_rows().drop(columns=["id"]).assign(prompt=lambda d: d["prompt"] + name).to_parquet(
            tmp_path / name / "train.parquet"
        )
    files = [str(tmp_path / "a" / "train.parquet"), str(tmp_path / "b" / "train.parquet")]
    first, again = load_pairs(files), load_pairs(files)
    assert first["id"].is_unique and len(first) == 12 and list(first["id"]) == list(again["id"])


def test_no_rows_left_after_filtering(tmp_path) -> None:
    df = good_rows().assign(winner="tie")
    df.to_parquet(tmp_path / "ties.parquet")
    with pytest.raises(DuelistError, match="no rows left after filtering"):
        load_pairs(str(tmp_path / "ties.parquet"), ties="drop")


def test_labels_required_for_training_but_not_for_test(tmp_path) -> None:
    good_rows().drop(columns=["winner"]).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DuelistError, match="no labels"):
        load_pairs(str(tmp_path / "t.parquet"))
    assert len(load_test(str(tmp_path / "t.parquet"))) == 6


def test_unsupported_extension_and_directory(tmp_path) -> None:
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DuelistError, match="unsupported file type"):
        load_pairs(str(tmp_path / "x.txt"))
    with pytest.raises(DuelistError, match="is a directory"):
        load_pairs(str(tmp_path))


def test_max_length_too_small_stops_before_training(tmp_path) -> None:
    with pytest.raises(DuelistError, match="model.max_length=24 is too small"):
        train(compose_train([*TINY, "model.max_length=24"]), tmp_path)
    no_outputs(tmp_path)


def test_lmsys_bad_one_hot_is_a_bad_label(tmp_path) -> None:
    row = {
        "id": 1,
        "prompt": json.dumps(["q"]),
        "response_a": json.dumps(["a"]),
        "response_b": json.dumps(["b"]),
        "winner_model_a": 1,
        "winner_model_b": 1,
        "winner_tie": 0,
    }
    pd.DataFrame([row]).to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(DuelistError, match="invalid one-hot"):
        load_pairs(str(tmp_path / "l.csv"))


def test_lora_rank_without_adapters_is_refused() -> None:
    import torch

    from duelist.models.network_build import check_model_config

    cfg = compose_train(["lora=none", "lora.r=8"])
    with pytest.raises(
        DuelistError,
        match=r"^lora.r=8 has no effect: adapters are off \(lora=none: full fine-tuning of every weight\)\. "
        r"Drop lora=none",
    ):
        check_model_config(cfg.model, cfg.lora, torch.device("cpu"))


def test_infer_vllm_backend_errors_are_one_line(tmp_path, tiny_run) -> None:
    run = tiny_run
    out = tmp_path / "submission.csv"
    res = run_cli("infer.py", [f"runs=[{run}]", f"data.test={WSDM_EXAMPLE}", f"output={out}", "backend=vllm"])
    assert_one_line_error(res, "backend=vllm needs full weights", "python -m duelist export")
    merged = tmp_path / "merged"
    from duelist.tools.export import export_run

    export_run(run, merged)
    res = run_cli("infer.py", [f"runs=[{merged}]", f"data.test={WSDM_EXAMPLE}", f"output={out}", "backend=vllm"])
    assert_one_line_error(res, "backend=vllm needs")  # vLLM is not installed here, and there is no GPU
    from omegaconf import OmegaConf

    ckpt_cfg = OmegaConf.load(merged / "checkpoint" / "config.yaml")
    ckpt_cfg.model.pooling = "mean"  # a mean-pooled run (MiniLM's default): vLLM would pool with the [CLS] pooler
    OmegaConf.save(ckpt_cfg, merged / "checkpoint" / "config.yaml")
    res = run_cli("infer.py", [f"runs=[{merged}]", f"data.test={WSDM_EXAMPLE}", f"output={out}", "backend=vllm"])
    assert_one_line_error(
        res, "backend=vllm pools the way the architecture does", "model.pooling=mean", "use backend=hf"
    )
    assert not out.exists()


@pytest.mark.fast
def test_a_gpu_device_on_a_cpu_machine_is_named_as_the_user_set_it(monkeypatch) -> None:
    from duelist.core.hardware import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DuelistError) as err:
        pick_device("cuda:1", "devices")
    assert (
        str(err.value).startswith("devices: cuda:1 asked for")
        and "devices=[cpu,cpu]" in str(err.value)
        and "device=cuda" not in str(err.value)
    )
    with pytest.raises(
        DuelistError, match=r"^trainer.device: cuda asked for, .* use trainer.device=auto or trainer.device=cpu"
    ):
        pick_device("cuda", "trainer.device")


@pytest.mark.fast
def test_text_columns_that_look_numeric_stay_text(tmp_path) -> None:
    """Answers "4" and "2" in every row: CSV and JSON Lines files keep them as texts (a test file is not refused)."""
    rows = [
        {"id": "q1", "prompt": "2+2?", "response_a": "4", "response_b": "5"},
        {"id": "q2", "prompt": "1+1?", "response_a": "2", "response_b": "3"},
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "numbers.csv", index=False)
    (tmp_path / "numbers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("numbers.csv", "numbers.jsonl"):
        test = load_test(str(tmp_path / name))
        assert list(test["response_a"]) == ["4", "2"] and list(test["response_b"]) == ["5", "3"], name


@pytest.mark.fast
def test_ids_are_read_as_written_and_a_missing_one_is_named(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = {"prompt": ["a", "b", "c"], "response_a": ["x", "y", "z"], "response_b": ["u", "v", "w"]}
    ids = [101, 9007199254740993, 103]  # integers; the second is beyond float precision
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), **texts}), tmp_path / "ints.parquet")
    assert list(load_test(str(tmp_path / "ints.parquet"))["id"]) == ["101", "9007199254740993", "103"]
    lines = "".join(
        json.dumps({"id": i, "prompt": p, "response_a": "x", "response_b": "y"}) + "\n" for i, p in zip(ids, "abc")
    )
    (tmp_path / "ints.jsonl").write_text(lines)
    assert list(load_test(str(tmp_path / "ints.jsonl"))["id"]) == ["101", "9007199254740993", "103"]
    # one null id: one line naming the row, for a parquet integer column (pandas would read 101.0) and JSON Lines
    pq.write_table(pa.table({"id": pa.array([101, None, 103], pa.int64()), **texts}), tmp_path / "null.parquet")
    nulls = lines.replace('"id": 9007199254740993', '"id": null')
    (tmp_path / "null.jsonl").write_text(nulls)
    pd.DataFrame({"id": ["101", "", "103"], **texts}).to_csv(tmp_path / "null.csv", index=False)
    for name in ("null.parquet", "null.jsonl", "null.csv"):
        with pytest.raises(DuelistError, match=rf"{name}: row 1 has no id \(1 row\(s\) in all\)"):
            load_test(str(tmp_path / name))


@pytest.mark.fast
def test_ids_of_chosen_rejected_files_do_not_depend_on_the_seed(tmp_path) -> None:
    """Files without ids in the prompt/chosen/rejected layout: the ids come from the texts as written, not from the
    seeded A/B placement, so training (data.split_seed) and task=translate (seed 42) name the same pair the same."""
    rng = np.random.default_rng(0)
    pd.DataFrame(
        {
            "prompt": [f"question {i}" for i in range(40)],
            "chosen": [f"good {i}" for i in range(40)],
            "rejected": [f"bad {i} " * int(rng.integers(1, 4)) for i in range(40)],
        }
    ).to_parquet(tmp_path / "prefs.parquet")
    one, other = (load_pairs(str(tmp_path / "prefs.parquet"), seed=seed) for seed in (1, 7))
    assert list(one["id"]) == list(other["id"])
    assert (one["response_a"] != other["response_a"]).any()  # the placement itself does depend on the seed
