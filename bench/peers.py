"""duelist beside what a user would otherwise use, on the same rows, base weights, LoRA shape and schedule.

    pip install -e ".[bench]"                        # the peers: trl (with datasets and accelerate)
    python bench/peers.py                            # MiniLM and a tiny Qwen3 reward model; 2-core CPU: ~25 min
    python bench/peers.py fast=true isolate=false    # the suite's path: two steps each, tiny rows

Training (the bundled sample's split, ``data.max_rows=rows``; every arm validates on the same rows, every row scored):
- *reward head*: ``train.py model.head=reward`` against ``trl.RewardTrainer`` (LoRA through ``peft_config``; texts as a
  TRL user writes them: prompt + response, a chat model's as messages; TRL drops a pair longer than ``max_length``);
- *joint head*: ``train.py model.head=pair`` against HF ``Trainer`` + ``AutoModelForSequenceClassification`` (2 labels)
  on the public notebooks' input (``<prompt>: … <response_a>: … <response_b>: …``, cut at ``max_length``).
The peers take duelist's settings: LoRA r/alpha/dropout on every linear layer with the head trained fully, lr,
warm-up then cosine, weight decay, clipping, epochs, batch size, max length, seed; dropout on (TRL's default turns
it off; duelist trains with it) and no gradient checkpointing. A peer's validation scoring is a plain loop over every
row, each sequence cut at ``max_length``. Each arm runs in a process of its own (``isolate``), so its peak RSS is its.

Scoring (a pair-head ``score_model``, random weights, on token rows whose lengths follow the WSDM-like mix of
``python -m duelist bench``): *naive* (every row padded to max_length, batches of ``naive_batch``), the notebooks'
*sorted fixed batch* (rows sorted by length, dynamic padding; the fastest of ``batch_sizes`` here is kept) and
duelist's ``predict_p_a`` (sorted, at most ``max_batch_tokens`` padded tokens a batch; the fastest of those budgets
is kept); best of ``repeats``; p_a must agree within 1e-5. ``models=[]``: scoring only. Writes
``bench/results/peers-<machine>.json`` with device, versions and commit.
"""

from __future__ import annotations

import json
import multiprocessing
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, List, Optional

import numpy as np
import torch

from duelist.core import options
from duelist.core.errors import DuelistError, exit_cleanly_on_user_error
from duelist.core.files import resolve_path, write_json
from duelist.core.hydra_setup import compose_train
from duelist.core.logs import quiet_library_logs
from duelist.core.options import option
from duelist.data.splits import load_train_valid

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
PEERS = ("trl", "datasets", "accelerate")
TINY_RM = "tiny_qwen3_rm"  # written by the bench itself (duelist.tools.example_data), a downloaded model's layout


@dataclass
class PeersOptions:
    models: List[str] = option(["minilm", TINY_RM], "model files to train (tiny_qwen3_rm: the bench writes it)")
    heads: List[str] = option(["reward", "pair"], "reward: against trl.RewardTrainer | pair: against HF Trainer")
    rows: int = option(2400, "data.max_rows of the bundled sample: 1,922 training and 478 validation pairs at 2400")
    fast: bool = option(False, "the suite's path: rows=100, two optimizer steps an arm, a small scoring set")
    isolate: bool = option(True, "each arm in a fresh process (its own peak RSS); false: one process (tests)")
    score_model: str = option("tiny_qwen2", "the pair-head model file the three scorers read")
    score_rows: int = option(512, "token rows to score")
    score_max_length: int = option(1024, "the scoring rows' cut (tokens)")
    median_tokens: int = option(400, "median row length of the scoring mix")
    naive_batch: int = option(8, "the naive scorer's fixed batch")
    batch_sizes: List[int] = option([1, 2, 4, 8, 16], "the sorted fixed batches tried; the fastest is kept")
    max_batch_tokens: List[int] = option([1024, 2048, 4096, 8192], "duelist's token budgets tried; the fastest is kept")
    repeats: int = option(3, "scoring timings per scorer, taken in turn; the best is kept")
    work: Optional[str] = option(None, "a folder for the arms' runs, kept; null: a temporary one, removed at the end")
    out: str = option(str(ROOT / "bench" / "results" / f"peers-{platform.machine()}.json"), "JSON path")


def require_peers() -> None:
    missing = [p for p in PEERS if not _installed(p)]
    if missing:
        raise DuelistError(f'bench/peers.py needs {", ".join(missing)}: pip install -e ".[bench]"')


def _installed(package: str) -> bool:
    try:
        version(package)
    except PackageNotFoundError:
        return False
    return True


def in_own_process(fn: Callable, *args: Any, isolate: bool) -> dict:
    """``fn(*args)`` in a fresh spawned process (its peak RSS is the arm's alone) or here."""
    if not isolate:
        return fn(*args)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


# ---- the rows and settings every arm shares -------------------------------------------------------------------


def overrides(model: str, head: str, opts: PeersOptions, work: Path) -> list[str]:
    out = [f"model={model}", f"model.head={head}", f"data.max_rows={opts.rows}", "logger=none"]
    out += ["trainer.save_every=0", "trainer.resume=never"]  # the peers save no resumable states and start afresh
    if model == TINY_RM:
        out.append(f"model.name_or_path={work / TINY_RM}")
    if opts.fast:
        out.append("trainer.max_steps=2")
    return out


def model_path(cfg: Any) -> str:
    return resolve_path(str(cfg.model.name_or_path))


def figures(
    valid_p_a: np.ndarray, target: np.ndarray, pairs_kept: int, pairs_seen: int, tokens: int, seconds: float
) -> dict:
    """An arm's figures; ``target``: the validation rows' p_a (0 or 1: ties are dropped by data.ties=drop)."""
    from sklearn.metrics import accuracy_score
    from sklearn.metrics import log_loss as sk_log_loss

    from duelist.tools.footprint import peak_rss

    valid_p_a, a_won = np.asarray(valid_p_a, dtype=float), np.asarray(target) >= 0.5
    return {
        "val_accuracy": float(accuracy_score(a_won, valid_p_a >= 0.5)),
        "val_log_loss": float(sk_log_loss(a_won, np.clip(valid_p_a, 1e-15, 1 - 1e-15), labels=[False, True])),
        "val_rows_scored": int(np.isfinite(valid_p_a).sum()),
        "train_pairs_kept": int(pairs_kept),
        "train_pairs_seen": int(pairs_seen),
        "train_tokens": int(tokens),
        "train_seconds": float(seconds),
        "train_pairs_per_s": pairs_seen / seconds,
        "train_tokens_per_s": tokens / seconds,
        "peak_rss_gb": peak_rss() / 1e9,  # VmHWM: this process's own, not a parent's before the spawn
    }


# ---- duelist -------------------------------------------------------------------------------------------------------


def duelist_arm(model: str, head: str, opts: PeersOptions, work: Path) -> dict:
    import pandas as pd

    from duelist.tasks.train import train

    quiet_library_logs()
    cfg = compose_train(overrides(model, head, opts, work))
    run = work / "runs" / f"duelist-{model}-{head}"
    train(cfg, run)
    m = json.loads((run / "metrics.json").read_text())
    oof = pd.read_parquet(run / "oof.parquet")  # the validation rows, scored by the best (= last) checkpoint
    pairs_seen = int(m["best_step"]) * int(cfg.trainer.batch_size) * int(cfg.trainer.grad_accum)
    return figures(oof["p_a"], oof["target"], m["train/rows"], pairs_seen, m["train/tokens"], m["train/seconds"])


# ---- the peers -----------------------------------------------------------------------------------------------------


class CountingCollator:
    """A peer's data collator that also counts the real (unmasked) tokens it hands to training."""

    def __init__(self, inner: Callable):
        self.inner, self.tokens = inner, 0

    def __call__(self, examples: list) -> dict:
        out = self.inner(examples)
        self.tokens += int(out["attention_mask"].sum())
        return out


def peer_args(cfg: Any, out_dir: Path, opts: PeersOptions) -> dict:
    """duelist's schedule as Hugging Face TrainingArguments keywords."""
    t = cfg.trainer
    steps = {"max_steps": int(t.max_steps)} if int(t.max_steps) > 0 else {"num_train_epochs": float(t.epochs)}
    return dict(
        output_dir=str(out_dir),
        per_device_train_batch_size=int(t.batch_size),
        gradient_accumulation_steps=int(t.grad_accum),
        learning_rate=float(t.lr),
        lr_scheduler_type="cosine",
        warmup_steps=float(t.warmup_ratio),  # a float below 1: a share of the steps (transformers 5)
        weight_decay=float(t.weight_decay),
        max_grad_norm=float(t.max_grad_norm),
        seed=int(t.seed),
        gradient_checkpointing=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **steps,
    )


def lora_config(cfg: Any):
    from peft import LoraConfig

    lo = cfg.lora
    targets = lo.target_modules if isinstance(lo.target_modules, str) else list(lo.target_modules)
    return LoraConfig(
        task_type="SEQ_CLS",
        r=int(lo.r),
        lora_alpha=int(lo.alpha),
        lora_dropout=float(lo.dropout),
        target_modules=targets,
    )


def pairs_seen(trainer: Any, cfg: Any) -> int:
    return int(trainer.state.global_step) * int(cfg.trainer.batch_size) * int(cfg.trainer.grad_accum)


@torch.no_grad()
def scores(model: Any, seqs: list[list[int]], pad_id: int, batch: int) -> torch.Tensor:
    """A peer's plain scoring loop: sorted by length, dynamic right padding, logits in input order."""
    from duelist.core.batching import pad

    model.eval()
    order = np.argsort([-len(s) for s in seqs], kind="stable")
    out = [None] * len(seqs)
    for i in range(0, len(order), batch):
        idx = order[i : i + batch]
        ids, mask = pad([seqs[j] for j in idx], pad_id)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        for j, row in zip(idx, logits):
            out[j] = row
    return torch.stack(out).double()


def reward_texts(tok: Any, chat: bool, prompt: str, response: str) -> Any:
    if chat:
        return [{"role": "user", "content": prompt}], [{"role": "assistant", "content": response}]
    return prompt + "\n\n", response


def trl_tokens(tok: Any, chat: bool, prompt: str, response: str, max_length: int) -> list[int]:
    """A validation sequence as TRL tokenizes a training one (prompt + response, an eos), cut at ``max_length``."""
    p, r = reward_texts(tok, chat, prompt, response)
    if chat:
        ids = tok.apply_chat_template(p + r, tokenize=True, return_dict=True)["input_ids"]
    else:
        ids = tok(p + r + tok.eos_token)["input_ids"]
    return list(ids)[:max_length]


def trl_arm(model_name: str, opts: PeersOptions, work: Path) -> dict:
    import datasets
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    quiet_library_logs()
    cfg = compose_train(overrides(model_name, "reward", opts, work))
    train_rows, valid = load_train_valid(cfg.data)
    path, chat = model_path(cfg), cfg.model.template == "chat"
    tok = AutoTokenizer.from_pretrained(path)
    eos = None if tok.eos_token else tok.sep_token  # BERT has no eos: its [SEP] ends a sequence
    if eos:
        tok.eos_token = eos
    torch.manual_seed(int(cfg.trainer.seed))
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, ignore_mismatched_sizes=True)
    a_wins = train_rows["p_a"].to_numpy() >= 0.5
    chosen = np.where(a_wins, train_rows["response_a"], train_rows["response_b"])
    rejected = np.where(a_wins, train_rows["response_b"], train_rows["response_a"])
    columns: dict[str, list] = {"prompt": [], "chosen": [], "rejected": []}
    for p, c, r in zip(train_rows["prompt"], chosen, rejected):
        prompt, c_text = reward_texts(tok, chat, p, c)
        columns["prompt"].append(prompt)
        columns["chosen"].append(c_text)
        columns["rejected"].append(reward_texts(tok, chat, p, r)[1])
    max_length = int(cfg.model.max_length)
    args = RewardConfig(
        **peer_args(cfg, work / "trl", opts),
        max_length=max_length,
        disable_dropout=False,
        eos_token=eos,
        dataset_num_proc=None,
    )
    collator = CountingCollator(DataCollatorForPreference(pad_token_id=tok.pad_token_id))
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_dict(columns),
        processing_class=tok,
        peft_config=lora_config(cfg),
        data_collator=collator,
    )
    kept = len(trainer.train_dataset)
    seconds = trainer.train().metrics["train_runtime"]
    seqs = []
    for p, a, b in zip(valid["prompt"], valid["response_a"], valid["response_b"]):
        seqs += [trl_tokens(tok, chat, p, a, max_length), trl_tokens(tok, chat, p, b, max_length)]
    rewards = scores(trainer.model, seqs, tok.pad_token_id, int(cfg.trainer.eval_batch_size)).reshape(-1, 2)
    p_a = torch.sigmoid(rewards[:, 0] - rewards[:, 1]).numpy()
    return figures(p_a, valid["p_a"], kept, pairs_seen(trainer, cfg), collator.tokens, seconds)


def notebook_text(prompt: str, a: str, b: str) -> str:
    """The LMSYS/WSDM public notebooks' joint input."""
    return f"<prompt>: {prompt}\n\n<response_a>: {a}\n\n<response_b>: {b}"


def trainer_arm(model_name: str, opts: PeersOptions, work: Path) -> dict:
    import datasets
    from peft import get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    quiet_library_logs()
    cfg = compose_train(overrides(model_name, "pair", opts, work))
    train_rows, valid = load_train_valid(cfg.data)
    path, max_length = model_path(cfg), int(cfg.model.max_length)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(int(cfg.trainer.seed))
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, ignore_mismatched_sizes=True)
    model.config.pad_token_id = tok.pad_token_id
    model = get_peft_model(model, lora_config(cfg))

    def encode(rows) -> list[list[int]]:
        texts = [notebook_text(p, a, b) for p, a, b in zip(rows["prompt"], rows["response_a"], rows["response_b"])]
        return tok(texts, truncation=True, max_length=max_length)["input_ids"]

    ids = encode(train_rows)
    labels = (train_rows["p_a"].to_numpy() < 0.5).astype(int).tolist()  # label 0: A wins
    dataset = datasets.Dataset.from_dict(
        {"input_ids": ids, "attention_mask": [[1] * len(s) for s in ids], "labels": labels}
    )
    collator = CountingCollator(DataCollatorWithPadding(tok))
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**peer_args(cfg, work / "hf", opts)),
        train_dataset=dataset,
        data_collator=collator,
    )
    seconds = trainer.train().metrics["train_runtime"]
    logits = scores(trainer.model, encode(valid), tok.pad_token_id, int(cfg.trainer.eval_batch_size))
    p_a = torch.softmax(logits, dim=-1)[:, 0].numpy()
    return figures(p_a, valid["p_a"], len(train_rows), pairs_seen(trainer, cfg), collator.tokens, seconds)


# ---- scoring -------------------------------------------------------------------------------------------------------


def best_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = np.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


@torch.no_grad()
def naive_scores(model: Any, rows: list[list[int]], pad_id: int, batch: int, width: int) -> np.ndarray:
    """Every row padded to ``width``, a fixed batch, input order: the plainest loop."""
    out = []
    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        ids = torch.full((len(part), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, s in enumerate(part):
            ids[j, : len(s)], mask[j, : len(s)] = torch.as_tensor(s), 1
        out.append(model(input_ids=ids, attention_mask=mask).logits.double())
    return torch.softmax(torch.cat(out), dim=-1)[:, 0].numpy()


def scoring(opts: PeersOptions) -> dict:
    from omegaconf import OmegaConf

    from duelist.models.heads import PairHead
    from duelist.models.network_build import build_model
    from duelist.models.network_scoring import predict_p_a
    from duelist.tools.bench import compose_network, synthetic_lengths, synthetic_rows

    cfg = compose_network(opts.score_model, "default")
    OmegaConf.update(cfg, "model.max_length", opts.score_max_length)
    built = build_model(cfg.model, cfg.lora, CPU, seed=0)
    model, pad_id = built.model.eval(), built.tokenizer.pad_token_id
    lengths = synthetic_lengths(opts.score_rows, opts.score_max_length, median=opts.median_tokens)
    rows = synthetic_rows(lengths, int(built.model.config.vocab_size))
    tokens = int(lengths.sum())
    naive_rows = rows[: min(len(rows), 4 * opts.naive_batch)]  # padded to max_length: a sample is enough for its rate

    def entry(seconds: float, n: int, n_tokens: int, **extra) -> dict:
        return {"rows_per_s": n / seconds, "tokens_per_s": n_tokens / seconds, **extra}

    scorers: dict[tuple[str, int], Callable[[], np.ndarray]] = {
        ("naive", opts.naive_batch): lambda: naive_scores(
            model, naive_rows, pad_id, opts.naive_batch, opts.score_max_length
        )
    }
    for b in opts.batch_sizes:
        scorers["sorted", b] = lambda b=b: torch.softmax(scores(model, rows, pad_id, b), -1)[:, 0].numpy()
    for budget in opts.max_batch_tokens:
        scorers["duelist", budget] = lambda budget=budget: predict_p_a(
            model, PairHead(), rows, pad_id, 10**6, CPU, max_tokens=budget, quiet=True
        )
    timed = {key: (np.inf, None) for key in scorers}
    for _ in range(opts.repeats):  # round robin: drift in the machine's speed hits every scorer alike
        for key, fn in scorers.items():
            seconds, p = best_seconds(fn, 1)
            timed[key] = (min(timed[key][0], seconds), p)
    ((s, naive),) = [v for k, v in timed.items() if k[0] == "naive"]
    out = {"naive": entry(s, len(naive_rows), int(lengths[: len(naive_rows)].sum()), batch=opts.naive_batch)}
    for name, setting, by in (
        ("sorted", "batch", "rows_per_s_by_batch"),
        ("duelist", "max_batch_tokens", "rows_per_s_by_budget"),
    ):
        mine = {k[1]: v for k, v in timed.items() if k[0] == name}
        fastest = min(mine, key=lambda k: mine[k][0])
        rates = {str(k): len(rows) / v[0] for k, v in mine.items()}
        out["sorted_fixed_batch" if name == "sorted" else name] = entry(
            mine[fastest][0], len(rows), tokens, **{setting: fastest, by: rates}
        )
    p_duelist = timed["duelist", out["duelist"]["max_batch_tokens"]][1]
    out["max_abs_p_a_difference"] = {
        "naive": float(np.abs(naive - p_duelist[: len(naive_rows)]).max()),
        "sorted_fixed_batch": float(
            max(np.abs(p - p_duelist).max() for k, (_, p) in timed.items() if k[0] == "sorted")
        ),
        "duelist_budgets": float(max(np.abs(p - p_duelist).max() for k, (_, p) in timed.items() if k[0] == "duelist")),
    }
    out["duelist_over_sorted_fixed_batch_rows_per_s"] = (
        out["duelist"]["rows_per_s"] / out["sorted_fixed_batch"]["rows_per_s"]
    )
    out["duelist_over_naive_rows_per_s"] = out["duelist"]["rows_per_s"] / out["naive"]["rows_per_s"]
    out["settings"] = {
        "model": opts.score_model,
        "rows": len(rows),
        "naive_rows": len(naive_rows),
        "max_length": opts.score_max_length,
        "median_tokens": opts.median_tokens,
        "mean_tokens": float(lengths.mean()),
    }
    return out


# ---- the run -------------------------------------------------------------------------------------------------------

RATIO_KEYS = ("val_accuracy", "train_pairs_per_s", "train_tokens_per_s", "peak_rss_gb")


def compare(duelist: dict, peer: dict) -> dict:
    out = {k: duelist[k] / peer[k] for k in RATIO_KEYS if peer[k]}
    out["val_log_loss_difference"] = duelist["val_log_loss"] - peer["val_log_loss"]
    return out


def run(opts: PeersOptions) -> dict:
    require_peers()
    if opts.fast:
        opts.rows, opts.score_rows, opts.batch_sizes, opts.repeats = 100, 24, [2, 4], 1
        opts.score_max_length, opts.median_tokens = 128, 64
    if opts.work:
        return run_in(Path(opts.work), opts)
    with tempfile.TemporaryDirectory(prefix="duelist-peers-") as work:
        return run_in(Path(work), opts)


def run_in(work: Path, opts: PeersOptions) -> dict:
    from duelist.tools.bench import device_name
    from duelist.tools.example_data import write_tiny_reward_model

    if TINY_RM in opts.models:
        write_tiny_reward_model(work / TINY_RM)
    peer_of = {"reward": ("trl.RewardTrainer", trl_arm), "pair": ("transformers.Trainer", trainer_arm)}
    training = {}
    for model in opts.models:
        for head in opts.heads:
            name, peer_fn = peer_of[head]
            print(f"{model} {head}: duelist, then {name}", flush=True)
            ours = in_own_process(duelist_arm, model, head, opts, work, isolate=opts.isolate)
            theirs = in_own_process(peer_fn, model, opts, work, isolate=opts.isolate)
            training[f"{model}/{head}"] = {"peer": name, "duelist": ours, name: theirs, "ratio": compare(ours, theirs)}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    return {
        "what": "duelist vs TRL RewardTrainer / HF Trainer on the same rows and schedule; three scorers on one mix",
        "device": device_name(CPU),
        "threads": torch.get_num_threads(),
        "versions": {p: version(p) for p in ("torch", "transformers", "peft", *PEERS)}
        | {"python": sys.version.split()[0]},
        "commit": commit.strip(),
        "settings": {"rows": opts.rows, "fast": opts.fast, "isolated_processes": opts.isolate},
        "training": training,
        "scoring": scoring(opts),
    }


def print_table(report: dict) -> None:
    for key, t in report["training"].items():
        for who in ("duelist", t["peer"]):
            f = t[who]
            print(
                f"{key:22s} {who:20s} acc {f['val_accuracy']:.4f} ll {f['val_log_loss']:.4f} "
                f"kept {f['train_pairs_kept']:5d} pairs/s {f['train_pairs_per_s']:6.2f} "
                f"tok/s {f['train_tokens_per_s']:8,.0f} rss {f['peak_rss_gb']:.2f} GB"
            )
        print(f"{key:22s} duelist / peer: " + ", ".join(f"{k} {v:.3f}" for k, v in t["ratio"].items()))
    s = report["scoring"]
    for name in ("naive", "sorted_fixed_batch", "duelist"):
        print(f"scoring {name:19s} {s[name]['rows_per_s']:8.1f} rows/s {s[name]['tokens_per_s']:10,.0f} tok/s")
    print(f"scoring duelist / sorted fixed batch: {s['duelist_over_sorted_fixed_batch_rows_per_s']:.2f}x rows/s")


@exit_cleanly_on_user_error
def main(argv: list[str] | None = None) -> None:
    quiet_library_logs()
    opts = options.parse(PeersOptions, argv, "python bench/peers.py", __doc__.split("\n\n")[0])
    report = run(opts)
    write_json(Path(opts.out), report)
    print_table(report)
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
