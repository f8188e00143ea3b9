"""Data-parallel scoring (one process per device): the split and the result."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_cli
from duelist.models.network_build import load_checkpoint
from duelist.models.network_scoring import split_by_length


@pytest.mark.fast
@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 5000), min_size=1, max_size=300), st.integers(1, 4))
def test_split_by_length_deals_every_row_once_and_balances_tokens(lengths: list[int], parts: int) -> None:
    shares = split_by_length(lengths, parts)
    together = np.concatenate(shares)
    assert sorted(together.tolist()) == list(range(len(lengths)))  # every row exactly once
    totals = [sum(lengths[i] for i in s) for s in shares]
    assert max(totals) - min(totals) <= max(lengths)  # round-robin over sorted lengths: within one row
    assert max(len(s) for s in shares) - min(len(s) for s in shares) <= 1


def test_two_cpu_workers_and_device_map_give_the_same_submission(tmp_path, monkeypatch, caplog, tiny_run) -> None:
    import logging

    from conftest import compose_infer
    from duelist.tasks.infer import infer

    run = tiny_run  # a finished run of the TINY settings
    rows = pd.read_parquet("src/duelist/assets/sample/pandalm_test.parquet").iloc[:60]
    rows = rows[rows["response_a"].str.strip().ne("") & rows["response_b"].str.strip().ne("")]
    rows[["id", "prompt", "response_a", "response_b"]].to_parquet(tmp_path / "test.parquet")
    # the whole file scored in one process on the CPU, then with device_map (both in this process); then infer.py with
    # two worker processes
    caplog.set_level(logging.INFO)
    common = [f"runs=[{run}]", f"data.test={tmp_path / 'test.parquet'}", "tta=swap"]
    for name, extra in (("one", []), ("split", ["device_map=auto"])):
        caplog.clear()
        infer(compose_infer([*common, f"output={tmp_path / name}.csv", *extra]))
        assert "scoring" in caplog.text and "data parallel over" not in caplog.text
    res = run_cli("infer.py", [*common, f"output={tmp_path / 'two'}.csv", "devices=[cpu,cpu]"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "data parallel over cpu, cpu" in res.stdout + res.stderr
    one, two, split = (pd.read_parquet(tmp_path / f"{n}.parquet") for n in ("one", "two", "split"))
    np.testing.assert_allclose(
        split["p_a"], one["p_a"], atol=1e-6
    )  # device_map loading (all on the CPU here) changes nothing
    # with one device transformers places the whole model there (no hooks, nothing to see in the model), so check that
    # the option reaches the loader: an ignored device_map would not be passed on
    from transformers import AutoModelForSequenceClassification

    real = AutoModelForSequenceClassification.from_pretrained.__func__
    passed = []

    def spy(cls, *args, **kwargs):
        passed.append(kwargs.get("device_map"))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", classmethod(spy))
    load_checkpoint(run, torch.device("cpu"), device_map="balanced")
    load_checkpoint(run, torch.device("cpu"))
    assert passed == ["balanced", None]
    assert list(two["id"]) == list(rows["id"])  # input order restored
    np.testing.assert_allclose(two["p_a"], one["p_a"], atol=1e-6)
    # infer.py hardware=...: each worker gets the projection as its first estimate of speed. A projection of 1 s per
    # token leaves every first batch unstarted in a 60 s budget; without one, the first batch always runs
    from conftest import compose_infer
    from duelist.core.time_budget import Deadline
    from duelist.models.network_scoring import ParallelScorer

    cfg = compose_infer([f"runs=[{run}]", "data.test=t.parquet", "devices=[cpu,cpu]", "batch_size=8"])
    scorer = ParallelScorer(run, cfg, ["cpu", "cpu"])
    test = rows[["id", "prompt", "response_a", "response_b"]].reset_index(drop=True)
    assert np.isnan(scorer.score(test, "none", Deadline(60.0, prior=1.0))).all()
    assert not np.isnan(scorer.score(test, "none", Deadline(60.0))).any()
