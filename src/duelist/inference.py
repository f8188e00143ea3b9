"""Score test pairs with one or more trained runs and write the Kaggle submission.

``python infer.py runs=[RUN_DIR,...] data.test=test.parquet output=submission.csv [tta=swap]``
writes ``submission.csv`` (``id,winner``: every test id once, in input order) and, next to it,
``submission.parquet`` with ``p_a`` per run and combined, and ``submission.ensemble.json`` with the
weights used (``ensemble=mean``: equal; ``weighted``/``two_model``: tuned on the runs' OOF rows).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from duelist.batching import pad, sorted_batches
from duelist import ensemble
from duelist.data import load_test, swap_pairs
from duelist.errors import DuelistError
from duelist.files import write_csv, write_json, write_parquet
from duelist.formatting import PairEncoder
from duelist.metrics import predicted_winner
from duelist.modeling import load_checkpoint, pick_device
from duelist.runs import best_run

log = logging.getLogger(__name__)

TTA = ("none", "swap")
clock: Callable[[], float] = time.monotonic  # the time budget's clock (tests replace it with a fake one)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype for the forward pass: bf16 on GPUs that have it, else fp16; none on CPU."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class Deadline:
    """A time budget that learns the throughput as work is done and says whether the next batch fits.

    A batch of T padded tokens is predicted to take T x (seconds per padded token so far) and is started
    only if that fits in what is left; the very first batch runs if any time is left (there is nothing
    to estimate from yet). ``share(k)`` gives one of k remaining pieces of work an equal part of the time
    left; it starts from the throughput measured so far and reports its own back.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic, parent: "Deadline | None" = None):
        self.clock = clock
        self.end = clock() + seconds
        self.parent = parent
        self.tokens = parent.tokens if parent else 0
        self.busy = parent.busy if parent else 0.0

    def remaining(self) -> float:
        return self.end - self.clock()

    def fits(self, tokens: int) -> bool:
        if self.tokens == 0:
            return self.remaining() > 0
        return tokens * self.busy / self.tokens <= self.remaining()

    def record(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.busy += seconds
        if self.parent is not None:
            self.parent.record(tokens, seconds)

    def share(self, parts: int) -> "Deadline":
        return Deadline(max(0.0, self.remaining()) / max(1, parts), self.clock, parent=self)


@torch.no_grad()
def predict_p_a(
    model: torch.nn.Module, seqs: Sequence[Sequence[int]], pad_id: int, batch_size: int, device: torch.device,
    amp: torch.dtype | None = None, desc: str = "predict", max_tokens: int | None = None, deadline: Deadline | None = None,
) -> np.ndarray:
    """P(A wins) for each sequence, in input order; batches are sorted by length to cut padding and
    hold at most ``batch_size`` rows and (when given) ``max_tokens`` padded tokens. With a ``deadline``,
    a batch predicted not to fit is not started: its rows stay NaN."""
    was_training = model.training
    model.eval()
    out = np.full(len(seqs), np.nan, dtype=np.float64)
    tokens = 0
    start = time.perf_counter()
    with tqdm(total=len(seqs), desc=desc, unit="rows", leave=False) as bar:
        for idx in sorted_batches([len(s) for s in seqs], batch_size, max_tokens):
            ids, mask = pad([seqs[i] for i in idx], pad_id)
            if deadline is not None and not deadline.fits(ids.numel()):
                log.warning("%s: time budget reached, %d rows left unscored", desc, int(np.isnan(out).sum()))
                break
            began = deadline.clock() if deadline is not None else 0.0
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            out[idx] = torch.softmax(logits.float(), dim=-1)[:, 0].cpu().numpy()
            if deadline is not None:
                deadline.record(ids.numel(), deadline.clock() - began)
            tokens += int(mask.sum())
            bar.update(len(idx))
            bar.set_postfix(tok_s=f"{tokens / max(time.perf_counter() - start, 1e-9):.0f}")
    model.train(was_training)
    return out


def _check_runs(runs: Sequence[str]) -> list[Path]:
    if not runs:
        raise DuelistError("runs is empty: give the run dirs to ensemble, e.g. runs=[outputs/2025-01-01/12-00-00]")
    dirs = []
    for run in runs:
        path = Path(run)
        if not (path / "checkpoint" / "config.yaml").is_file():
            raise DuelistError(f"{run}: not a finished run dir (no checkpoint/config.yaml); pass the Hydra run dir of a train.py run")
        dirs.append(path)
    return dirs


def score_run(run_dir: Path, test: pd.DataFrame, cfg: Any, device: torch.device, cache_dir: str | None, tta: str | None = None,
              deadline: Deadline | None = None) -> np.ndarray:
    """P(A wins) of one run for every test row (``tta``: none | swap, default ``cfg.tta``).

    With a ``deadline``: every row is scored once first; the time left then goes to swap-TTA for the
    least confident rows first, in chunks; rows the budget did not reach keep NaN (first pass) or their
    single score (TTA)."""
    tta = cfg.tta if tta is None else tta
    built, run_cfg = load_checkpoint(run_dir, device, quantization=cfg.quantization, device_map=cfg.device_map)
    encoder = PairEncoder(built.tokenizer, run_cfg.model.template, run_cfg.model.max_length, run_cfg.model.prompt_max_tokens)
    amp = autocast_dtype(cfg.precision, device)
    pad_id = built.tokenizer.pad_token_id

    def predict(seqs: Sequence[Sequence[int]], desc: str) -> np.ndarray:
        return predict_p_a(built.model, seqs, pad_id, cfg.batch_size, device, amp, desc, cfg.max_batch_tokens, deadline)

    p_a = predict(encoder.encode(test, cache_dir), f"{run_dir.name}")
    if tta == "swap":
        swapped_ids = encoder.encode(swap_pairs(test), cache_dir)
        swapped = np.full(len(test), np.nan)
        if deadline is None:
            swapped = predict(swapped_ids, f"{run_dir.name} swap")
        else:
            scored = np.flatnonzero(~np.isnan(p_a))
            order = scored[np.argsort(np.abs(p_a[scored] - 0.5), kind="stable")]  # least confident first
            chunk = max(4 * cfg.batch_size, 64)
            for start in range(0, len(order), chunk):
                rows = order[start : start + chunk]
                swapped[rows] = predict([swapped_ids[i] for i in rows], f"{run_dir.name} swap")
                if np.isnan(swapped[rows]).any():
                    break
            log.info("%s: swap-TTA on %d of %d rows within the time budget", run_dir.name, int((~np.isnan(swapped)).sum()), len(test))
        p_a = np.where(np.isnan(swapped), p_a, (p_a + (1.0 - swapped)) / 2.0)
    return p_a


def score_run_vllm(run_dir: Path, test: pd.DataFrame, cfg: Any, tta: str) -> np.ndarray:
    """vLLM pooling runner (``LLM(..., runner="pooling").classify``) over a merged checkpoint; the same
    token ids as the HF path (our formatting), vLLM schedules the batches itself."""
    from omegaconf import OmegaConf

    ckpt = run_dir / "checkpoint"
    if not (ckpt / "model").is_dir():
        raise DuelistError(f"{run_dir}: backend=vllm needs full weights (checkpoint/model/); merge the adapters first: python -m duelist.export {run_dir} --out MERGED")
    try:
        from vllm import LLM, TokensPrompt
    except ImportError as err:
        raise DuelistError("backend=vllm needs vLLM: pip install 'duelist[vllm]' (Linux + CUDA GPU), or use backend=hf") from err
    if not torch.cuda.is_available():
        raise DuelistError("backend=vllm needs a CUDA GPU; on this machine use backend=hf")
    run_cfg = OmegaConf.load(ckpt / "config.yaml")
    from duelist.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(ckpt / "tokenizer"), what="tokenizer")
    encoder = PairEncoder(tokenizer, run_cfg.model.template, run_cfg.model.max_length, run_cfg.model.prompt_max_tokens)
    llm = LLM(model=str(ckpt / "model"), tokenizer=str(ckpt / "tokenizer"), runner="pooling", max_model_len=run_cfg.model.max_length + 8,
              dtype="auto" if cfg.precision == "auto" else {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[cfg.precision])

    def classify(rows: pd.DataFrame) -> np.ndarray:
        ids = encoder.encode(rows, cfg.cache_dir)
        outputs = llm.classify([TokensPrompt(prompt_token_ids=list(i)) for i in ids], use_tqdm=True)
        return np.array([o.outputs.probs[0] for o in outputs], dtype=np.float64)

    p_a = classify(test)
    if tta == "swap":
        p_a = (p_a + (1.0 - classify(swap_pairs(test)))) / 2.0
    return p_a


def split_by_length(lengths: Sequence[int], parts: int) -> list[np.ndarray]:
    """Row indices for ``parts`` workers: rows sorted by length and dealt round-robin, so every worker gets
    the same mix of long and short rows and they finish together. Every row is in exactly one part."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [np.sort(order[k::parts]) for k in range(parts)]


def _score_share(run_dir: str, rows: pd.DataFrame, cfg_dict: dict, device: str, cache_dir: str | None, seconds: float | None) -> np.ndarray:
    """One worker process of data-parallel scoring (module level: it is started with ``spawn``)."""
    from omegaconf import OmegaConf

    deadline = Deadline(seconds) if seconds is not None else None
    return score_run(Path(run_dir), rows, OmegaConf.create(cfg_dict), torch.device(device), cache_dir, deadline=deadline)


def score_run_parallel(run_dir: Path, test: pd.DataFrame, cfg: Any, devices: Sequence[str], deadline: Deadline | None) -> np.ndarray:
    """``score_run`` with one process per device (e.g. Kaggle's two T4s), rows split by :func:`split_by_length`."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from omegaconf import OmegaConf

    lengths = (test["prompt"].str.len() + test["response_a"].str.len() + test["response_b"].str.len()).to_numpy()  # characters: a proxy for tokens, before any tokenizer is loaded
    parts = split_by_length(lengths, len(devices))
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    seconds = deadline.remaining() if deadline is not None else None
    out = np.full(len(test), np.nan)
    with ProcessPoolExecutor(len(devices), mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(_score_share, str(run_dir), test.iloc[idx].reset_index(drop=True), cfg_dict, dev, cfg.cache_dir, seconds)
                for idx, dev in zip(parts, devices)]
        for idx, job in zip(parts, jobs):
            out[idx] = job.result()
    return out


def fill_unscored(members: np.ndarray, test: pd.DataFrame) -> tuple[np.ndarray, int]:
    """Members' NaN (not reached in the time budget) take the mean of the row's other members; rows no member
    scored get the longer-answer rule (p_a 0.55 / 0.45, 0.5 for equal lengths). Returns the filled matrix and that row count."""
    members = members.copy()
    row_mean = np.nanmean(np.where(np.isnan(members).all(axis=1, keepdims=True), 0.5, members), axis=1)
    missing = np.isnan(members)
    members[missing] = np.broadcast_to(row_mean[:, None], members.shape)[missing]
    none = missing.all(axis=1)
    if none.any():
        len_a, len_b = test["response_a"].str.len().to_numpy(), test["response_b"].str.len().to_numpy()
        rule = np.where(len_a > len_b, 0.55, np.where(len_a < len_b, 0.45, 0.5))
        members[none] = rule[none, None]
    return members, int(none.sum())


def pick_runs(cfg: Any, members: list[str] | None = None, what: str = "ensemble.members") -> list[Path]:
    """Explicit ``runs=[...]``, else the best finished run of each model named in ``members``
    (default ``ensemble.members``; ``pseudolabel.teachers`` for task=pseudolabel)."""
    if cfg.runs:
        return _check_runs(cfg.runs)
    members = list(cfg.ensemble.members) if members is None else members
    if not members:
        raise DuelistError(f"no runs: pass runs=[RUN_DIR,...] or name model families in {what} (e.g. ensemble=two_model)")
    picked = [best_run(m, cfg.ensemble.roots, cfg.ensemble.select_by) for m in members]
    for model, run in zip(members, picked):
        log.info("%s %s: best run by %s is %s", what, model, cfg.ensemble.select_by, run)
    return _check_runs(picked)


def ensemble_weights(cfg: Any, runs: list[Path]) -> dict[str, Any]:
    ens = cfg.ensemble
    if ens.weights == "equal" or len(runs) == 1:
        return {"runs": [str(r) for r in runs], "combine": ens.combine, "weights": ensemble.equal_weights(len(runs))}
    if ens.weights != "oof":
        raise DuelistError(f"ensemble.weights={ens.weights!r}: use equal or oof")
    report = ensemble.fit(runs, ens.combine, ens.grid_step, ens.per_language, ens.min_language_rows)
    acc, loss = report["oof/accuracy"], report["oof/log_loss"]
    print(f"ensemble weights (tuned on {report['shared_oof_rows']} shared OOF rows, {ens.combine}): {report['weights']}")
    for name in acc:
        print(f"  OOF {name:>9}: accuracy {acc[name]:.4f}  log loss {loss[name]:.4f}")
    return report


TASKS = ("submit", "pseudolabel", "generate")


def infer(cfg: Any) -> pd.DataFrame:
    """``cfg.task``: submit (score, ensemble, write the submission), pseudolabel or generate."""
    if cfg.task == "pseudolabel":
        from duelist.pseudolabel import pseudolabel

        return pseudolabel(cfg)
    if cfg.task == "generate":
        from duelist.generation import generate

        return generate(cfg)
    if cfg.task != "submit":
        raise DuelistError(f"task={cfg.task!r}: use {', '.join(TASKS)}")
    return submit(cfg)


def submit(cfg: Any) -> pd.DataFrame:
    """Score ``cfg.data.test`` with the chosen runs, combine them as configured and write the submission."""
    if cfg.tta not in TTA:
        raise DuelistError(f"tta={cfg.tta!r}: use none or swap")
    if cfg.backend not in ("hf", "vllm"):
        raise DuelistError(f"backend={cfg.backend!r}: use hf or vllm")
    if cfg.backend == "vllm" and cfg.time_budget_min is not None:
        raise DuelistError("backend=vllm does not follow time_budget_min (vLLM schedules its own batches); use backend=hf with a time budget")
    output = Path(cfg.output)
    if output.suffix.lower() != ".csv":
        raise DuelistError(f"output={cfg.output}: the submission must be a .csv file")
    started = clock()
    deadline = None
    if cfg.time_budget_min is not None:
        if cfg.time_budget_min <= 0:
            raise DuelistError(f"time_budget_min={cfg.time_budget_min}: must be > 0 minutes (null = no budget)")
        budget_s = 60.0 * cfg.time_budget_min
        deadline = Deadline(budget_s - min(30.0, 0.02 * budget_s), clock)  # a reserve for writing the outputs
    runs = pick_runs(cfg)
    test = load_test(cfg.data.test, cfg.data.on_bad_rows)
    report = ensemble_weights(cfg, runs)
    device = pick_device(cfg.device)
    for name in cfg.devices:
        pick_device(name.split(":")[0])  # cuda:1 without a GPU fails here, with one line
    log.info("scoring %d test rows with %d run(s) on %s, tta=%s", len(test), len(runs), device, cfg.tta)
    probs = pd.DataFrame({"id": test["id"]})
    devices = list(cfg.devices)
    if len(devices) > 1:
        log.info("data parallel over %s: rows dealt by length so the processes finish together", ", ".join(devices))
    for i, run in enumerate(runs):  # with a budget each run gets an equal share of the time still left
        share = deadline.share(len(runs) - i) if deadline else None
        if cfg.backend == "vllm":
            probs[f"p_a_run{i}"] = score_run_vllm(run, test, cfg, cfg.tta)
        elif len(devices) > 1:
            probs[f"p_a_run{i}"] = score_run_parallel(run, test, cfg, devices, share)
        else:
            probs[f"p_a_run{i}"] = score_run(run, test, cfg, device, cfg.cache_dir, deadline=share)
    members = probs[[f"p_a_run{i}" for i in range(len(runs))]].to_numpy()
    if deadline is not None:
        report["time_budget"] = {"minutes": cfg.time_budget_min, "used_s": clock() - started,
                                 "rows_scored_per_run": [int(n) for n in (~np.isnan(members)).sum(axis=0)]}
        members, unscored = fill_unscored(members, test)
        report["time_budget"]["rows_without_a_model_score"] = unscored
        if unscored:
            log.warning("time budget: %d rows got no model score; they use the longer-answer rule", unscored)
    probs["p_a"] = ensemble.apply(members, test["language"].to_numpy(), report["weights"], report["combine"])
    submission = pd.DataFrame({"id": test["id"], "winner": predicted_winner(probs["p_a"].to_numpy())})
    write_json(output.with_suffix(".ensemble.json"), {**report, "tta": cfg.tta})
    write_parquet(output.with_suffix(".parquet"), probs)
    write_csv(output, submission)
    log.info("wrote %s (%d rows), %s and %s", output, len(submission), output.with_suffix(".parquet"), output.with_suffix(".ensemble.json"))
    print(f"submission: {output} ({len(submission)} rows; model_a {float((submission['winner'] == 'model_a').mean()):.3f})")
    return submission
