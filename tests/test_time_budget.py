"""infer.time_budget_min with a fake clock: the model's forward passes advance the clock by their padded tokens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY, compose_infer, compose_train
from duelist.core.time_budget import Deadline
from duelist.data.reading import load_pairs
from duelist.models import network_scoring
from duelist.models.kinds import score_run
from duelist.models.network_build import Built, build_model
from duelist.tasks import submit as submission

COST = 1e-3  # fake seconds per padded token


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Timed(torch.nn.Module):
    """The real tiny model; every forward pass costs COST fake seconds per padded token."""

    def __init__(self, model: torch.nn.Module, clock: FakeClock):
        super().__init__()
        self.model, self.clock, self.tokens = model, clock, 0

    def forward(self, input_ids, attention_mask):
        self.clock.t += COST * input_ids.numel()
        self.tokens += input_ids.numel()
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


@pytest.mark.fast
def test_deadline_learns_throughput_and_never_starts_what_does_not_fit() -> None:
    clock = FakeClock()
    d = Deadline(10.0, clock)
    assert d.fits(10**9)  # nothing measured yet: the first batch runs
    clock.t += 2.0
    d.record(1000, 2.0)  # 2 ms per token
    assert d.fits(4000) and not d.fits(4001)  # 8 s left
    child = d.share(2)  # half of the 8 s, starting from the measured rate
    assert child.remaining() == pytest.approx(4.0) and child.fits(2000) and not child.fits(2001)
    child.record(500, 1.0)
    assert d.tokens == 1500  # what a child measures counts for its parent


@pytest.mark.fast
def test_a_projected_speed_is_the_first_estimate_until_a_batch_is_measured() -> None:
    clock = FakeClock()
    d = Deadline(10.0, clock, prior=0.01)  # projected: 10 ms per token
    assert d.fits(1000) and not d.fits(1001)  # the first batch is judged by the projection
    d.record(1000, 1.0)  # measured: 1 ms per token, 10x faster than projected
    assert d.fits(10_000) and not d.fits(10_001)  # the measurement replaced the projection
    part = d.portion(0.25, fresh=True, prior=0.002)  # a quarter of the time left, another model: its own projection
    assert part.remaining() == pytest.approx(2.5) and part.fits(1250) and not part.fits(1251)
    assert Deadline(1.0, clock).share(4).remaining() == pytest.approx(0.25)  # share(k) is portion(1/k)


@pytest.mark.fast
def test_the_budget_is_split_by_projected_cost() -> None:
    from duelist.tasks.submit import fraction, rate

    projected = [(300.0, 1000), (100.0, 1000), None]  # run 2: a feature model, not projected
    needed = [True, True, False]
    assert fraction(projected, needed, 0) == pytest.approx(0.75) and fraction(projected, needed, 1) == 1.0
    assert fraction([None, (1.0, 1)], [True, True], 0) == 0.5  # a run without a projection: equal parts
    assert rate(projected[0]) == pytest.approx(0.3) and rate(None) is None


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    clock = FakeClock()
    cfg = compose_train(TINY)
    built = build_model(cfg.model, cfg.lora, torch.device("cpu"), seed=0)
    timed = Timed(built.model, clock)
    monkeypatch.setattr(
        network_scoring, "load_checkpoint", lambda run_dir, device, **kw: (Built(timed, built.tokenizer), cfg)
    )
    monkeypatch.setattr(submission, "clock", clock)
    rows = (
        load_pairs("pkg:duelist/assets/sample/pandalm_test.parquet", on_bad_rows="drop")
        .iloc[:120]
        .reset_index(drop=True)
    )
    rows[["id", "prompt", "response_a", "response_b"]].to_parquet(tmp_path / "test.parquet")
    (tmp_path / "run" / "checkpoint").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint" / "config.yaml").write_text("model: {}\n")
    return clock, timed, rows, tmp_path


def infer_cfg(tmp_path, *extra):
    return compose_infer(
        [
            f"runs=[{tmp_path / 'run'}]",
            f"data.test={tmp_path / 'test.parquet'}",
            f"output={tmp_path / 'sub.csv'}",
            "batch_size=8",
            "device=cpu",
            *extra,
        ]
    )


def test_leftover_time_goes_to_tta_for_the_least_confident_rows(setup) -> None:
    clock, timed, rows, tmp_path = setup

    run = Path(tmp_path / "run")
    cfg = infer_cfg(tmp_path, "tta=swap")
    plain = score_run(run, rows, cfg, torch.device("cpu"), tta="none")
    first_pass_tokens = timed.tokens
    full_tta = score_run(run, rows, cfg, torch.device("cpu"), tta="swap")

    budget = 1.5 * first_pass_tokens * COST  # the first pass and about half of the swapped pass
    start = clock.t
    p = score_run(run, rows, cfg, torch.device("cpu"), tta="swap", deadline=Deadline(budget, clock))
    assert clock.t - start <= budget  # never over the budget
    assert not np.isnan(p).any()  # every row scored once
    tta_rows = np.flatnonzero(~np.isclose(p, plain, atol=1e-9))
    np.testing.assert_allclose(p[tta_rows], full_tta[tta_rows], atol=1e-6)  # those rows got the full swap-TTA value
    assert 0.2 * len(rows) < len(tta_rows) < 0.8 * len(rows)
    order = np.argsort(np.abs(plain - 0.5), kind="stable")  # least confident first
    chunk = 64
    done_chunks = len(tta_rows) // chunk
    assert set(order[: done_chunks * chunk]) <= set(tta_rows)  # whole chunks of the least confident rows first
    assert set(tta_rows) <= set(order[: (done_chunks + 1) * chunk])  # nothing beyond the chunk being worked on


def test_a_budget_too_small_still_writes_a_complete_submission(setup) -> None:
    clock, timed, rows, tmp_path = setup

    score_run(Path(tmp_path / "run"), rows, infer_cfg(tmp_path), torch.device("cpu"), tta="none")
    first_pass_s = timed.tokens * COST
    minutes = 0.4 * first_pass_s / 60  # less than half of one pass
    start = clock.t
    submission.submit(infer_cfg(tmp_path, "tta=swap", f"time_budget_min={minutes}"))
    assert clock.t - start <= 60 * minutes
    sub = pd.read_csv(tmp_path / "sub.csv", dtype={"id": str})
    assert list(sub["id"]) == list(rows["id"]) and sub["winner"].isin(["model_a", "model_b"]).all()
    report = json.loads((tmp_path / "sub.ensemble.json").read_text())["time_budget"]
    unscored = report["rows_without_a_model_score"]
    assert 0 < report["rows_scored_per_run"][0] < len(rows) and unscored == len(rows) - report["rows_scored_per_run"][0]
    probs = pd.read_parquet(tmp_path / "sub.parquet")
    fallback = probs["p_a_run0"].isna().to_numpy()
    assert fallback.sum() == unscored
    longer_a = (rows["response_a"].str.len() > rows["response_b"].str.len()).to_numpy()
    longer_b = (rows["response_a"].str.len() < rows["response_b"].str.len()).to_numpy()
    expected = np.where(longer_a, 0.55, np.where(longer_b, 0.45, 0.5))  # the longer-answer rule, computed here
    np.testing.assert_allclose(probs["p_a"].to_numpy()[fallback], expected[fallback])


def test_cascade_second_member_scores_the_least_certain_rows_first(setup, monkeypatch) -> None:
    clock, timed, rows, tmp_path = setup
    cfg = compose_train(TINY)
    other = Timed(build_model(cfg.model, cfg.lora, torch.device("cpu"), seed=1).model, clock)  # member 2: other weights
    models = {"run": timed, "run2": other}
    tokenizer = build_model(cfg.model, cfg.lora, torch.device("cpu"), seed=0).tokenizer
    monkeypatch.setattr(
        network_scoring,
        "load_checkpoint",
        lambda run_dir, device, **kw: (Built(models[Path(run_dir).name], tokenizer), cfg),
    )
    (tmp_path / "run2" / "checkpoint").mkdir(parents=True)
    (tmp_path / "run2" / "checkpoint" / "config.yaml").write_text("model: {}\n")
    device = torch.device("cpu")
    plain = [score_run(Path(tmp_path / n), rows, infer_cfg(tmp_path), device, tta="none") for n in ("run", "run2")]
    pass_s = timed.tokens * COST  # one pass of one member (both see the same padded tokens)

    minutes = (
        1.5 * pass_s / 60 / 0.98
    )  # member 1's pass and about half of member 2's (2% of a budget is kept for writing)
    start = clock.t
    runs = f"runs=[{tmp_path / 'run'},{tmp_path / 'run2'}]"
    submission.submit(infer_cfg(tmp_path, runs, "ensemble.cascade=true", f"time_budget_min={minutes}", "tta=swap"))
    assert clock.t - start <= 60 * minutes
    probs = pd.read_parquet(tmp_path / "sub.parquet")
    np.testing.assert_allclose(probs["p_a_run0"], plain[0], atol=1e-6)  # member 1: every row, no TTA
    second = probs["p_a_run1"].to_numpy()  # NaN: rows member 2 did not reach
    got = np.flatnonzero(~np.isnan(second))
    assert 0.2 * len(rows) < len(got) < 0.8 * len(rows)
    order = np.argsort(np.abs(plain[0] - 0.5), kind="stable")  # member 1's least certain rows first, in chunks of 64
    assert set(got) <= set(order[: (len(got) // 64 + 1) * 64]) and set(order[: len(got) // 64 * 64]) <= set(got)
    np.testing.assert_allclose(second[got], plain[1][got], atol=1e-6)
    unreached = np.setdiff1d(np.arange(len(rows)), got)
    np.testing.assert_allclose(
        probs["p_a"].to_numpy()[unreached], plain[0][unreached], atol=1e-9
    )  # member 1's answer kept
    sub = pd.read_csv(tmp_path / "sub.csv", dtype={"id": str})
    assert list(sub["id"]) == list(rows["id"])


def test_cascade_with_a_slower_second_member_stays_within_the_budget(setup, monkeypatch) -> None:
    clock, timed, rows, tmp_path = setup
    cfg = compose_train(TINY)

    class Slow(Timed):  # member 2 costs five times as much per token
        def forward(self, input_ids, attention_mask):
            self.clock.t += 4 * COST * input_ids.numel()
            return super().forward(input_ids, attention_mask)

    other = Slow(build_model(cfg.model, cfg.lora, torch.device("cpu"), seed=1).model, clock)
    tokenizer = build_model(cfg.model, cfg.lora, torch.device("cpu"), seed=0).tokenizer
    models = {"run": timed, "run2": other}
    monkeypatch.setattr(
        network_scoring,
        "load_checkpoint",
        lambda run_dir, device, **kw: (Built(models[Path(run_dir).name], tokenizer), cfg),
    )
    (tmp_path / "run2" / "checkpoint").mkdir(parents=True)
    (tmp_path / "run2" / "checkpoint" / "config.yaml").write_text("model: {}\n")
    score_run(Path(tmp_path / "run"), rows, infer_cfg(tmp_path), torch.device("cpu"), tta="none")
    pass_s = timed.tokens * COST  # one pass of member 1; member 2 needs five times that
    minutes = 2.0 * pass_s / 60 / 0.98  # member 1's pass and a fifth of member 2's
    start = clock.t
    submission.submit(
        infer_cfg(
            tmp_path,
            f"runs=[{tmp_path / 'run'},{tmp_path / 'run2'}]",
            "ensemble.cascade=true",
            f"time_budget_min={minutes}",
        )
    )
    assert clock.t - start <= 60 * minutes  # member 2's speed is measured anew, not taken from member 1's
    scored = (~pd.read_parquet(tmp_path / "sub.parquet")["p_a_run1"].isna()).sum()
    assert 0 < scored < 0.5 * len(rows)
