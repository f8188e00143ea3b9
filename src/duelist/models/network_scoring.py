"""Scoring pairs with a trained network: the one prediction path that training, the benchmark, export,
pseudo-labelling and the submission all use.

- :func:`predict_p_a`: P(A wins) for token sequences, batches sorted by length under a row and a token budget, order
  restored, never starting a batch a :class:`~duelist.core.time_budget.Deadline` says would overrun;
- :func:`network_scorer`: a run's scorer for ``infer.py``'s settings: :class:`HFScorer` (transformers, optional
  swap-TTA within the deadline), :class:`VllmScorer` (``backend=vllm``: vLLM's pooling runner on merged weights) or
  :class:`ParallelScorer` (``devices=[...]``: one process per device, rows dealt by length).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from duelist.core.batching import pad, sorted_batches
from duelist.core.config import Precision, precision
from duelist.core.errors import DuelistError
from duelist.core.files import shown
from duelist.core.hardware import (
    autocast_dtype,
    half_weights,
    require_vllm,
    shut_down_vllm,
    vllm_dtype,
    vllm_engine_settings,
    vllm_started,
)
from duelist.core.metrics import least_confident_first
from duelist.core.progress import Progress
from duelist.core.time_budget import Deadline
from duelist.data.pairs import swap_pairs
from duelist.models.heads import Head, head_of
from duelist.models.network_build import load_checkpoint, load_tokenizer
from duelist.runs.run_dir import RunDir

log = logging.getLogger(__name__)


def p_a_of(logits: torch.Tensor) -> np.ndarray:
    """P(A wins) from two logits per pair (a head's :meth:`~duelist.models.heads.Head.pair_logits`), in float64:
    ``sigmoid(d)`` for ``d = l_a - l_b >= 0`` and ``1 - sigmoid(-d)`` below, so exchanging the two logits gives
    ``1 - p_a`` exactly (a reward head's swap symmetry survives rounding)."""
    d = (logits[:, 0].double() - logits[:, 1].double()).cpu().numpy()
    up = 1.0 / (1.0 + np.exp(-np.abs(d)))
    return np.where(d >= 0, up, 1.0 - up)


@torch.no_grad()
def predict_p_a(
    model: torch.nn.Module,
    head: Head,
    seqs: Sequence[Any],
    pad_id: int,
    batch_size: int,
    device: torch.device,
    amp: torch.dtype | None = None,
    desc: str = "predict",
    max_tokens: int | None = None,
    deadline: Deadline | None = None,
    quiet: bool = False,
) -> np.ndarray:
    """P(A wins) for each row (as ``head``'s encoder wrote it), in input order. The rows' sequences (one per pair, or
    two for a reward head) are sorted by length on their own, so short ones are not padded to a long partner, and cut
    into batches of at most ``batch_size`` sequences and (when given) ``max_tokens`` padded tokens: a forward pass
    holds as many sequences, and about as many tokens, whichever head reads the rows.
    With a ``deadline``, a batch predicted not to fit is not started: rows not wholly scored stay NaN. ``quiet``: no
    progress lines off a terminal (a validation pass)."""
    was_training = model.training
    model.eval()
    seqs = head.sequences(list(seqs))  # row-major: a row's sequences follow one another
    raw = torch.full((len(seqs), head.outputs), float("nan"), dtype=torch.float32)
    tokens = 0
    start = time.perf_counter()
    unit = "rows" if head.sequences_per_pair == 1 else "sequences"
    with Progress(len(seqs), desc, unit, quiet=quiet) as bar:
        for idx in sorted_batches([len(s) for s in seqs], batch_size, max_tokens):
            ids, mask = pad([seqs[i] for i in idx], pad_id)
            if deadline is not None and not deadline.fits(ids.numel()):
                log.warning("%s: time budget reached, %d %s left unscored", desc, int(raw[:, 0].isnan().sum()), unit)
                break
            began = deadline.clock() if deadline is not None else 0.0
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            if logits.shape[-1] != head.outputs:
                raise DuelistError(
                    f"a model with {logits.shape[-1]} outputs scored as model.head={head.name} ({head.outputs}); "
                    "score a run with the head of its own config (duelist.models.heads.head_of)"
                )
            raw[torch.as_tensor(idx)] = logits.detach().float().cpu()
            if deadline is not None:
                deadline.record(ids.numel(), deadline.clock() - began)
            tokens += int(mask.sum())
            bar.update(len(idx), tok_s=f"{tokens / max(time.perf_counter() - start, 1e-9):,.0f}")
    model.train(was_training)
    return p_a_of(head.pair_logits(raw))


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


class HFScorer:
    """One run's network (transformers), loaded once, scoring any number of row sets (:meth:`score`)."""

    def __init__(self, run_dir: Path, cfg: Any, device: torch.device):
        self.run_dir, self.cfg, self.device, self.cache_dir = Path(run_dir), cfg, device, cfg.cache_dir
        self.built, run_cfg = load_checkpoint(run_dir, device, quantization=cfg.quantization, device_map=cfg.device_map)
        self.head = head_of(run_cfg.model)
        self.encoder = self.head.encoder(self.built.tokenizer, run_cfg.model)
        self.amp = autocast_dtype(cfg.precision, device, half_weights(self.built.model))

    def close(self) -> None:
        del self.built
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def predict(self, seqs: Sequence[Sequence[int]], desc: str, deadline: Deadline | None = None) -> np.ndarray:
        cfg = self.cfg
        return predict_p_a(
            self.built.model,
            self.head,
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
        name = f"score {shown(self.run_dir)}"
        if tta == "swap" and self.head.passes("swap") == 1:
            log.info(
                "%s: a %s head is swap-symmetric (p_a(B, A) = 1 - p_a(A, B)): swap-TTA adds nothing",
                name,
                self.head.name,
            )
            tta = "none"
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


class VllmScorer:
    """``backend=vllm``: vLLM's pooling runner (``LLM(..., runner="pooling").classify``) over a merged checkpoint; the
    same token ids as the HF path (our encoding), vLLM schedules the batches itself (no time budget, no row order)."""

    def __init__(self, run_dir: Path, cfg: Any):
        run = RunDir(run_dir)
        ckpt = run.checkpoint
        if not (ckpt / "model").is_dir():
            raise DuelistError(
                f"{run_dir}: backend=vllm needs full weights (checkpoint/model/); merge the adapters first: "
                f"python -m duelist export run={run_dir} out=MERGED"
            )
        run_cfg = run.read_checkpoint_config()
        if run_cfg.model.pooling != "model":
            raise DuelistError(
                f"{run_dir}: backend=vllm pools the way the architecture does; this run uses "
                f"model.pooling={run_cfg.model.pooling}: use backend=hf"
            )
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = vllm_dtype(cfg.precision, run_cfg.model.dtype, device)
        if run_cfg.model.arch == "gemma2" and dtype == "float16":
            if precision(cfg.precision) == Precision.fp16:
                why = "precision=fp16 was asked for"
            elif device.type == "cuda":
                why = "this GPU has no bf16 (T4, V100)"
            else:
                why = f"the run's weights are float16 (model.dtype={run_cfg.model.dtype})"
            raise DuelistError(
                f"{run_dir}: backend=vllm refuses float16 for Gemma-2 and {why}: use backend=hf "
                "(precision=fp16, or quantization=int8|nf4 to fit a 9B model on a 16 GB GPU), or backend=vllm with a "
                "Qwen/Llama run"
            )
        require_vllm("backend=vllm", "backend=hf")
        from vllm import LLM

        log.info("%s: backend=vllm on %s, weights in %s (as backend=hf scores this run here)", run_dir, device, dtype)
        self.cfg = cfg
        self.head = head_of(run_cfg.model)
        self.encoder = self.head.encoder(load_tokenizer(str(ckpt / "tokenizer"), what="tokenizer"), run_cfg.model)
        beside = (ckpt / "model" / "tokenizer_config.json").is_file()  # runs merged before it was: checkpoint/tokenizer
        self.llm = vllm_started(
            LLM(
                model=str(ckpt / "model"),
                tokenizer=str(ckpt / ("model" if beside else "tokenizer")),
                runner="pooling",
                max_model_len=run_cfg.model.max_length + 8,
                dtype=dtype,
                **vllm_engine_settings(cfg.cpu_kv_cache_gb),
            )
        )

    def close(self) -> None:
        shut_down_vllm(self.llm)

    def classify(self, rows: pd.DataFrame) -> np.ndarray:
        from vllm import PoolingParams, TokensPrompt

        ids = self.encoder.encode(rows, self.cfg.cache_dir)
        # the model's raw outputs (no softmax or sigmoid: a reward of 20 would round to 1.0), then the head's logits of
        # each pair, as the HF path computes them
        seqs = [TokensPrompt(prompt_token_ids=list(s)) for s in self.head.sequences(ids)]
        raw = PoolingParams(use_activation=False)
        outputs = self.llm.classify(seqs, pooling_params=raw, use_tqdm=sys.stderr.isatty())  # bars: a terminal only
        logits = torch.tensor([list(o.outputs.probs) for o in outputs], dtype=torch.float64)
        return p_a_of(self.head.pair_logits(logits))

    def score(
        self, rows: pd.DataFrame, tta: str | None = None, deadline: Deadline | None = None, order: Any = None
    ) -> np.ndarray:
        p_a = self.classify(rows)
        if self.head.passes(self.cfg.tta if tta is None else tta) == 2:  # swap-TTA, where the head is not symmetric
            p_a = (p_a + (1.0 - self.classify(swap_pairs(rows)))) / 2.0
        return p_a


def split_by_length(lengths: Sequence[int], parts: int) -> list[np.ndarray]:
    """Row indices for ``parts`` workers: rows sorted by length and dealt round-robin, so every worker gets
    the same mix of long and short rows and they finish together. Every row is in exactly one part."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [np.sort(order[k::parts]) for k in range(parts)]


def _score_share(
    run_dir: str,
    rows: pd.DataFrame,
    cfg_dict: dict,
    device: str,
    tta: str | None,
    seconds: float | None,
    prior: float | None = None,
) -> np.ndarray:
    """One worker process of data-parallel scoring (module level: it is started with ``spawn``); ``prior``: its
    device's projected seconds per token (``infer.py hardware=...``)."""
    from omegaconf import OmegaConf

    deadline = Deadline(seconds, prior=prior) if seconds is not None else None
    place = torch.device(device)
    if place.type == "cuda":
        torch.cuda.set_device(place)  # this worker's GPU for everything it allocates (a fresh process starts on GPU 0)
    return HFScorer(Path(run_dir), OmegaConf.create(cfg_dict), place).score(rows, tta, deadline)


class ParallelScorer:
    """``devices=[...]``: :class:`HFScorer` in one process per device (e.g. Kaggle's two T4s), rows split by
    :func:`split_by_length`; each call starts the processes, which load the run (no row order: a cascade runs on one
    device)."""

    def __init__(self, run_dir: Path, cfg: Any, devices: Sequence[str]):
        self.run_dir, self.cfg, self.devices = Path(run_dir), cfg, list(devices)

    def close(self) -> None:
        """Nothing to free: the processes, and the run they load, end with each call."""

    def score(
        self, rows: pd.DataFrame, tta: str | None = None, deadline: Deadline | None = None, order: Any = None
    ) -> np.ndarray:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from omegaconf import OmegaConf

        text = rows["prompt"].str.len() + rows["response_a"].str.len() + rows["response_b"].str.len()
        parts = split_by_length(text.to_numpy(), len(self.devices))  # characters: a proxy for tokens
        cfg_dict = OmegaConf.to_container(self.cfg, resolve=True)
        seconds = deadline.remaining() if deadline is not None else None
        # the projection is the whole machine's: each worker has one of its devices
        prior = deadline.prior * len(self.devices) if deadline is not None and deadline.prior else None
        out = np.full(len(rows), np.nan)
        with ProcessPoolExecutor(len(self.devices), mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = [
                pool.submit(
                    _score_share,
                    str(self.run_dir),
                    rows.iloc[idx].reset_index(drop=True),
                    cfg_dict,
                    dev,
                    tta,
                    seconds,
                    prior,
                )
                for idx, dev in zip(parts, self.devices)
            ]
            for idx, job in zip(parts, jobs):
                out[idx] = job.result()
        return out


def network_scorer(run_dir: Path, cfg: Any, device: torch.device) -> HFScorer | VllmScorer | ParallelScorer:
    """The scorer ``infer.py``'s settings ask for: ``backend=vllm``, several ``devices``, or transformers on
    ``device``."""
    if cfg.backend == "vllm":
        return VllmScorer(run_dir, cfg)
    if len(cfg.devices) > 1:
        return ParallelScorer(run_dir, cfg, cfg.devices)
    return HFScorer(run_dir, cfg, device)
