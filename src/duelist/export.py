"""Merge a LoRA run's adapters into its base weights: ``python -m duelist.export RUN_DIR --out MERGED_DIR``.

``MERGED_DIR`` is a run dir like any other (checkpoint/, config.yaml, metrics.json, oof.parquet), so
``python infer.py runs=[MERGED_DIR] ...`` scores with plain weights: no adapter layers in the forward pass.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from duelist.config import Precision
from duelist.errors import exit_cleanly_on_user_error
from duelist.modeling import merge_checkpoint


@exit_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m duelist.export", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run dir of a LoRA/QLoRA run (has checkpoint/adapter/)")
    parser.add_argument("--out", required=True, help="folder for the merged run dir (written atomically)")
    parser.add_argument("--dtype", default="auto", choices=list(Precision.__members__),
                        help="weights dtype of the merged model: auto (bf16/fp16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16 (torch names accepted)")
    args = parser.parse_args(argv)
    out = merge_checkpoint(args.run, args.out, args.dtype)
    print(f"merged {args.run} -> {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
