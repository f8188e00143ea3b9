"""Merge a LoRA run's adapters into its base weights: ``python -m duelist export run=RUN_DIR out=MERGED_DIR``.

``MERGED_DIR`` is a run dir like any other (checkpoint/, config.yaml, metrics.json, oof.parquet), so
``python infer.py runs=[MERGED_DIR] ...`` scores with plain weights: no adapter layers in the forward pass.
A QLoRA run is merged into its dequantized 4-bit base (the weights it trained against). The merged model
re-scores the run's validation rows, so its ``oof.parquet`` and ``metrics.json`` describe the model that ships;
``exported_from.json`` names the source run and ``export/max_abs_diff_p_a`` how far the merge moved p_a.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from duelist.core import options
from duelist.core.config import Precision
from duelist.core.errors import DuelistError, exit_cleanly_on_user_error
from duelist.core.logs import quiet_library_logs
from duelist.core.options import option
from duelist.models.kinds import run_kind
from duelist.runs.run_dir import RunDir


def export_run(run_dir: str | Path, out_dir: str | Path, dtype_name: str = "auto") -> Path:
    """Write ``out_dir`` (atomically): the run in the form that scores fastest (the kind decides how)."""
    run, out_dir = RunDir(run_dir).require_checkpoint(), Path(out_dir)
    if out_dir.resolve() == run.path.resolve():
        raise DuelistError(f"out={out_dir}: must differ from the run dir")
    run_kind(run).export(run, out_dir, dtype_name)
    return out_dir


@dataclass
class ExportOptions:
    run: str = option(help="run dir of a LoRA/QLoRA run (has checkpoint/adapter/)")
    out: str = option(help="folder for the merged run dir (written atomically)")
    dtype: Precision = option(
        Precision.auto, "weights dtype of the merged model: auto (bf16/fp16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16"
    )


@exit_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    quiet_library_logs()
    args = options.parse(ExportOptions, argv, "python -m duelist export", __doc__.splitlines()[0])
    out = export_run(args.run, args.out, args.dtype.name)
    metrics = RunDir(out).read_metrics()
    print(
        f"merged {args.run} -> {out} (validation re-scored: val/accuracy={metrics['val/accuracy']:.4f}, "
        f"max |p_a change| = {metrics['export/max_abs_diff_p_a']:.2e})"
    )
