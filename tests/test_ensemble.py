"""Run registry and ensembling: ordering, filters, weights on synthetic OOF, end to end with two model families."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import TINY, WSDM_EXAMPLE, compose_infer, compose_train, run_cli
from duelist.core.errors import DuelistError
from duelist.predict import ensemble
from duelist.runs.registry import best_run, find_runs
from duelist.tasks.train import train


def fake_run(
    root,
    name: str,
    model: str,
    acc: float,
    loss: float,
    study: str | None = None,
    finished: bool = True,
    extra: tuple = (),
    fold: int = 0,
):
    """A finished run dir as train.py leaves it, without weights: config, metrics and the ids of its validation rows
    (``fold``: which of five sets of 20 rows)."""
    run = root / name
    run.mkdir(parents=True)
    cfg = compose_train(
        [f"model={model}", "logger=none", f"logger.group={study}" if study else "logger.group=null", *extra]
    )
    OmegaConf.save(cfg, run / "config.yaml")
    (run / "checkpoint").mkdir()
    OmegaConf.save(cfg, run / "checkpoint" / "config.yaml")  # the weights themselves are not needed by the registry
    if finished:
        (run / "metrics.json").write_text(json.dumps({"val/accuracy": acc, "val/log_loss": loss, "best_step": 1}))
        ids = [f"f{fold}-{i}" for i in range(20)]
        pd.DataFrame({"id": ids, "p_a": 0.5, "winner": "model_a", "language": "en", "target": 1.0}).to_parquet(
            run / "oof.parquet"
        )
    return run


@pytest.mark.fast
def test_registry_sorts_and_filters(tmp_path) -> None:
    fake_run(tmp_path, "a", "tiny_gemma2", 0.61, 0.66, study="s1")
    fake_run(tmp_path, "b", "tiny_gemma2", 0.65, 0.64, study="s2")
    fake_run(tmp_path, "deep/c", "tiny_llama", 0.70, 0.69)
    fake_run(tmp_path, "d", "tiny_llama", 0.99, 0.10, finished=False)  # no metrics.json: not finished
    runs = find_runs([str(tmp_path)])
    assert [r.split("/")[-1] for r in runs["run_dir"]] == ["c", "b", "a"]
    by_loss = find_runs([str(tmp_path)], sort="val/log_loss")
    assert list(by_loss["val/log_loss"]) == [0.64, 0.66, 0.69]
    assert list(find_runs([str(tmp_path)], model="tiny_gemma2")["val/accuracy"]) == [0.65, 0.61]
    assert list(find_runs([str(tmp_path)], study="s1")["val/accuracy"]) == [0.61]
    assert best_run("tiny_llama", [str(tmp_path)]).endswith("deep/c")
    with pytest.raises(DuelistError, match="no finished run of model minilm"):
        best_run("minilm", [str(tmp_path)])
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "duelist",
            "runs",
            f"roots=[{tmp_path}]",
            "sort=val/log_loss",
            "model=tiny_gemma2",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.index(str(tmp_path / "b")) < out.index(str(tmp_path / "a")) and "deep" not in out


@pytest.mark.fast
def test_an_exported_copy_stands_for_its_run_and_never_ties_with_it(tmp_path) -> None:
    source = fake_run(tmp_path, "runs/a", "tiny_gemma2", 0.65, 0.64)
    copy = fake_run(tmp_path, "runs/a-merged", "tiny_gemma2", 0.649, 0.641)  # re-scored after the merge: a hair apart
    (copy / "exported_from.json").write_text(json.dumps({"run": str(source)}))
    fake_run(tmp_path, "outputs/x", "tiny_gemma2", 0.60, 0.70)
    listed = find_runs([str(tmp_path)])
    assert len(listed) == 3 and listed.set_index("run_dir").loc[str(copy), "exported_from"] == str(
        source
    )  # the list shows both
    assert best_run("tiny_gemma2", [str(tmp_path)]) == str(copy)  # selection: the copy stands for its source


def member(rng, truth: np.ndarray, strength: float, sd: float) -> np.ndarray:
    """A synthetic member's p_a: ``strength`` toward the truth plus Gaussian noise, clipped into (0, 1)."""
    return np.clip(0.5 + (truth - 0.5) * strength + rng.normal(0, sd, len(truth)), 0.01, 0.99)


def write_oof(run, ids, p_a, winner, language, prompts=None) -> None:
    """An ``oof.parquet`` as train.py writes it (``prompts``: the rows' prompts, kept as their key; None: a run written
    before oof.parquet kept it)."""
    run.mkdir(parents=True, exist_ok=True)
    target = np.where(np.asarray(winner) == "model_a", 1.0, 0.0)
    oof = pd.DataFrame({"id": ids, "p_a": p_a, "winner": winner, "language": language, "fold": 0, "target": target})
    if prompts is not None:
        oof["prompt_key"] = [hashlib.sha256(" ".join(p.lower().split()).encode()).hexdigest() for p in prompts]
    oof.to_parquet(run / "oof.parquet")


@pytest.mark.fast
def test_weights_recover_the_better_member_and_accuracy_checks_out(tmp_path) -> None:
    rng = np.random.default_rng(0)
    n = 2000
    winner = rng.choice(["model_a", "model_b"], n)
    truth = (winner == "model_a").astype(float)
    good = member(rng, truth, 0.5, 0.2)  # informative
    noise = rng.uniform(0.05, 0.95, n)  # useless
    ids = [f"x{i}" for i in range(n)]
    write_oof(tmp_path / "noise", ids, noise, winner, "en")
    write_oof(tmp_path / "good", ids[::-1], good[::-1], winner[::-1], "en")  # another row order: joined on id
    report = ensemble.fit([tmp_path / "noise", tmp_path / "good"], ensemble.Tuning("prob", 0.05, False, 200))
    w = report["weights"]["*"]
    assert w[1] >= 0.8 and abs(sum(w) - 1) < 1e-9
    # the ensemble's OOF accuracy, recomputed here from the weights
    p = w[0] * noise + w[1] * good
    assert report["oof/accuracy"]["ensemble"] == pytest.approx(
        float(np.mean(np.where(p >= 0.5, "model_a", "model_b") == winner))
    )
    assert report["oof/accuracy"]["member1"] == pytest.approx(
        float(np.mean(np.where(good >= 0.5, "model_a", "model_b") == winner))
    )


@pytest.mark.fast
def test_per_language_weights(tmp_path) -> None:
    rng = np.random.default_rng(1)
    n = 1200
    winner = rng.choice(["model_a", "model_b"], n)
    truth = (winner == "model_a").astype(float)
    lang = np.where(np.arange(n) < 600, "en", "ru")
    sharp = member(rng, truth, 0.6, 0.15)
    flat = rng.uniform(0.05, 0.95, n)
    m0 = np.where(lang == "en", sharp, flat)  # member 0 knows English
    m1 = np.where(lang == "ru", sharp, flat)  # member 1 knows Russian
    ids = [f"y{i}" for i in range(n)]
    write_oof(tmp_path / "m0", ids, m0, winner, lang)
    write_oof(tmp_path / "m1", ids, m1, winner, lang)
    report = ensemble.fit([tmp_path / "m0", tmp_path / "m1"], ensemble.Tuning("logit", 0.05, True, 200))
    assert report["weights"]["en"][0] >= 0.8 and report["weights"]["ru"][1] >= 0.8
    assert (
        report["oof/accuracy"]["ensemble"]
        > max(report["oof/accuracy"]["member0"], report["oof/accuracy"]["member1"]) + 0.1
    )


def test_two_model_ensemble_end_to_end(tmp_path, tiny_run) -> None:
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(tiny_run, root / "tiny_gemma2")  # a finished run of the TINY settings (model=tiny_gemma2)
    train(compose_train([*TINY, "model=tiny_llama"]), root / "tiny_llama")
    out = tmp_path / "submission.csv"
    res = run_cli(
        "infer.py", ["ensemble=two_model", f"ensemble.roots=[{root}]", f"data.test={WSDM_EXAMPLE}", f"output={out}"]
    )  # members: auto
    assert res.returncode == 0, res.stderr[-3000:]
    number = r" +[01]\.[0-9]{4}"
    for row in ("tiny_gemma2", "tiny_llama", "longer-answer rule", r"ensemble", r"ensemble, cross-fitted"):
        assert re.search(rf"^ +(\S*/)?{row}{number}", res.stdout, re.M), (row, res.stdout)  # members named by run
    assert re.search(rf"ensemble, cross-fitted{number}{number} +\(each part scored with weights tuned", res.stdout)
    assert "cross-fitting: 5 parts (grouped by prompt)" in res.stdout
    assert re.search(rf"cascade 25%{number}{number} +\(cross-fitted; \S*tiny_\w+ on the 25% rows", res.stdout)
    report = json.loads(out.with_suffix(".ensemble.json").read_text())
    assert sorted(report["runs"]) == [str(root / "tiny_gemma2"), str(root / "tiny_llama")]
    assert set(report["oof/cascade_cross_fitted"]) == {"25%", "50%", "100%"}
    w = report["weights"]["*"]
    probs = pd.read_parquet(out.with_suffix(".parquet"))
    expected = sum(
        w[i] * probs[f"p_a_run{i}"] for i in range(2) if w[i] > 0
    )  # a weight-0 member is not scored (NaN column)
    np.testing.assert_allclose(probs["p_a"], expected, atol=1e-12)
    assert all(probs[f"p_a_run{i}"].isna().all() == (w[i] == 0) for i in range(2))
    sub = pd.read_csv(out, dtype={"id": str})
    assert list(sub["winner"]) == list(np.where(probs["p_a"] >= 0.5, "model_a", "model_b"))

    # per-language weights, applied by each row's language as detected (the WSDM example file has no language column)
    out = tmp_path / "per_language.csv"
    res = run_cli(
        "infer.py",
        [
            "ensemble=two_model",
            "ensemble.per_language=true",
            "ensemble.min_language_rows=5",
            f"ensemble.roots=[{root}]",
            f"data.test={WSDM_EXAMPLE}",
            f"output={out}",
        ],
    )
    assert res.returncode == 0, res.stderr[-3000:]
    weights = json.loads(out.with_suffix(".ensemble.json").read_text())["weights"]
    assert (
        "English" in weights and "Spanish" not in weights and "Portuguese" not in weights
    )  # OOF rows: English and Chinese
    probs = pd.read_parquet(out.with_suffix(".parquet"))
    assert list(probs["language"]) == ["Spanish", "English", "Portuguese"]
    for _, row in probs.iterrows():
        w = weights.get(row["language"], weights[ensemble.GLOBAL])
        assert row["p_a"] == pytest.approx(sum(w[i] * row[f"p_a_run{i}"] for i in range(2) if w[i] > 0), abs=1e-12)

    res = run_cli(
        "infer.py",
        [
            "ensemble=two_model",
            "ensemble.members=[tiny_gemma2,minilm]",
            f"ensemble.roots=[{root}]",
            f"data.test={WSDM_EXAMPLE}",
            f"output={tmp_path / 'other.csv'}",
        ],
    )
    assert (
        res.returncode == 2
        and "no finished run of model minilm" in res.stderr
        and not (tmp_path / "other.csv").exists()
    )


def grid_best(p: np.ndarray, target: np.ndarray) -> float:
    """Weight of member 0 with the lowest log loss on a 0.05 grid (two members, prob mean): brute force, here."""
    best = min(
        np.round(np.arange(0, 1.0001, 0.05), 2),
        key=lambda w: (
            round(
                float(
                    np.mean(
                        -(
                            target * np.log(np.clip(w * p[:, 0] + (1 - w) * p[:, 1], 1e-7, 1 - 1e-7))
                            + (1 - target) * np.log(np.clip(1 - w * p[:, 0] - (1 - w) * p[:, 1], 1e-7, 1 - 1e-7))
                        )
                    )
                ),
                10,
            ),
            0,
        ),
    )
    return float(best)


@pytest.mark.fast
@pytest.mark.parametrize("grouped", [True, False], ids=["prompt-grouped parts", "runs without prompt keys"])
def test_cross_fitted_score_and_cascade_recomputed_independently(tmp_path, grouped) -> None:
    """Weights and the cascade are both cross-fitted: every row is combined with weights tuned on the other parts,
    which are grouped by prompt (10 rows per prompt here), or random for runs written before oof kept the prompt."""
    rng = np.random.default_rng(3)
    n = 1000
    winner = rng.choice(["model_a", "model_b"], n)
    truth = (winner == "model_a").astype(float)
    m0, m1 = member(rng, truth, 0.3, 0.25), member(rng, truth, 0.3, 0.25)
    ids = [f"z{i}" for i in range(n)]
    prompts = [f"Prompt  number {i // 10}" for i in range(n)] if grouped else None
    write_oof(tmp_path / "m0", ids, m0, winner, "en", prompts)
    write_oof(tmp_path / "m1", ids, m1, winner, "en", prompts)
    report = ensemble.fit([tmp_path / "m0", tmp_path / "m1"], ensemble.Tuning("prob", 0.05, False, 200))
    p = np.column_stack([m0, m1])

    if grouped:  # the part of a prompt: its normalised text's sha256, first 8 hex digits, modulo 5
        keys = [hashlib.sha256(f"prompt number {i // 10}".encode()).hexdigest() for i in range(n)]
        part = np.array([int(k[:8], 16) % 5 for k in keys])
        assert all(len(set(part[i : i + 10])) == 1 for i in range(0, n, 10))  # a prompt's rows share a part
    else:
        part = np.random.default_rng(0).permutation(n) % 5  # the documented fallback: random parts, seed 0
    assert report["cross_fitting"]["rows"].startswith("grouped by prompt" if grouped else "random")
    weight = np.empty(n)
    for k in range(5):
        weight[part == k] = grid_best(p[part != k], truth[part != k])
    honest = weight * m0 + (1 - weight) * m1
    acc = float(np.mean(np.where(honest >= 0.5, "model_a", "model_b") == winner))
    assert report["oof/accuracy"]["ensemble_cross_fitted"] == pytest.approx(acc)
    assert (
        report["oof/log_loss"]["ensemble_cross_fitted"] >= report["oof/log_loss"]["ensemble"] - 1e-12
    )  # tuned in-sample is optimistic
    assert report["weights"]["*"][0] == pytest.approx(grid_best(p, truth))

    unsure = np.argsort(np.abs(m0 - 0.5), kind="stable")
    for share, key in ((0.25, "25%"), (0.5, "50%"), (1.0, "100%")):
        q = m0.copy()
        q[unsure[: int(share * n)]] = honest[unsure[: int(share * n)]]
        expected = float(np.mean(np.where(q >= 0.5, "model_a", "model_b") == winner))
        assert report["oof/cascade_cross_fitted"][key]["accuracy"] == pytest.approx(expected)
    assert report["oof/cascade_cross_fitted"]["100%"]["accuracy"] == pytest.approx(acc)
    assert "not account" in report["cross_fitting"]["not_accounted_for"]


@pytest.mark.fast
def test_two_model_says_why_it_passed_over_each_run(tmp_path, caplog) -> None:
    import logging

    from duelist.runs.registry import pick_runs

    fake_run(tmp_path, "g1", "tiny_gemma2", 0.61, 0.66)
    fake_run(tmp_path, "g2", "tiny_gemma2", 0.66, 0.64)
    fake_run(tmp_path, "l1", "tiny_llama", 0.60, 0.69)
    fake_run(tmp_path, "q1", "tiny_qwen2", 0.64, 0.65)
    fake_run(tmp_path, "g3", "tiny_gemma2", 0.66, 0.64)
    fake_run(tmp_path, "g9", "tiny_gemma2", 0.90, 0.50, fold=3)
    fake_run(tmp_path, "zh", "tiny_gemma2", 0.79, 0.50, extra=("data.languages=[Chinese]",))
    cfg = compose_infer(["ensemble=two_model", f"ensemble.roots=[{tmp_path}]", "data.test=x.parquet"])
    with caplog.at_level(logging.INFO, logger="duelist.runs.registry"):
        assert [p.name for p in pick_runs(cfg)] == ["g2", "q1"]
    said = {m.split(" (")[0].rsplit("/", 1)[-1]: m for m in caplog.messages if "passed over" in m}
    assert any(
        m.startswith("ensemble.members: picked ") and "g2 (tiny_gemma2, val/accuracy 0.6600)" in m
        for m in caplog.messages
    )
    assert "val/accuracy 0.6100, the picked tiny_gemma2 run has 0.6600" in said["g1"]
    assert "0.6600, a tie with the picked tiny_gemma2 run (the first found wins a tie)" in said["g3"]
    assert "validated on other rows than the picked runs" in said["g9"]
    assert "a specialist (data.languages=Chinese)" in said["zh"]
    assert "its model is not among the two best on these rows" in said["l1"]
    assert len(said) == 5


@pytest.mark.fast
def test_the_registry_never_picks_a_specialist_as_a_member(tmp_path) -> None:
    fake_run(tmp_path, "general", "tiny_gemma2", 0.61, 0.66)
    fake_run(
        tmp_path, "zh", "tiny_gemma2", 0.79, 0.50, extra=("data.languages=[Chinese]",)
    )  # its accuracy is on Chinese rows only
    listed = find_runs([str(tmp_path)])
    assert (
        listed.set_index("model").shape[0] == 2 and listed.iloc[0]["languages"] == "Chinese"
    )  # the list shows it, best first
    assert best_run("tiny_gemma2", [str(tmp_path)]) == str(tmp_path / "general")


@pytest.mark.fast
def test_members_auto_picks_the_best_run_of_the_two_best_model_names(tmp_path) -> None:
    from duelist.runs.registry import pick_runs

    fake_run(tmp_path, "g1", "tiny_gemma2", 0.61, 0.66)
    fake_run(tmp_path, "g2", "tiny_gemma2", 0.66, 0.64)
    fake_run(tmp_path, "l1", "tiny_llama", 0.60, 0.69)
    fake_run(tmp_path, "q1", "tiny_qwen2", 0.64, 0.65)
    cfg = compose_infer(["ensemble=two_model", f"ensemble.roots=[{tmp_path}]", "data.test=x.parquet"])
    assert cfg.ensemble.members == "auto"
    assert [p.name for p in pick_runs(cfg)] == ["g2", "q1"]
    # members are compared only with runs validated on the same rows: a luckier run of another fold is not picked
    fake_run(tmp_path, "g3", "tiny_gemma2", 0.66, 0.64)
    fake_run(tmp_path, "g9", "tiny_gemma2", 0.90, 0.50, fold=3)
    assert [p.name for p in pick_runs(cfg)] == ["g2", "q1"]
    fake_run(tmp_path, "q9", "tiny_qwen2", 0.85, 0.55, fold=3)  # with both families on fold 3, fold 3 scores best
    assert [p.name for p in pick_runs(cfg)] == ["g9", "q9"]
    named = compose_infer(["ensemble.members=[tiny_llama,tiny_qwen2]", f"ensemble.roots=[{tmp_path}]", "data.test=x"])
    assert [p.name for p in pick_runs(named)] == ["l1", "q1"]  # tiny_llama has a fold-0 run only: fold 0
    fake_run(tmp_path / "elsewhere", "l7", "tiny_llama", 0.8, 0.5, fold=4)
    apart = compose_infer(
        [
            "ensemble.members=[tiny_llama,tiny_qwen2]",
            f"ensemble.roots=[{tmp_path / 'elsewhere'},{tmp_path / 'q9'}]",
            "data.test=x",
        ]
    )
    with pytest.raises(DuelistError, match=r"no runs of tiny_llama, tiny_qwen2 were validated on the same rows"):
        pick_runs(apart)
    only_one = tmp_path / "one"
    fake_run(only_one, "g", "tiny_gemma2", 0.6, 0.6)
    with pytest.raises(
        DuelistError,
        match=r"needs finished runs of 2 model names under .*one; found only tiny_gemma2\. Train another model family "
        r"\(on a CPU: python train.py and python train.py experiment=minilm_full are two",
    ):
        pick_runs(compose_infer(["ensemble=two_model", f"ensemble.roots=[{only_one}]", "data.test=x.parquet"]))
    with pytest.raises(DuelistError, match="use auto or a list"):
        pick_runs(compose_infer(["ensemble=two_model", "ensemble.members=atuo", "data.test=x.parquet"]))


def test_a_member_with_weight_zero_is_not_scored(tmp_path, monkeypatch) -> None:
    from duelist.predict.ensemble import GLOBAL
    from duelist.tasks import submit as submission

    a, b = fake_run(tmp_path, "a", "tiny_gemma2", 0.7, 0.6), fake_run(tmp_path, "b", "tiny_qwen2", 0.5, 0.7)
    monkeypatch.setattr(
        submission,
        "ensemble_weights",
        lambda cfg, runs: (
            {"runs": [str(r) for r in runs], "combine": "prob", "weights": {GLOBAL: [1.0, 0.0], "Spanish": [1.0, 0.0]}},
            None,
        ),
    )
    scored, budget_runs_out = [], [False]

    def fake_score(run, test, cfg, device, **kw):
        scored.append(run.name)
        return np.array([0.8, np.nan, np.nan]) if budget_runs_out[0] else np.linspace(0.1, 0.9, len(test))

    monkeypatch.setattr(submission, "score_run", fake_score)
    out = tmp_path / "sub.csv"
    cfg = compose_infer(
        [f"runs=[{a},{b}]", "ensemble=weighted", f"data.test={WSDM_EXAMPLE}", f"output={out}", "time_budget_min=5"]
    )
    submission.submit(cfg)
    assert scored == ["a"]  # b has weight 0 everywhere: never loaded, never scored
    probs = pd.read_parquet(tmp_path / "sub.parquet")
    assert probs["p_a_run1"].isna().all() and np.allclose(probs["p_a"], np.linspace(0.1, 0.9, 3))
    report = json.loads((tmp_path / "sub.ensemble.json").read_text())
    assert report["not_scored_weight_0"] == [str(b)] and report["time_budget"]["rows_scored_per_run"] == [3, 0]

    # the budget leaves rows 1 and 2 unscored: they get the longer-answer rule, not the weight-0 member's placeholder
    budget_runs_out[0] = True
    submission.submit(cfg)
    test = pd.read_parquet(WSDM_EXAMPLE)
    la, lb = test["response_a"].str.len().to_numpy(), test["response_b"].str.len().to_numpy()
    rule = np.where(la > lb, 0.55, np.where(la < lb, 0.45, 0.5))
    np.testing.assert_allclose(pd.read_parquet(tmp_path / "sub.parquet")["p_a"], [0.8, rule[1], rule[2]])
    assert json.loads((tmp_path / "sub.ensemble.json").read_text())["time_budget"]["rows_without_a_model_score"] == 2
