"""Training with tiny real architectures: end to end through the CLIs, reload, determinism, learning."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY, compose_train, run_cli
from duelist.data.encoding import PairEncoder
from duelist.data.reading import load_pairs
from duelist.models.heads import PairHead
from duelist.models.network_build import build_model, load_checkpoint, save_checkpoint
from duelist.models.network_scoring import predict_p_a
from duelist.models.network_training import pair_losses
from duelist.tasks.train import train

SAMPLE = [
    "src/duelist/assets/sample/hh_rlhf_harmless_test.parquet",
    "src/duelist/assets/sample/pandalm_test.parquet",
    "src/duelist/assets/sample/oasst1_zh_rank.parquet",
]


def labels_from_source_files() -> pd.Series:
    """Winners read straight from the bundled files with pandas, independent of duelist's reader."""
    from conftest import ROOT

    raw = pd.concat([pd.read_parquet(ROOT / p) for p in SAMPLE], ignore_index=True)
    return raw.set_index("id")["winner"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory):
    """``python train.py`` of a tiny run, shared by the tests of this file that read a trained run (infer.py writes
    nothing into a run dir)."""
    from conftest import isolated_env

    run = tmp_path_factory.mktemp("cli") / "run"
    with isolated_env(tmp_path_factory):
        res = run_cli("train.py", [*TINY, "trainer.eval_every=3", f"hydra.run.dir={run}"])
    return run, res


def test_train_then_infer_cli_and_accuracy_checked_independently(tmp_path, cli_run) -> None:
    run, res = cli_run
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"run dir: {run}" in res.stdout
    for name in (
        "metrics.json",
        "oof.parquet",
        "config.yaml",
        "curves.png",
        "accuracy_by_language.png",
        "checkpoint/config.yaml",
        "checkpoint/adapter/adapter_model.safetensors",
        "checkpoint/base/model.safetensors",
    ):
        assert (run / name).is_file(), name
    assert not list(run.rglob("*.bin")) and not list(run.rglob("*.pt")) and not list(run.rglob("*.pkl"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert (
        metrics["train/tokens_per_s"] > 0
        and metrics["peak_rss_gb"] > 0.1
        and metrics["train/peak_gpu_memory_gb"] is None
    )  # CPU run
    oof = pd.read_parquet(run / "oof.parquet")
    assert set(oof.columns) >= {"id", "p_a", "winner", "language", "fold"}

    truth = labels_from_source_files().loc[oof["id"]].to_numpy()
    pred = np.where(oof["p_a"].to_numpy() >= 0.5, "model_a", "model_b")
    assert metrics["val/accuracy"] == pytest.approx(float(np.mean(pred == truth)))
    assert metrics["val/rows"] == len(oof)

    # score the validation rows through infer.py from the run dir alone, as an unlabelled test file
    from conftest import ROOT

    raw = (
        pd.concat([pd.read_parquet(ROOT / p) for p in SAMPLE], ignore_index=True)
        .set_index("id")
        .loc[oof["id"]]
        .reset_index()
    )
    test = raw[["id", "prompt", "response_a", "response_b"]].iloc[::-1].reset_index(drop=True)  # another order
    test.to_parquet(tmp_path / "test.parquet")
    out = tmp_path / "sub" / "submission.csv"
    res = run_cli(
        "infer.py", [f"runs=[{run}]", f"data.test={tmp_path / 'test.parquet'}", f"output={out}", "batch_size=32"]
    )
    assert res.returncode == 0, res.stderr[-3000:]
    sub = pd.read_csv(out, dtype={"id": str})
    assert list(sub.columns) == ["id", "winner"]
    assert list(sub["id"]) == list(test["id"])  # every id once, input order
    assert set(sub["winner"]) <= {"model_a", "model_b"}
    probs = pd.read_parquet(out.with_suffix(".parquet")).set_index("id").loc[oof["id"]]
    np.testing.assert_allclose(probs["p_a"].to_numpy(), oof["p_a"].to_numpy(), atol=1e-5)
    sub_acc = float(np.mean(sub.set_index("id").loc[raw["id"], "winner"].to_numpy() == raw["winner"].to_numpy()))
    close = np.abs(oof["p_a"].to_numpy() - 0.5) < 1e-5
    assert abs(sub_acc - metrics["val/accuracy"]) <= close.mean() + 1e-9


def test_tta_swap_averages_both_orders(tmp_path, cli_run) -> None:
    run, trained = cli_run
    assert trained.returncode == 0, trained.stderr[-3000:]
    from conftest import WSDM_EXAMPLE, compose_infer
    from duelist.tasks.infer import infer

    # tta=swap through infer.py; the plain scores and the token-budget ones through infer.py's scoring in this process
    both = [f"runs=[{run},{run}]", f"data.test={WSDM_EXAMPLE}"]
    res = run_cli("infer.py", [*both, f"output={tmp_path / 'swap'}.csv", "tta=swap"])
    assert res.returncode == 0, res.stderr[-2000:]
    infer(compose_infer([*both, f"output={tmp_path / 'none'}.csv", "tta=none"]))
    plain = pd.read_parquet(tmp_path / "none.parquet")
    swap = pd.read_parquet(tmp_path / "swap.parquet")
    budget = [f"runs=[{run}]", f"data.test={WSDM_EXAMPLE}", f"output={tmp_path / 'budget'}.csv", "max_batch_tokens=400"]
    infer(compose_infer(budget))
    np.testing.assert_allclose(
        pd.read_parquet(tmp_path / "budget.parquet")["p_a"], plain["p_a_run0"], atol=1e-5
    )  # token budget: same answers
    assert list(plain["id"]) == [str(i) for i in pd.read_parquet(WSDM_EXAMPLE)["id"]]
    np.testing.assert_allclose(plain["p_a_run0"], plain["p_a_run1"])  # two runs averaged
    # independent swap score: reload the checkpoint and score B-vs-A directly
    built, run_cfg = load_checkpoint(run, torch.device("cpu"))
    test = load_pairs(str(WSDM_EXAMPLE), labelled=False)
    enc = PairEncoder.for_model(built.tokenizer, run_cfg.model)
    swapped = [enc.encode_one(p, b, a) for p, a, b in zip(test["prompt"], test["response_a"], test["response_b"])]
    p_swapped = predict_p_a(built.model, PairHead(), swapped, built.tokenizer.pad_token_id, 8, torch.device("cpu"))
    np.testing.assert_allclose(swap["p_a"], (plain["p_a"] + 1 - p_swapped) / 2, atol=1e-6)


@pytest.mark.parametrize(
    "model,lora",
    [
        ("tiny_gemma2", "default"),
        ("tiny_qwen2", "none"),
        ("tiny_llama", "default"),
        ("tiny_qwen2 arch=qwen3", "default"),
    ],
)
def test_checkpoint_reload_gives_identical_logits(tmp_path, model: str, lora: str) -> None:
    # the last: a model type no code of duelist names (any *ForSequenceClassification type is a model.arch)
    name, _, arch = model.partition(" arch=")
    overrides = [f"model={name}", f"lora={lora}", *(["lora.r=4"] if lora != "none" else [])]
    cfg = compose_train([*TINY, *overrides, *([f"model.arch={arch}"] if arch else [])])
    built = build_model(cfg.model, cfg.lora, torch.device("cpu"), seed=0)
    torch.manual_seed(1)
    with torch.no_grad():  # stand-in for training: move every trainable weight (adapters, head) off its init
        for p in built.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    save_checkpoint(built, cfg, tmp_path / "checkpoint")
    reloaded, _ = load_checkpoint(tmp_path, torch.device("cpu"))
    ids = torch.randint(10, 500, (3, 40))
    built.model.eval()
    with torch.no_grad():
        a = built.model(input_ids=ids).logits
        b = reloaded.model(input_ids=ids).logits
    assert torch.equal(a, b)
    assert reloaded.model.config.model_type == (arch or cfg.model.arch)
    head = [n for n, _ in reloaded.model.named_parameters() if "score" in n or "classifier" in n]
    assert head, "the classification head must be part of the checkpoint"


def test_same_seed_same_metrics_and_predictions(tmp_path) -> None:
    cfg = compose_train([*TINY, "augment=swap", "augment.same_batch=true"])
    first = train(cfg, tmp_path / "a")
    second = train(cfg, tmp_path / "b")
    assert first == second
    m1, m2 = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in "ab")
    assert m1["val/log_loss"] == m2["val/log_loss"] and m1["val/accuracy"] == m2["val/accuracy"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "a/oof.parquet"), pd.read_parquet(tmp_path / "b/oof.parquet")
    )
    assert m1["train/rows"] == 2 * (200 - m1["val/rows"])  # swap doubles the training rows


def test_tiny_model_learns_a_learnable_rule(tmp_path) -> None:
    """The loop really learns: A and B have the same length and differ in one word that decides the winner."""
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far", "sun", "sky"]
    rows = []
    for i in range(400):
        good, bad = (" ".join(rng.choice(words, 12)) for _ in range(2))
        good, bad = good + " good", bad + " poor"  # same length: the longer-wins rule is no help
        a_wins = bool(rng.integers(2))
        rows.append(
            {
                "id": f"r{i}",
                "prompt": f"Which is better, {i}?",
                "response_a": good if a_wins else bad,
                "response_b": bad if a_wins else good,
                "winner": "model_a" if a_wins else "model_b",
            }
        )
    pd.DataFrame(rows).to_parquet(tmp_path / "rule.parquet")
    cfg = compose_train(
        [
            "model=tiny_llama",
            "lora=none",
            "logger=none",
            "data=files",
            f"data.train={tmp_path / 'rule.parquet'}",
            "trainer.max_steps=120",
            "trainer.batch_size=16",
            "trainer.lr=3e-3",
            "trainer.head_lr=3e-3",
            "trainer.warmup_ratio=0.1",
            "model.max_length=96",
        ]
    )
    acc = train(cfg, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["val/baseline_longer_wins"] < 0.7
    assert acc >= 0.9


def test_soft_cross_entropy_matches_hand_computation() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.5, 1.5]])
    p_a = torch.tensor([0.8, 0.3])
    q = torch.softmax(logits, -1)
    by_hand = [-(0.8 * np.log(q[0, 0]) + 0.2 * np.log(q[0, 1])), -(0.3 * np.log(q[1, 0]) + 0.7 * np.log(q[1, 1]))]
    np.testing.assert_allclose(pair_losses(logits, p_a).numpy(), by_hand, rtol=1e-6)


def test_kl_distillation_loss_matches_hand_computation() -> None:
    logits = torch.tensor([[1.0, -0.5], [0.2, 0.4]])
    p_a = torch.tensor([0.9, 0.3])
    kl = torch.tensor([True, False])  # row 0 is a pseudo-label learnt by KL at T=2, row 1 plain cross-entropy
    # row 0 by hand: teacher softened = 0.9^(1/2) / (0.9^(1/2) + 0.1^(1/2)); student = softmax([1.0, -0.5] / 2)
    t_a = 0.9**0.5 / (0.9**0.5 + 0.1**0.5)
    s_a = 1 / (1 + np.exp(-(1.0 - (-0.5)) / 2))
    kl_by_hand = 4 * (t_a * np.log(t_a / s_a) + (1 - t_a) * np.log((1 - t_a) / (1 - s_a)))
    s2 = 1 / (1 + np.exp(-(0.2 - 0.4)))
    ce_by_hand = -(0.3 * np.log(s2) + 0.7 * np.log(1 - s2))
    np.testing.assert_allclose(
        pair_losses(logits, p_a, kl, temperature=2.0).numpy(), [kl_by_hand, ce_by_hand], rtol=1e-5
    )


def test_plain_multirun(tmp_path) -> None:
    res = run_cli("train.py", ["-m", "lora.r=4,8", *TINY, "trainer.max_steps=2", f"hydra.sweep.dir={tmp_path}"])
    assert res.returncode == 0, res.stderr[-3000:]
    params = [
        json.loads((tmp_path / str(i) / "metrics.json").read_text())["train/trainable_parameters"] for i in (0, 1)
    ]
    assert params[1] > params[0]  # r=8 has more adapter parameters than r=4


def test_wandb_offline_run_is_written_and_finished_on_failure(tmp_path, monkeypatch) -> None:
    import wandb

    cfg = compose_train([*TINY, "logger=wandb", "trainer.max_steps=2"])
    train(cfg, tmp_path / "ok")
    runs = list((tmp_path / "ok" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    assert wandb.run is None

    from duelist.models.network_training import NetworkTraining

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(NetworkTraining, "fit", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, tmp_path / "crash")
    assert wandb.run is None  # finished even though the job failed
    assert not (tmp_path / "crash" / "metrics.json").exists()


def test_gradient_checkpointing_trains_the_same_model(tmp_path) -> None:
    base = [*TINY, "trainer.max_steps=3"]
    train(compose_train(base), tmp_path / "plain")
    train(compose_train([*base, "trainer.gradient_checkpointing=true"]), tmp_path / "ckpt")
    a, b = (pd.read_parquet(tmp_path / r / "oof.parquet") for r in ("plain", "ckpt"))
    np.testing.assert_allclose(a["p_a"], b["p_a"], atol=1e-5)


def test_gemma2_softcapping_switch_and_reward_model_head(tmp_path) -> None:
    cfg = compose_train([*TINY, "lora=none"])
    built = build_model(cfg.model, cfg.lora, torch.device("cpu"), seed=0)
    assert built.model.config.attn_logit_softcapping is None and built.model.config.final_logit_softcapping is None
    on = compose_train([*TINY, "lora=none", "model.softcapping=true"])
    assert build_model(on.model, on.lora, torch.device("cpu"), seed=0).model.config.attn_logit_softcapping == 50.0

    # a "reward model" checkpoint with a 1-output head loads with a fresh 2-label head (model=gemma2_9b_rm path)
    from transformers import AutoModelForSequenceClassification

    rm_config = built.model.config.__class__(**{**built.model.config.to_dict(), "num_labels": 1})
    AutoModelForSequenceClassification.from_config(rm_config).save_pretrained(tmp_path / "rm")
    built.tokenizer.save_pretrained(tmp_path / "rm")
    rm = compose_train(
        [*TINY, "lora=default", "lora.r=4", "model.init=pretrained", f"model.name_or_path={tmp_path / 'rm'}"]
    )
    model = build_model(rm.model, rm.lora, torch.device("cpu"), seed=0).model
    assert model(input_ids=torch.tensor([[5, 6, 7]])).logits.shape == (1, 2)


def test_head_has_its_own_learning_rate() -> None:
    from duelist.models.network_build import head_and_body_parameters

    cfg = compose_train([*TINY, "lora.r=4"])
    model = build_model(cfg.model, cfg.lora, torch.device("cpu"), seed=0).model
    head, body = head_and_body_parameters(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert head and all("score" in names[id(p)] for p in head)
    assert body and all("lora_" in names[id(p)] for p in body)  # only adapters train besides the head


def test_cli_with_a_list_of_train_files_and_a_fixed_validation_file(tmp_path) -> None:
    from conftest import ROOT

    raw = pd.read_parquet(ROOT / SAMPLE[1]).query("winner != 'tie'")
    raw = raw[raw["response_a"].str.strip().ne("") & raw["response_b"].str.strip().ne("")]
    raw.iloc[:80].to_csv(tmp_path / "a.csv", index=False)
    raw.iloc[80:160].to_parquet(tmp_path / "b.parquet")
    raw.iloc[160:200].to_json(tmp_path / "valid.jsonl", orient="records", lines=True)
    run = tmp_path / "run"
    res = run_cli(
        "train.py",
        [
            "data=files",
            f"data.train=[{tmp_path / 'a.csv'},{tmp_path / 'b.parquet'}]",
            f"data.valid={tmp_path / 'valid.jsonl'}",
            "model=tiny_llama",
            "logger=none",
            "trainer.max_steps=3",
            f"hydra.run.dir={run}",
        ],
    )
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    norm = lambda s: s.str.lower().str.split().str.join(" ")  # noqa: E731
    train = raw.iloc[:160]
    a, b = norm(train["response_a"]), norm(train["response_b"])
    pair = norm(train["prompt"]) + "|" + a.where(a <= b, b) + "|" + b.where(a <= b, a)
    kept = ~pair.duplicated()  # dedup: PandaLM repeats some pairs
    kept &= ~norm(train["prompt"]).isin(set(norm(raw.iloc[160:200]["prompt"])))  # leakage guard
    assert metrics["train/rows"] == int(kept.sum()) and metrics["val/rows"] == 40
    oof = pd.read_parquet(run / "oof.parquet")
    assert sorted(oof["id"]) == sorted(raw.iloc[160:200]["id"]) and (oof["fold"] == -1).all()
