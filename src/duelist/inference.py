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
from typing import Any, Sequence

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


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype for the forward pass: bf16 on GPUs that have it, else fp16; none on CPU."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@torch.no_grad()
def predict_p_a(
    model: torch.nn.Module, seqs: Sequence[Sequence[int]], pad_id: int, batch_size: int, device: torch.device,
    amp: torch.dtype | None = None, desc: str = "predict", max_tokens: int | None = None,
) -> np.ndarray:
    """P(A wins) for each sequence, in input order; batches are sorted by length to cut padding and
    hold at most ``batch_size`` rows and (when given) ``max_tokens`` padded tokens."""
    was_training = model.training
    model.eval()
    out = np.zeros(len(seqs), dtype=np.float64)
    tokens = 0
    start = time.perf_counter()
    with tqdm(total=len(seqs), desc=desc, unit="rows", leave=False) as bar:
        for idx in sorted_batches([len(s) for s in seqs], batch_size, max_tokens):
            ids, mask = pad([seqs[i] for i in idx], pad_id)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            out[idx] = torch.softmax(logits.float(), dim=-1)[:, 0].cpu().numpy()
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


def score_run(run_dir: Path, test: pd.DataFrame, cfg: Any, device: torch.device, cache_dir: str | None, tta: str | None = None) -> np.ndarray:
    """P(A wins) of one run for every test row (``tta``: none | swap, default ``cfg.tta``)."""
    tta = cfg.tta if tta is None else tta
    built, run_cfg = load_checkpoint(run_dir, device)
    encoder = PairEncoder(built.tokenizer, run_cfg.model.template, run_cfg.model.max_length, run_cfg.model.prompt_max_tokens)
    amp = autocast_dtype(cfg.precision, device)
    pad_id = built.tokenizer.pad_token_id
    p_a = predict_p_a(built.model, encoder.encode(test, cache_dir), pad_id, cfg.batch_size, device, amp, f"{run_dir.name}", cfg.max_batch_tokens)
    if tta == "swap":
        swapped = predict_p_a(built.model, encoder.encode(swap_pairs(test), cache_dir), pad_id, cfg.batch_size, device, amp, f"{run_dir.name} swap", cfg.max_batch_tokens)
        p_a = (p_a + (1.0 - swapped)) / 2.0
    del built
    return p_a


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
    output = Path(cfg.output)
    if output.suffix.lower() != ".csv":
        raise DuelistError(f"output={cfg.output}: the submission must be a .csv file")
    runs = pick_runs(cfg)
    test = load_test(cfg.data.test, cfg.data.on_bad_rows)
    report = ensemble_weights(cfg, runs)
    device = pick_device(cfg.device)
    log.info("scoring %d test rows with %d run(s) on %s, tta=%s", len(test), len(runs), device, cfg.tta)
    probs = pd.DataFrame({"id": test["id"]})
    for i, run in enumerate(runs):
        probs[f"p_a_run{i}"] = score_run(run, test, cfg, device, cfg.cache_dir)
    members = probs[[f"p_a_run{i}" for i in range(len(runs))]].to_numpy()
    probs["p_a"] = ensemble.apply(members, test["language"].to_numpy(), report["weights"], report["combine"])
    submission = pd.DataFrame({"id": test["id"], "winner": predicted_winner(probs["p_a"].to_numpy())})
    write_json(output.with_suffix(".ensemble.json"), {**report, "tta": cfg.tta})
    write_parquet(output.with_suffix(".parquet"), probs)
    write_csv(output, submission)
    log.info("wrote %s (%d rows), %s and %s", output, len(submission), output.with_suffix(".parquet"), output.with_suffix(".ensemble.json"))
    print(f"submission: {output} ({len(submission)} rows; model_a {float((submission['winner'] == 'model_a').mean()):.3f})")
    return submission
