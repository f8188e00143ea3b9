"""Merge a LoRA run's adapters into its base weights: ``python -m duelist.export RUN_DIR --out MERGED_DIR``.

``MERGED_DIR`` is a run dir like any other (checkpoint/, config.yaml, metrics.json, oof.parquet), so
``python infer.py runs=[MERGED_DIR] ...`` scores with plain weights: no adapter layers in the forward pass.
A QLoRA run is merged into its dequantized 4-bit base (the weights it trained against). The merged model
re-scores the run's validation rows, so its ``oof.parquet`` and ``metrics.json`` describe the model that ships;
``exported_from.json`` names the source run and ``export/max_abs_diff_p_a`` how far the merge moved p_a.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from duelist.config import Precision
from duelist.data import load_train_valid
from duelist.errors import DuelistError, exit_cleanly_on_user_error
from duelist.files import atomic_dir
from duelist.formatting import PairEncoder
from duelist.logs import quiet_library_logs
from duelist.metrics import compute_metrics
from duelist.modeling import half_weights, merge_adapters, save_checkpoint
from duelist.rundir import RunDir
from duelist.scoring import autocast_dtype, predict_p_a

log = logging.getLogger(__name__)


def export_run(run_dir: str | Path, out_dir: str | Path, dtype_name: str = "auto") -> Path:
    """Write ``out_dir`` (atomically): the merged model, and the run's validation rows re-scored with it."""
    run, out_dir = RunDir(run_dir).require_checkpoint(), Path(out_dir)
    if out_dir.resolve() == run.path.resolve():
        raise DuelistError(f"--out {out_dir}: must differ from the run dir")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    built, cfg = merge_adapters(run.path, device, dtype_name)
    oof, metrics = run.read_oof(), run.read_metrics()
    _, valid = load_train_valid(cfg.data)
    if set(valid["id"]) != set(oof["id"]):
        raise DuelistError(
            f"{run.path}: the validation rows of data={cfg.data.name} are not the rows of its oof.parquet "
            f"(the data files changed since training); export where the run's training data is as it was"
        )
    valid = valid.set_index("id").loc[oof["id"]].reset_index()  # oof.parquet's row order
    ids = PairEncoder.for_model(built.tokenizer, cfg.model).encode(valid, cfg.cache_dir, desc="tokenize valid")
    weights = next(built.model.parameters()).dtype
    p_a = predict_p_a(
        built.model,
        ids,
        built.tokenizer.pad_token_id,
        cfg.trainer.eval_batch_size,
        device,
        autocast_dtype(cfg.trainer.precision, device, half_weights(built.model)),
        desc="re-score valid (merged)",
    )
    moved = float(np.abs(p_a - oof["p_a"].to_numpy()).max())
    log.info("merged model re-scored %d validation rows: max |p_a(merged) - p_a(adapters)| = %.2e", len(valid), moved)
    metrics = {
        **metrics,
        **compute_metrics(valid, p_a),
        "export/max_abs_diff_p_a": moved,
        "export/dtype": str(weights).removeprefix("torch."),
    }
    with atomic_dir(out_dir) as tmp:
        copy = RunDir(tmp)
        save_checkpoint(built, cfg, copy.checkpoint)
        copy.write_config(cfg)
        copy.write_oof(oof.assign(p_a=p_a))
        copy.write_exported_from(run)
        copy.write_metrics(metrics)
    return out_dir


@exit_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    quiet_library_logs()
    parser = argparse.ArgumentParser(prog="python -m duelist.export", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run dir of a LoRA/QLoRA run (has checkpoint/adapter/)")
    parser.add_argument("--out", required=True, help="folder for the merged run dir (written atomically)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=list(Precision.__members__),
        help="weights dtype of the merged model: auto (bf16/fp16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16 (torch names accepted)",
    )
    args = parser.parse_args(argv)
    out = export_run(args.run, args.out, args.dtype)
    metrics = RunDir(out).read_metrics()
    print(
        f"merged {args.run} -> {out} (validation re-scored: val/accuracy={metrics['val/accuracy']:.4f}, "
        f"max |p_a change| = {metrics['export/max_abs_diff_p_a']:.2e})"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
