"""Extra data: more layouts, sources with weights/caps, dedup across sources, leakage guard, language quota."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY, compose_train
from duelist.core.errors import DuelistError
from duelist.data.reading import load_pairs
from duelist.data.splits import load_train_valid, parse_sources
from duelist.models.network_build import build_model
from duelist.tasks.train import seed_everything, train


def chat(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": text} for role, text in turns]


def test_chatbot_arena_conversations_layout(tmp_path) -> None:
    rows = pd.DataFrame(
        {
            "question_id": ["q1", "q2", "q3", "q4"],
            "model_a": ["vicuna-13b", "koala-13b", "alpaca-13b", "gpt-4"],
            "model_b": ["koala-13b", "vicuna-13b", "gpt-4", "claude-v1"],
            "winner": ["model_a", "tie (bothbad)", "model_b", "tie"],
            "conversation_a": [
                chat(("user", "Hi"), ("assistant", "Hello")),
                chat(("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2")),
                chat(("user", "Bonjour"), ("assistant", "Salut")),
                chat(("user", "x"), ("assistant", "y")),
            ],
            "conversation_b": [
                chat(("user", "Hi"), ("assistant", "Hey")),
                chat(("user", "Q1"), ("assistant", "B1"), ("user", "Q2"), ("assistant", "B2")),
                chat(("user", "Bonjour"), ("assistant", "Coucou")),
                chat(("user", "x"), ("assistant", "z")),
            ],
            "language": ["English", "English", "French", "English"],
        }
    )
    rows.to_parquet(tmp_path / "arena.parquet")
    df = load_pairs(str(tmp_path / "arena.parquet"), ties="soft").set_index("id")
    assert list(df.index) == ["q1", "q2", "q3", "q4"]
    assert (
        df.loc["q2", "prompt"] == "[Turn 1]\nQ1\n\n[Turn 2]\nQ2"
        and df.loc["q2", "response_b"] == "[Turn 1]\nB1\n\n[Turn 2]\nB2"
    )
    assert list(df["p_a"]) == [1.0, 0.5, 0.0, 0.5]  # "tie (bothbad)" is a tie
    assert df.loc["q3", "language"] == "French" and df.loc["q3", "model_b"] == "gpt-4"
    assert list(load_pairs(str(tmp_path / "arena.parquet"), ties="drop")["id"]) == ["q1", "q3"]
    # the same rows as JSON text in a CSV read the same
    csv = rows.assign(
        conversation_a=rows["conversation_a"].map(json.dumps), conversation_b=rows["conversation_b"].map(json.dumps)
    )
    csv.to_csv(tmp_path / "arena.csv", index=False)
    pd.testing.assert_frame_equal(load_pairs(str(tmp_path / "arena.csv"), ties="soft").set_index("id"), df)


def test_chosen_rejected_layout_places_a_and_b_at_random_seeded(tmp_path) -> None:
    n = 200
    rows = pd.DataFrame(
        {
            "prompt": [f"question {i}" for i in range(n)],
            "chosen": [f"good {i}" for i in range(n)],
            "rejected": [f"bad {i}" for i in range(n)],
        }
    )
    rows.to_json(tmp_path / "prefs.jsonl", orient="records", lines=True)
    df = load_pairs(str(tmp_path / "prefs.jsonl"), seed=1)
    chosen_is_a = df["response_a"].str.startswith("good")
    assert (df["winner"] == np.where(chosen_is_a, "model_a", "model_b")).all()  # the chosen response always wins
    assert ((df["response_a"].str.startswith("bad")) == ~chosen_is_a).all()
    assert 0.35 < chosen_is_a.mean() < 0.65  # both positions are used
    again = load_pairs(str(tmp_path / "prefs.jsonl"), seed=1)
    other = load_pairs(str(tmp_path / "prefs.jsonl"), seed=2)
    assert (again["response_a"] == df["response_a"]).all() and (other["response_a"] != df["response_a"]).any()


def test_chosen_rejected_as_message_lists_without_prompt_column(tmp_path) -> None:
    rows = pd.DataFrame(
        {
            "chosen": [chat(("user", "What is 2+2?"), ("assistant", "4"))],
            "rejected": [chat(("user", "What is 2+2?"), ("assistant", "5"))],
        }
    )
    rows.to_parquet(tmp_path / "uf.parquet")
    row = load_pairs(str(tmp_path / "uf.parquet")).iloc[0]
    assert row["prompt"] == "What is 2+2?"
    assert {row["response_a"], row["response_b"]} == {"4", "5"}
    assert (row["winner"] == "model_a") == (row["response_a"] == "4")


def pairs(prefix: str, prompts: list[str], language: str = "English", winners: list[str] | None = None) -> pd.DataFrame:
    n = len(prompts)
    return pd.DataFrame(
        {
            "id": [f"{prefix}{i}" for i in range(n)],
            "prompt": prompts,
            "response_a": [f"answer a {p}" for p in prompts],
            "response_b": [f"answer b {p} longer" for p in prompts],
            "winner": winners or ["model_a", "model_b"] * (n // 2) + ["model_a"] * (n % 2),
            "language": language,
        }
    )


def data_cfg(train, **extra):
    base = dict(
        name="t",
        train=train,
        valid=None,
        n_folds=5,
        fold=0,
        split_seed=0,
        max_rows=None,
        ties="drop",
        on_bad_rows="fail",
        languages=None,
        language_quota={},
        dedup=True,
    )
    return OmegaConf.create({**base, **extra})


def test_sources_weights_caps_and_validate_flags(tmp_path) -> None:
    pairs("h", [f"human prompt {i}" for i in range(50)]).to_parquet(tmp_path / "human.parquet")
    pairs("x", [f"extra prompt {i}" for i in range(80)]).to_parquet(tmp_path / "extra.parquet")
    pairs("p", [f"pseudo prompt {i}" for i in range(30)]).assign(pseudo_label=True).to_parquet(tmp_path / "pl.parquet")
    cfg = data_cfg(
        [
            str(tmp_path / "human.parquet"),
            {"path": str(tmp_path / "extra.parquet"), "weight": 0.5, "max_rows": 40, "validate": False},
            {"path": str(tmp_path / "pl.parquet"), "weight": 0.25},
        ]
    )
    train, valid = load_train_valid(cfg)
    assert set(valid["id"].str[0]) == {"h"} and len(valid) == 10  # only human rows validate (one fold of 50)
    counts = train["id"].str[0].value_counts()
    assert counts["h"] == 40 and counts["x"] == 40 and counts["p"] == 30  # extra capped at 40
    weights = train.groupby(train["id"].str[0])["weight"].unique().map(list).to_dict()
    assert weights == {"h": [1.0], "x": [0.5], "p": [0.25]}
    assert (
        train.loc[train["id"].str[0] == "p", "pseudo_label"].all()
        and not train.loc[train["id"].str[0] != "p", "pseudo_label"].any()
    )
    with pytest.raises(DuelistError, match=r"data.train\[0\]: unknown key 'wieght'"):
        parse_sources([{"path": "a.parquet", "wieght": 2}])


def test_dedup_across_sources_and_leakage_guard(tmp_path) -> None:
    human = pairs("h", [f"Prompt number {i}" for i in range(40)])
    human.to_parquet(tmp_path / "human.parquet")
    # extra: 10 copies of human pairs with A/B exchanged and other casing/spaces, 10 new pairs
    copies = human.iloc[:10].rename(columns={"response_a": "response_b", "response_b": "response_a"})
    copies = copies.assign(id=[f"c{i}" for i in range(10)], prompt=copies["prompt"].str.upper() + "  ")
    new = pairs("n", [f"new prompt {i}" for i in range(10)])
    pd.concat([copies, new]).to_parquet(tmp_path / "extra.parquet")
    cfg = data_cfg([str(tmp_path / "human.parquet"), {"path": str(tmp_path / "extra.parquet"), "validate": False}])
    train, valid = load_train_valid(cfg)
    assert not train["id"].str.startswith("c").any()  # the copies are dropped; the first source keeps its rows
    assert (train["id"].str.startswith("n")).sum() == 10
    assert len(train) + len(valid) == 50
    # without dedup the copies whose prompt is a validation prompt are still dropped by the leakage guard
    train2, valid2 = load_train_valid(data_cfg(cfg.train, dedup=False))
    norm = lambda s: s.str.lower().str.split().str.join(" ")  # noqa: E731
    assert not norm(train2["prompt"]).isin(set(norm(valid2["prompt"]))).any()
    expected_copies = int((~norm(copies["prompt"]).isin(set(norm(valid2["prompt"])))).sum())
    assert (train2["id"].str.startswith("c")).sum() == expected_copies and expected_copies < 10


def test_language_filter_and_quota_apply_to_training_rows_only(tmp_path) -> None:
    pd.concat(
        [
            pairs("e", [f"english {i}" for i in range(100)], "English"),
            pairs("r", [f"russian {i}" for i in range(30)], "Russian"),
            pairs("z", [f"chinese {i}" for i in range(20)], "Chinese"),
        ]
    ).to_parquet(tmp_path / "mix.parquet")
    train, valid = load_train_valid(
        data_cfg(str(tmp_path / "mix.parquet"), language_quota={"English": 25}, languages=["English", "Russian"])
    )
    assert train["language"].value_counts().to_dict() == {"English": 25, "Russian": 24}
    assert valid["language"].value_counts().to_dict() == {"English": 20, "Russian": 6}  # validation keeps the real mix
    assert train.loc[train["language"] == "English", "winner"].value_counts().min() >= 12  # quota stratified by label


def test_zero_loss_weight_leaves_the_model_untouched(tmp_path) -> None:
    """Per-source weights reach the loss: with every row at weight 0 (and no weight decay) training changes nothing."""
    from duelist.data.encoding import PairEncoder
    from duelist.models.heads import PairHead
    from duelist.models.network_scoring import predict_p_a

    rows = pd.read_parquet("src/duelist/assets/sample/pandalm_test.parquet").iloc[:120]
    rows = rows[rows["winner"] != "tie"]
    rows = rows[rows["response_a"].str.strip().ne("") & rows["response_b"].str.strip().ne("")]
    rows.to_parquet(tmp_path / "p.parquet")
    overrides = [
        *TINY,
        "data=files",
        f"data.train=[{{path:{tmp_path / 'p.parquet'},weight:0.0}}]",
        "trainer.weight_decay=0",
        "data.max_rows=null",
    ]
    cfg = compose_train(overrides)
    train(cfg, tmp_path / "zero")
    oof = pd.read_parquet(tmp_path / "zero" / "oof.parquet")
    seed_everything(cfg.trainer.seed)
    built = build_model(cfg.model, cfg.lora, torch.device("cpu"), cfg.trainer.seed)  # the untrained model
    _, valid = load_train_valid(cfg.data)
    ids = PairEncoder.for_model(built.tokenizer, cfg.model).encode(valid, None)
    untrained = predict_p_a(built.model, PairHead(), ids, built.tokenizer.pad_token_id, 32, torch.device("cpu"))
    np.testing.assert_allclose(oof.set_index("id").loc[valid["id"], "p_a"].to_numpy(), untrained, atol=1e-6)
    train(
        compose_train(
            [
                *overrides[:-3],
                "data=files",
                f"data.train=[{tmp_path / 'p.parquet'}]",
                "trainer.weight_decay=0",
                "data.max_rows=null",
            ]
        ),
        tmp_path / "one",
    )
    trained = pd.read_parquet(tmp_path / "one" / "oof.parquet").set_index("id").loc[valid["id"], "p_a"].to_numpy()
    assert np.abs(trained - untrained).max() > 1e-3  # weight 1 does train
