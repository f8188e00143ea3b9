"""Scoring rows with trained runs: the one prediction path that training, the benchmark,
pseudo-labelling and the submission all use.

- :func:`predict_p_a`: P(A wins) for token sequences, batches sorted by length under a row and a
  token budget, order restored;
- :class:`Deadline`: a time budget that learns the throughput and never starts a batch that would overrun;
- :func:`score_run`: one run dir over a table of pairs (HF backend, optional swap-TTA within the deadline);
  :func:`score_run_vllm` (vLLM pooling runner on merged weights) and :func:`score_run_parallel` (one
  process per device, rows dealt by length);
- :func:`pick_runs`: the run dirs to score (``runs=[...]`` or the registry's best of each named model).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from duelist.batching import pad, sorted_batches
from duelist.config import Precision, precision
from duelist.data import swap_pairs
from duelist.ensemble import least_confident_first
from duelist.errors import DuelistError
from duelist.feature_model import FeatureModel
from duelist.formatting import PairEncoder
from duelist.modeling import half_weights, load_checkpoint, load_tokenizer, torch_dtype, vllm_dtype
from duelist.rundir import RunDir
from duelist.runs import best_models, best_run

log = logging.getLogger(__name__)


def autocast_dtype(name: Any, device: torch.device, half: torch.dtype | None = None) -> torch.dtype | None:
    """Mixed-precision dtype of the forward pass (None: no autocast). An explicit bf16 / fp16 is honoured on every
    device (CPU autocast has both: that is how CI runs the half-precision paths); fp32 is none. ``auto``: bf16 on
    GPUs that have it, else fp16; on a CPU, ``half`` (the dtype of a bf16/fp16 base, see
    :func:`~duelist.modeling.half_weights`: its fp32 adapters and head need autocast to meet it), else none."""
    if precision(name) == Precision.auto and device.type != "cuda":
        return half
    dtype = torch_dtype(name, device)
    return None if dtype == torch.float32 else dtype


class Deadline:
    """A time budget that learns the throughput as work is done and says whether the next batch fits.

    A batch of T padded tokens is predicted to take T x (seconds per padded token so far) and is started
    only if that fits in what is left; the very first batch runs if any time is left (there is nothing
    to estimate from yet). ``share(k)`` gives one of k remaining pieces of work an equal part of the time
    left; it starts from the throughput measured so far and reports its own back.
    """

    def __init__(
        self,
        seconds: float,
        clock: Callable[[], float] = time.monotonic,
        parent: "Deadline | None" = None,
        fresh: bool = False,
    ):
        self.clock = clock
        self.end = clock() + seconds
        self.parent = parent
        inherit = parent is not None and not fresh  # fresh: another model, whose throughput is measured anew
        self.tokens = parent.tokens if inherit else 0
        self.busy = parent.busy if inherit else 0.0

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

    def share(self, parts: int, fresh: bool = False) -> "Deadline":
        return Deadline(max(0.0, self.remaining()) / max(1, parts), self.clock, parent=self, fresh=fresh)


@torch.no_grad()
def predict_p_a(
    model: torch.nn.Module,
    seqs: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int,
    device: torch.device,
    amp: torch.dtype | None = None,
    desc: str = "predict",
    max_tokens: int | None = None,
    deadline: Deadline | None = None,
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
    return [RunDir(run).require_checkpoint().path for run in runs]


def _least_confident_chunks(
    predict: Callable[[list, str], np.ndarray], ids: Sequence[Sequence[int]], order: np.ndarray, chunk: int, desc: str
) -> np.ndarray:
    """Score the rows of ``order`` chunk by chunk, in that order, until the deadline leaves a chunk unfinished."""
    out = np.full(len(ids), np.nan)
    for start in range(0, len(order), chunk):
        rows = order[start : start + chunk]
        out[rows] = predict([ids[i] for i in rows], desc)
        if np.isnan(out[rows]).any():
            break
    return out


def is_feature_run(run_dir: str | Path) -> bool:
    """A ``model=features`` run (LightGBM on hand-made features): scored on the CPU in seconds, by any backend."""
    return OmegaConf.select(RunDir(run_dir).read_checkpoint_config(), "model.arch", default=None) == "features"


class Scorer:
    """One run's model, loaded once, scoring any number of row sets (:meth:`score`)."""

    def __init__(self, run_dir: Path, cfg: Any, device: torch.device, cache_dir: str | None):
        self.run_dir, self.cfg, self.device, self.cache_dir = run_dir, cfg, device, cache_dir
        self.trees: FeatureModel | None = None
        if is_feature_run(run_dir):
            self.trees = FeatureModel.load(RunDir(run_dir).checkpoint)
            return
        self.built, run_cfg = load_checkpoint(run_dir, device, quantization=cfg.quantization, device_map=cfg.device_map)
        self.encoder = PairEncoder.for_model(self.built.tokenizer, run_cfg.model)
        self.amp = autocast_dtype(cfg.precision, device, half_weights(self.built.model))

    def predict(self, seqs: Sequence[Sequence[int]], desc: str, deadline: Deadline | None = None) -> np.ndarray:
        cfg = self.cfg
        return predict_p_a(
            self.built.model,
            seqs,
            self.built.tokenizer.pad_token_id,
            cfg.batch_size,
            self.device,
            self.amp,
            desc,
            cfg.max_batch_tokens,
            deadline,
        )

    def score(
        self,
        test: pd.DataFrame,
        tta: str | None = None,
        deadline: Deadline | None = None,
        order: np.ndarray | None = None,
    ) -> np.ndarray:
        """P(A wins) for every row of ``test`` (``tta``: none | swap, default ``cfg.tta``).

        With a ``deadline``: every row is scored once first; the time left then goes to swap-TTA for the
        least confident rows first, in chunks; rows the budget did not reach keep NaN (first pass) or their
        single score (TTA). With ``order`` (and a deadline), the first pass goes through the rows in that order
        (a cascade's second member: the rows the first is least sure of first)."""
        tta = self.cfg.tta if tta is None else tta
        name = self.run_dir.name
        if self.trees is not None:  # the feature model: every row at once (seconds), swap-TTA from the swapped features
            given, swapped = self.trees.features(test)
            return self.trees.predict(given, swapped if tta == "swap" else None)
        chunk = max(4 * self.cfg.batch_size, 64)

        def predict(seqs: Sequence[Sequence[int]], desc: str) -> np.ndarray:
            return self.predict(seqs, desc, deadline)

        ids = self.encoder.encode(test, self.cache_dir)
        if order is not None and deadline is not None:
            p_a = _least_confident_chunks(predict, ids, np.asarray(order), chunk, name)
        else:
            p_a = predict(ids, name)
        if tta == "swap":
            swapped_ids = self.encoder.encode(swap_pairs(test), self.cache_dir)
            if deadline is None:
                swapped = predict(swapped_ids, f"{name} swap")
            else:
                scored = np.flatnonzero(~np.isnan(p_a))
                swapped = _least_confident_chunks(
                    predict, swapped_ids, scored[least_confident_first(p_a[scored])], chunk, f"{name} swap"
                )
                log.info(
                    "%s: swap-TTA on %d of %d rows within the time budget",
                    name,
                    int((~np.isnan(swapped)).sum()),
                    len(test),
                )
            p_a = np.where(np.isnan(swapped), p_a, (p_a + (1.0 - swapped)) / 2.0)
        return p_a


def score_run(
    run_dir: Path,
    test: pd.DataFrame,
    cfg: Any,
    device: torch.device,
    cache_dir: str | None,
    tta: str | None = None,
    deadline: Deadline | None = None,
    order: np.ndarray | None = None,
) -> np.ndarray:
    """P(A wins) of one run for every test row: :meth:`Scorer.score` with the run loaded for this call."""
    return Scorer(run_dir, cfg, device, cache_dir).score(test, tta, deadline, order)


def score_run_vllm(run_dir: Path, test: pd.DataFrame, cfg: Any, tta: str) -> np.ndarray:
    """vLLM pooling runner (``LLM(..., runner="pooling").classify``) over a merged checkpoint; the same
    token ids as the HF path (our formatting), vLLM schedules the batches itself."""
    run = RunDir(run_dir)
    ckpt = run.checkpoint
    if not (ckpt / "model").is_dir():
        raise DuelistError(
            f"{run_dir}: backend=vllm needs full weights (checkpoint/model/); merge the adapters first: python -m duelist.export {run_dir} --out MERGED"
        )
    run_cfg = run.read_checkpoint_config()
    if run_cfg.model.pooling != "model":
        raise DuelistError(
            f"{run_dir}: backend=vllm pools the way the architecture does; this run uses model.pooling={run_cfg.model.pooling}: use backend=hf"
        )
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if run_cfg.model.arch == "gemma2" and (
        precision(cfg.precision) == Precision.fp16
        or (precision(cfg.precision) == Precision.auto and torch.cuda.is_available() and not bf16)
    ):
        raise DuelistError(
            f"{run_dir}: backend=vllm refuses float16 for Gemma-2 and {'this GPU has no bf16 (T4, V100)' if not bf16 else 'precision=fp16 was asked for'}: "
            f"use backend=hf (precision=fp16, or quantization=int8 to fit a 9B model on a 16 GB GPU), or backend=vllm with a Qwen/Llama run"
        )
    try:
        from vllm import LLM, TokensPrompt
    except ImportError as err:
        raise DuelistError(
            "backend=vllm needs vLLM: pip install 'duelist[vllm]' (Linux + CUDA GPU), or use backend=hf"
        ) from err
    if not torch.cuda.is_available():
        raise DuelistError("backend=vllm needs a CUDA GPU; on this machine use backend=hf")
    tokenizer = load_tokenizer(str(ckpt / "tokenizer"), what="tokenizer")
    encoder = PairEncoder.for_model(tokenizer, run_cfg.model)
    llm = LLM(
        model=str(ckpt / "model"),
        tokenizer=str(ckpt / "tokenizer"),
        runner="pooling",
        max_model_len=run_cfg.model.max_length + 8,
        dtype=vllm_dtype(cfg.precision),
    )

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


def _score_share(
    run_dir: str, rows: pd.DataFrame, cfg_dict: dict, device: str, cache_dir: str | None, seconds: float | None
) -> np.ndarray:
    """One worker process of data-parallel scoring (module level: it is started with ``spawn``)."""
    from omegaconf import OmegaConf

    deadline = Deadline(seconds) if seconds is not None else None
    place = torch.device(device)
    if place.type == "cuda":
        torch.cuda.set_device(place)  # this worker's GPU for everything it allocates (a fresh process starts on GPU 0)
    return score_run(Path(run_dir), rows, OmegaConf.create(cfg_dict), place, cache_dir, deadline=deadline)


def score_run_parallel(
    run_dir: Path, test: pd.DataFrame, cfg: Any, devices: Sequence[str], deadline: Deadline | None
) -> np.ndarray:
    """``score_run`` with one process per device (e.g. Kaggle's two T4s), rows split by :func:`split_by_length`."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from omegaconf import OmegaConf

    lengths = (
        test["prompt"].str.len() + test["response_a"].str.len() + test["response_b"].str.len()
    ).to_numpy()  # characters: a proxy for tokens, before any tokenizer is loaded
    parts = split_by_length(lengths, len(devices))
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    seconds = deadline.remaining() if deadline is not None else None
    out = np.full(len(test), np.nan)
    with ProcessPoolExecutor(len(devices), mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [
            pool.submit(
                _score_share, str(run_dir), test.iloc[idx].reset_index(drop=True), cfg_dict, dev, cfg.cache_dir, seconds
            )
            for idx, dev in zip(parts, devices)
        ]
        for idx, job in zip(parts, jobs):
            out[idx] = job.result()
    return out


def pick_runs(cfg: Any, members: list[str] | None = None, what: str = "ensemble.members") -> list[Path]:
    """Explicit ``runs=[...]``, else the best finished run of each model named in ``members``
    (default ``ensemble.members``; ``labeling.teachers`` for task=pseudolabel). ``auto``: the two best model names."""
    if cfg.runs:
        return _check_runs(cfg.runs)
    members = cfg.ensemble.members if members is None else members
    if members == "auto":
        members = best_models(2, cfg.ensemble.roots, cfg.ensemble.select_by)
    elif isinstance(members, str) or not hasattr(members, "__iter__"):
        raise DuelistError(f"{what}={members}: use auto or a list of model names, e.g. [gemma2_9b, qwen2_5_14b]")
    members = list(members)
    if not members:
        raise DuelistError(
            f"no runs: pass runs=[RUN_DIR,...] or name model families in {what} (e.g. ensemble=two_model)"
        )
    picked = [best_run(m, cfg.ensemble.roots, cfg.ensemble.select_by) for m in members]
    for model, run in zip(members, picked):
        log.info("%s %s: best run by %s is %s", what, model, cfg.ensemble.select_by, run)
    return _check_runs(picked)
