"""model.head=reward: two sequences per pair through a one-output head, p_a = sigmoid(r_a - r_b) (Bradley-Terry).

A tiny random Qwen3 reward model saved as a downloaded one looks (``python -m duelist example-data
reward_model=true``) stands in for Skywork-Reward-V2: its zero-shot scores are checked against transformers run by
hand on the chat-formatted texts, its swap symmetry exactly, its head kept and saved through LoRA and QLoRA, and a
zero-shot run is used as a pseudo-label teacher and a stack member."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY, WSDM_EXAMPLE, compose_train, run_cli
from duelist.core.errors import DuelistError
from duelist.data.encoding import ResponseEncoder
from duelist.data.pairs import swap_pairs
from duelist.data.splits import load_train_valid
from duelist.models.heads import head_of
from duelist.models.network_build import build_model, load_checkpoint, load_tokenizer
from duelist.models.network_scoring import predict_p_a
from duelist.runs.run_dir import RunDir
from duelist.tasks.train import train
from duelist.tools.example_data import write_tiny_reward_model

CPU = torch.device("cpu")
SMALL = ["logger=none", "data.max_rows=200", "trainer.eval_batch_size=32"]


@pytest.fixture(scope="module")
def rm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_reward_model(tmp_path_factory.mktemp("rm") / "tiny_qwen3_rm")


def rm_args(rm: Path) -> list[str]:
    return ["model=tiny_qwen3_rm", f"model.name_or_path={rm}", *SMALL]


@pytest.fixture(scope="module")
def zero_shot(rm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python train.py model=tiny_qwen3_rm trainer.epochs=0`` (its train(), in this process) with budgets wide enough
    that no row is cut."""
    from conftest import isolated_env

    run = tmp_path_factory.mktemp("zero-shot") / "run"
    overrides = [*rm_args(rm), "trainer.epochs=0", "model.max_length=1024", "model.prompt_max_tokens=512"]
    with isolated_env(tmp_path_factory):
        train(compose_train(overrides), run)
    return run


def chat_ids(tokenizer, prompt: str, response: str) -> list[int]:
    out = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=True
    )
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def valid_rows(run: Path) -> pd.DataFrame:
    """The run's validation rows in oof.parquet's order."""
    oof = RunDir(run).read_oof()
    _, valid = load_train_valid(RunDir(run).read_checkpoint_config().data)
    return valid.set_index("id").loc[oof["id"]].reset_index()


def rescore(run: Path, rows: pd.DataFrame) -> np.ndarray:
    built, cfg = load_checkpoint(run, CPU)
    head = head_of(cfg.model)
    ids = head.encoder(built.tokenizer, cfg.model).encode(rows, None)
    batch = cfg.trainer.eval_batch_size  # the batches validation scored in: padding moves sdpa's last digits
    return predict_p_a(built.model, head, ids, built.tokenizer.pad_token_id, batch, CPU)


def test_zero_shot_scores_are_bradley_terry_on_the_reward_models_own_head(zero_shot: Path, rm: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(rm)
    model = AutoModelForSequenceClassification.from_pretrained(rm).eval()
    oof, rows = RunDir(zero_shot).read_oof(), valid_rows(zero_shot)
    compared = 0
    for row, p_a in zip(rows.itertuples(), oof["p_a"]):
        if "[Turn " in row.prompt + row.response_a + row.response_b:
            continue  # multi-turn rows are written as turns: checked in the encoder test below
        seqs = [chat_ids(tokenizer, row.prompt, r) for r in (row.response_a, row.response_b)]
        if max(map(len, seqs)) > 1024 or len(tokenizer(row.prompt, add_special_tokens=False)["input_ids"]) > 512:
            continue  # would be cut to the budget
        with torch.no_grad():
            r_a, r_b = (model(input_ids=torch.tensor([s])).logits[0, 0].item() for s in seqs)
        assert p_a == pytest.approx(1 / (1 + np.exp(-(r_a - r_b))), abs=1e-5)
        compared += 1
    assert compared >= 30
    checkpoint = RunDir(zero_shot).checkpoint
    assert sorted(p.name for p in checkpoint.iterdir()) == ["config.yaml", "tokenizer"]  # points at the base
    metrics = json.loads((zero_shot / "metrics.json").read_text())
    assert metrics["val/rows"] == len(oof) and metrics["best_step"] == 0


def test_the_reward_head_is_exactly_swap_symmetric(zero_shot: Path) -> None:
    rows = valid_rows(zero_shot)
    p, swapped = rescore(zero_shot, rows), rescore(zero_shot, swap_pairs(rows))
    assert np.array_equal(p + swapped, np.ones(len(rows)))
    assert np.array_equal(p, RunDir(zero_shot).read_oof()["p_a"].to_numpy())  # the reload is the OOF, bit for bit
    assert len(np.unique(p.round(6))) > len(p) // 2  # it judges: not one value for every row


def test_zero_shot_needs_a_reward_model(rm: Path, tmp_path: Path) -> None:
    res = run_cli("train.py", [*TINY, "trainer.epochs=0", "trainer.max_steps=-1"])
    assert res.returncode != 0 and "zero-shot run" in res.stderr and "Traceback" not in res.stderr
    # a base without a one-output head: a classifier with two labels, saved as a download looks
    cfg = compose_train([*TINY, "model=tiny_qwen2", "lora=none"])
    built = build_model(cfg.model, cfg.lora, CPU, seed=0)
    built.model.save_pretrained(tmp_path / "two_labels")
    built.tokenizer.save_pretrained(tmp_path / "two_labels")
    args = [*SMALL, "model=tiny_qwen3_rm", "model.arch=qwen2", f"model.name_or_path={tmp_path / 'two_labels'}"]
    res = run_cli("train.py", [*args, "trainer.epochs=0"])
    assert res.returncode != 0 and "has no 1-output head" in res.stderr.splitlines()[-1]


def test_training_starts_from_the_reward_head_and_lora_saves_it(rm: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    cfg = compose_train([*rm_args(rm), "lora=default", "lora.r=8", "trainer.max_steps=6", "trainer.batch_size=8"])
    built = build_model(cfg.model, cfg.lora, CPU, seed=0)
    pretrained = load_file(str(rm / "model.safetensors"))["score.weight"]
    trained_copy = [p for n, p in built.model.named_parameters() if p.requires_grad and "score" in n]
    assert len(trained_copy) == 1 and torch.equal(trained_copy[0].detach(), pretrained)  # not a fresh head
    run = tmp_path / "run"
    train(cfg, run)
    saved = load_file(str(run / "checkpoint" / "adapter" / "adapter_model.safetensors"))
    head = [v for k, v in saved.items() if "score" in k]
    assert len(head) == 1 and head[0].shape == (1, 64) and not torch.equal(head[0], pretrained)  # trained and saved
    assert np.array_equal(rescore(run, valid_rows(run)), RunDir(run).read_oof()["p_a"].to_numpy())


def test_a_reward_head_learns_a_separable_task(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 240
    words = ["river", "stone", "cloud", "paper", "green", "seven"]
    filler = [" ".join(rng.choice(words, size=rng.integers(2, 6))) for _ in range(2 * n)]
    good = [f"Certainly, {f}." for f in filler[:n]]  # the preferred answer always opens with "Certainly"
    bad = [f"No. {f}." for f in filler[n:]]
    a_wins = rng.random(n) < 0.5
    pd.DataFrame(
        {
            "id": [f"toy{i}" for i in range(n)],
            "prompt": [f"Question {i}: {' '.join(rng.choice(words, size=3))}?" for i in range(n)],
            "response_a": np.where(a_wins, good, bad),
            "response_b": np.where(a_wins, bad, good),
            "winner": np.where(a_wins, "model_a", "model_b"),
        }
    ).to_parquet(tmp_path / "toy.parquet")
    args = ["model=tiny_qwen2", "model.head=reward", "lora=none", "logger=none", "data=files"]
    args += [
        f"data.train={tmp_path / 'toy.parquet'}",
        "trainer.max_steps=60",
        "trainer.lr=1e-3",
        "trainer.batch_size=8",
    ]
    args += ["trainer.eval_every=60", "trainer.warmup_ratio=0.05"]
    run = tmp_path / "run"
    train(compose_train(args), run)
    metrics = RunDir(run).read_metrics()
    assert metrics["val/accuracy"] >= 0.95, metrics


def test_qlora_reward_run_reloads_and_merges_with_its_head(rm: Path, tmp_path: Path, monkeypatch) -> None:
    from duelist.tools.export import export_run

    monkeypatch.setenv("DUELIST_CPU_BNB", "1")
    args = [*rm_args(rm), "lora=qlora", "lora.r=8", "lora.dropout=0.0", "trainer.max_steps=4", "trainer.batch_size=8"]
    run, merged = tmp_path / "run", tmp_path / "merged"
    train(compose_train([*args, "trainer.lr=1e-3"]), run)
    rows = valid_rows(run)
    oof = RunDir(run).read_oof()["p_a"].to_numpy()
    np.testing.assert_allclose(rescore(run, rows), oof, atol=1e-6)
    export_run(run, merged)
    config = json.loads((merged / "checkpoint" / "model" / "config.json").read_text())
    assert config["num_labels"] == 1 if "num_labels" in config else len(config["id2label"]) == 1
    merged_p = rescore(merged, rows)
    # fp32 on both sides: 0.7e-6 to 1.3e-6 under every CPU kernel setting bench/qlora_kernels.py reaches; 9.5e-3 when
    # bitsandbytes scored the 4-bit layers in bf16 with bf16 scales (CPUs with AVX-512 BF16)
    assert np.abs(merged_p - oof).max() <= 1e-5
    np.testing.assert_allclose(RunDir(merged).read_oof()["p_a"].to_numpy(), merged_p, atol=1e-6)


def test_a_zero_shot_reward_model_teaches_and_stacks(zero_shot: Path, rm: Path, tmp_path: Path, tiny_run: Path) -> None:
    # as a teacher: task=pseudolabel labels pairs with its scores (the submission path, in this process, gives the
    # reference)
    from conftest import compose_infer
    from duelist.tasks.infer import infer

    infer(compose_infer([f"runs=[{zero_shot}]", f"data.test={WSDM_EXAMPLE}", f"output={tmp_path / 'ref.csv'}"]))
    reference = pd.read_parquet(tmp_path / "ref.parquet").set_index("id")["p_a"]
    args = ["task=pseudolabel", "labeling=all", f"runs=[{zero_shot}]", f"data.test={WSDM_EXAMPLE}"]
    res = run_cli("infer.py", [*args, f"output={tmp_path / 'pl.parquet'}"])
    assert res.returncode == 0, res.stderr[-2000:]
    labelled = pd.read_parquet(tmp_path / "pl.parquet").set_index("id")
    np.testing.assert_allclose(labelled["p_a_teacher0"], reference.loc[labelled.index], atol=1e-9)
    assert len(labelled) == 3
    # as a stack member beside a trained run (the TINY settings) on the same validation rows
    member = tiny_run
    assert set(RunDir(member).read_oof()["id"]) == set(RunDir(zero_shot).read_oof()["id"])
    out = tmp_path / "sub.csv"
    res = run_cli(
        "infer.py", ["ensemble=stack", f"runs=[{zero_shot},{member}]", f"data.test={WSDM_EXAMPLE}", f"output={out}"]
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(pd.read_csv(out)) == 3 and (out.with_suffix(".stacker") / "booster.txt").is_file()


def test_a_qlora_zero_shot_run_on_bf16_weights_reloads_to_its_oof(rm: Path, tmp_path: Path, monkeypatch) -> None:
    # the 4-bit path of a T4/GPU, on the CPU: the non-4-bit weights (norms, embeddings, head) must be in fp32 when the
    # run scores its validation rows, as they are when the run is reloaded
    monkeypatch.setenv("DUELIST_CPU_BNB", "1")
    run = tmp_path / "run"
    train(compose_train([*rm_args(rm), "lora=qlora", "model.dtype=bf16", "trainer.epochs=0"]), run)
    np.testing.assert_allclose(rescore(run, valid_rows(run)), RunDir(run).read_oof()["p_a"].to_numpy(), atol=1e-6)


def test_a_zero_shot_run_exports_its_base_weights(zero_shot: Path, tmp_path: Path) -> None:
    from duelist.tools.export import export_run

    assert RunDir(zero_shot).needs_base()
    merged = export_run(zero_shot, tmp_path / "merged")
    assert (merged / "checkpoint" / "model" / "model.safetensors").is_file() and not RunDir(merged).needs_base()
    rows = valid_rows(zero_shot)
    np.testing.assert_allclose(rescore(merged, rows), RunDir(zero_shot).read_oof()["p_a"].to_numpy(), atol=1e-6)


@pytest.mark.fast
def test_swap_augmentation_of_a_reward_head_is_refused() -> None:
    from duelist.models.network import NetworkKind

    with pytest.raises(DuelistError, match="same loss at twice the cost"):
        NetworkKind().check(compose_train([*TINY, "model.head=reward", "augment=swap"]))


@pytest.mark.fast
@pytest.mark.parametrize(
    "template",
    [
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}",
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if loop.last %}<think>\n\n</think>\n\n"
        "{{ m['content'].lstrip('\\n') }}{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}",
    ],
    ids=["trim", "qwen3-lstrip"],
)
def test_texts_are_written_as_the_chat_template_writes_them(rm: Path, template: str) -> None:
    tokenizer = load_tokenizer(str(rm))
    tokenizer.chat_template = template
    duo = ResponseEncoder(tokenizer, "chat", 1024, 512).encode_row("  Hi there  \n", "\n\nAn answer.\n", " b ")
    for seq, answer in ((duo.a, "\n\nAn answer.\n"), (duo.b, " b ")):
        messages = [{"role": "user", "content": "  Hi there  \n"}, {"role": "assistant", "content": answer}]
        assert tokenizer.decode(seq) == tokenizer.apply_chat_template(messages, tokenize=False)


# the assistant branch of Qwen3's chat template as it behaves (written from that behaviour for this test): an answer's
# text up to its last </think> is its reasoning; the last answer's goes into a think block of its own (empty if none),
# earlier answers keep only what follows </think>
QWEN3_THINKING = (
    "{%- for m in messages %}{%- if m['role'] == 'assistant' %}{%- set c = m['content'] %}{%- set r = '' %}"
    "{%- if '</think>' in c %}{%- set r = c.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set c = c.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{%- if loop.last %}{{- '<|im_start|>assistant\\n<think>\\n' + r.strip('\\n') + '\\n</think>\\n\\n' }}"
    "{{- c.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + c }}{%- endif %}{{- '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
)


@pytest.mark.fast
@pytest.mark.parametrize("template", ["qwen3", "verbatim"])
def test_an_answer_with_a_think_block_is_written_as_the_template_writes_it(rm: Path, template: str) -> None:
    """Qwen3's template moves the last answer's reasoning into its own think block and drops it from earlier answers;
    a template without such rules writes the text as it is. The encoder's tokens are the template's, rendered."""
    tokenizer = load_tokenizer(str(rm))
    if template == "qwen3":
        tokenizer.chat_template = QWEN3_THINKING
    enc = ResponseEncoder(tokenizer, "chat", 1024, 512)
    assert (enc.think is not None) == (template == "qwen3")
    thinking = "<think>\nFirst I check the sum.\n\n</think>\n\nIt is 4."
    one = enc.encode_row("What is 2+2?", thinking, "Four.")
    prompt = "[Turn 1]\nWhat is 2+2?\n\n[Turn 2]\nAnd 3+3?"
    two = enc.encode_row(
        prompt, f"[Turn 1]\n{thinking}\n\n[Turn 2]\n<think>Add.</think>6.", "[Turn 1]\n4\n\n[Turn 2]\n6"
    )
    for seq, messages in (
        (one.a, [("user", "What is 2+2?"), ("assistant", thinking)]),
        (one.b, [("user", "What is 2+2?"), ("assistant", "Four.")]),
        (
            two.a,
            [
                ("user", "What is 2+2?"),
                ("assistant", thinking),
                ("user", "And 3+3?"),
                ("assistant", "<think>Add.</think>6."),
            ],
        ),
    ):
        rendered = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in messages], tokenize=False)
        assert tokenizer.decode(seq) == rendered
    text = tokenizer.decode(one.a)
    if template == "qwen3":  # one think block, holding the reasoning; the earlier turn's reasoning is gone
        assert text.count("<think>") == 1 and "<think>\nFirst I check the sum.\n</think>\n\nIt is 4." in text
        assert "First I check" not in tokenizer.decode(two.a) and tokenizer.decode(two.a).count("<think>") == 1


@pytest.mark.fast
def test_a_tokenizer_without_a_pad_token_gets_a_spare_one_not_eos(rm: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(rm)  # a Llama 3.1 look: no pad, eos ends every message
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|finetune_right_pad_id|>"]})
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(str(tmp_path / "tok"))
    assert loaded.pad_token == "<|finetune_right_pad_id|>" and loaded.pad_token != loaded.eos_token
    duo = ResponseEncoder(loaded, "chat", 256, 64).encode_row("q", "a", "b")  # ends in eos: refused were eos the pad
    assert duo.a[-2] == loaded.eos_token_id


@pytest.mark.fast
def test_each_response_gets_its_own_sequence_and_multi_turn_pairs_are_turns(rm: Path) -> None:
    tokenizer = load_tokenizer(str(rm))
    enc = ResponseEncoder(tokenizer, "chat", 1024, 512)
    prompt = "[Turn 1]\nHello there\n\n[Turn 2]\nAnd a second question?"
    a = "[Turn 1]\nHi!\n\n[Turn 2]\nA second answer."
    b = "[Turn 1]\nGood day.\n\n[Turn 2]\nAnother one."
    duo = enc.encode_row(prompt, a, b)
    for seq, answers in ((duo.a, ["Hi!", "A second answer."]), (duo.b, ["Good day.", "Another one."])):
        messages = []
        for question, answer in zip(["Hello there", "And a second question?"], answers):
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        out = tokenizer.apply_chat_template(messages, tokenize=True)
        assert seq == list(out["input_ids"] if hasattr(out, "keys") else out)
    swapped = enc.encode_row(prompt, b, a)
    assert (swapped.a, swapped.b) == (duo.b, duo.a)
    # a long pair: every sequence within the budget, the prompt capped, both ends of a cut response kept
    small = ResponseEncoder(tokenizer, "chat", 96, 24, length_hint="buckets")
    long_a, short_b = "alpha " * 300 + "omega", "fine"
    duo = small.encode_row("why " * 100, long_a, short_b)
    text_a, text_b = tokenizer.decode(duo.a), tokenizer.decode(duo.b)
    assert len(duo.a) == len(duo.b) == 96 and text_a.rstrip().endswith("omega<|im_end|>")
    assert text_b.count("why") > text_a.count("why")  # the room the short answer leaves goes to the prompt
    assert "much longer than the other" in text_a and "much shorter than the other" in text_b and "fine" in text_b


@pytest.mark.parametrize("head", ["pair", "reward"])
def test_a_batch_grouped_by_length_gives_the_loss_and_gradients_of_one_padded_call(head: str) -> None:
    """Training's forward of a batch (its sequences grouped by length, one call per group within a token budget)
    against one padded call of
    the whole batch, computed here by hand: the same pair logits and the same LoRA gradients."""
    from duelist.core.batching import pad
    from duelist.models.network_training import pair_logits_of_batch, pair_losses

    cfg = compose_train([*TINY, "model=tiny_qwen2", f"model.head={head}", "lora.dropout=0.0"])
    built = build_model(cfg.model, cfg.lora, CPU, seed=0)
    model, tok = built.model.train(), built.tokenizer
    rows = load_train_valid(cfg.data)[0].iloc[:16]
    ids = head_of(cfg.model).encoder(tok, cfg.model).encode(rows, None, desc="tokenize")
    target = torch.full((16,), 0.7)

    def gradients(logits: torch.Tensor) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        pair_losses(logits, target).mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    calls: list[int] = []  # padded tokens of each forward call
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["input_ids"].numel()), with_kwargs=True
    )
    grouped, tokens = pair_logits_of_batch(model, head_of(cfg.model), ids, tok.pad_token_id, CPU, max_tokens=1024)
    hook.remove()
    assert len(calls) > 1  # the batch was read as several calls, not one
    longest = max(len(s) for s in head_of(cfg.model).sequences(ids))
    assert all(c <= 1024 or c == longest for c in calls), calls  # each within the budget (a longer one: alone)
    batch, mask = pad(head_of(cfg.model).sequences(ids), tok.pad_token_id)
    whole = head_of(cfg.model).pair_logits(model(input_ids=batch, attention_mask=mask).logits)
    assert tokens == int(mask.sum())
    torch.testing.assert_close(grouped, whole, atol=1e-5, rtol=1e-5)
    g_grouped, g_whole = gradients(grouped), gradients(whole)
    for name, g in g_whole.items():
        torch.testing.assert_close(g_grouped[name], g, atol=1e-5, rtol=1e-4)
