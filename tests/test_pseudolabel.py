"""Pseudo-labelling: selection rules on synthetic teachers; teacher -> generate -> label -> student end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import TINY, compose_infer, run_cli
from duelist.tasks.pseudolabel import agreement, select


@pytest.mark.fast
def test_selection_rules_on_synthetic_teachers() -> None:
    members = np.array(
        [
            [0.90, 0.80],  # combined 0.85: confident, agree
            [0.60, 0.30],  # 0.45: disagree
            [0.10, 0.10],  # 0.10: confident, agree (B)
            [0.55, 0.52],  # 0.535: agree, not confident
            [0.99, 0.47],  # 0.73: confident, disagree
            [0.02, 0.08],  # 0.05: most confident, agree
        ]
    )
    combined = members.mean(axis=1)
    languages = np.array(["en", "en", "en", "ru", "ru", "en"])
    np.testing.assert_allclose(agreement(members, combined), [1, 0.5, 1, 1, 0.5, 1])

    def keep(min_confidence: float, require_agreement: bool, top_k: int | None) -> list[int]:
        return list(np.flatnonzero(select(combined, members, languages, min_confidence, require_agreement, top_k)))

    assert keep(0.0, False, None) == [0, 1, 2, 3, 4, 5]
    assert keep(0.2, False, None) == [0, 2, 4, 5]
    assert keep(0.2, True, None) == [0, 2, 5]
    assert keep(0.0, False, 2) == [2, 3, 4, 5]  # the two most confident per language
    assert keep(0.0, True, 1) == [3, 5]  # top-k among the rows the other rules kept


@pytest.fixture(scope="module")
def teacher(tiny_run) -> str:
    """One tiny teacher run (the TINY settings) for the tests of this file."""
    return str(tiny_run)


def test_teacher_generate_pseudolabel_student(tmp_path, teacher) -> None:
    sample = pd.read_parquet("src/duelist/assets/sample/hh_rlhf_harmless_test.parquet")
    sample.iloc[-60:][["id", "prompt"]].to_parquet(tmp_path / "prompts.parquet")
    pairs = tmp_path / "pairs.parquet"
    res = run_cli(
        "infer.py",
        [
            "task=generate",
            "generate=tiny",
            f"data.test={tmp_path / 'prompts.parquet'}",
            f"output={pairs}",
            f"hydra.run.dir={tmp_path / 'h1'}",
        ],
    )
    assert res.returncode == 0, res.stderr[-2000:]

    # the teacher's own submission path gives the reference probabilities (an independent code path; in this process)
    from duelist.tasks.infer import infer

    infer(compose_infer([f"runs=[{teacher}]", f"data.test={pairs}", f"output={tmp_path / 'ref.csv'}", "tta=swap"]))
    reference = pd.read_parquet(tmp_path / "ref.parquet").set_index("id")["p_a"]

    pl = tmp_path / "pl.parquet"
    res = run_cli(
        "infer.py",
        [
            "task=pseudolabel",
            "labeling=confident",
            "labeling.min_confidence=0.001",
            f"runs=[{teacher}]",
            f"data.test={pairs}",
            f"output={pl}",
            f"hydra.run.dir={tmp_path / 'h3'}",
        ],
    )
    assert res.returncode == 0, res.stderr[-2000:]
    labelled = pd.read_parquet(pl)
    expected = reference[(reference - 0.5).abs() >= 0.001]
    assert sorted(labelled["id"]) == sorted(expected.index)  # confidence rule, computed independently
    np.testing.assert_allclose(labelled.set_index("id")["p_a_teacher0"], expected.loc[labelled["id"]], atol=1e-6)
    assert (
        set(labelled["p_a"]) <= {0.0, 1.0}
        and (labelled["winner"] == np.where(labelled["p_a"] == 1.0, "model_a", "model_b")).all()
    )
    assert (
        labelled["pseudo_label"].all()
        and (labelled["teacher_agreement"] == 1.0).all()
        and (labelled["round"] == 1).all()
    )
    summary = json.loads((tmp_path / "pl.summary.json").read_text())
    assert summary["kept"] == len(labelled) and summary["rows"] == len(reference)
    assert summary["share_model_a"] == float((labelled["winner"] == "model_a").mean())
    assert (tmp_path / "pl.png").stat().st_size > 0

    # the student: human rows + pseudo-labels (half weight, KL distillation); pseudo rows never validate
    student = tmp_path / "student"
    res = run_cli(
        "train.py",
        [
            *TINY,
            "data=files",
            f"data.train=[pkg:duelist/assets/sample/pandalm_test.parquet,{{path:{pl},weight:0.5}}]",
            "data.on_bad_rows=drop",
            "distillation=kl",
            f"hydra.run.dir={student}",
        ],
    )
    assert res.returncode == 0, res.stderr[-2000:]
    oof = pd.read_parquet(student / "oof.parquet")
    assert not oof["id"].isin(labelled["id"]).any() and (oof["source"] == "pandalm_test").all()
    metrics = json.loads((student / "metrics.json").read_text())
    config = (student / "config.yaml").read_text()
    assert "loss: kl" in config and metrics["val/rows"] == len(oof)
    assert metrics["train/rows"] > len(labelled)  # human training rows and every pseudo-labelled row


def test_crashed_labelling_scores_only_the_missing_shards(tmp_path, monkeypatch, teacher) -> None:
    """A crash on the third shard (out of memory, a lost machine): the same command again scores the three missing
    shards only, and its output equals the uninterrupted run's."""
    from duelist.core.errors import DuelistError
    from duelist.models import network_scoring
    from duelist.tasks import pseudolabel

    rows = pd.read_parquet("src/duelist/assets/sample/pandalm_test.parquet").iloc[:100]
    rows.to_parquet(tmp_path / "pairs.parquet")
    args = [
        "task=pseudolabel",
        f"runs=[{teacher}]",
        f"data.test={tmp_path / 'pairs.parquet'}",
        "shard_rows=20",  # five shards
        "device=cpu",
    ]
    reference = pseudolabel.pseudolabel(compose_infer([*args, f"output={tmp_path / 'ref.parquet'}"]))
    assert not (tmp_path / "ref.shards").exists()  # removed once the labelled file is written

    calls, crash_at = [], [3]
    real = network_scoring.HFScorer.score

    def crashing(self, test, *a, **k):
        calls.append(len(test))
        if len(calls) == crash_at[0]:
            raise RuntimeError("simulated crash (CUDA out of memory)")
        return real(self, test, *a, **k)

    monkeypatch.setattr(network_scoring.HFScorer, "score", crashing)
    cfg = compose_infer([*args, f"output={tmp_path / 'pl.parquet'}"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        pseudolabel.pseudolabel(cfg)
    assert not (tmp_path / "pl.parquet").exists() and len(list((tmp_path / "pl.shards").glob("shard-*.parquet"))) == 2
    calls.clear()
    crash_at[0] = -1
    again = pseudolabel.pseudolabel(cfg)
    assert calls == [20, 20, 20]  # shards 2, 3 and 4 only
    pd.testing.assert_frame_equal(again, reference, check_exact=True)
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "pl.parquet"), pd.read_parquet(tmp_path / "ref.parquet"), check_exact=True
    )

    # shards of another setup are refused, not mixed in
    (tmp_path / "pl.shards").mkdir()
    (tmp_path / "pl.shards" / "manifest.json").write_text('{"fingerprint": "another"}')
    with pytest.raises(DuelistError, match="different pseudo-labelling setup"):
        pseudolabel.pseudolabel(cfg)
