"""Library log lines a user cannot act on, turned down once at start-up (``train.py``, ``infer.py`` and the module
CLIs that load models call :func:`quiet_library_logs`)."""

from __future__ import annotations

import logging

# logger -> the lowest level still shown
QUIET = {
    # bitsandbytes on CPUs with AVX512-BF16 tries an optional Hub kernel package at import (peft imports it even when
    # nothing is quantized): "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'"
    "bitsandbytes.backends.cpu.ops": logging.ERROR,
    # the Optuna sweeper's SQLite/PostgreSQL storage runs alembic, which announces 7 "setup plugin ..." lines per sweep
    "alembic": logging.WARNING,
}


def quiet_library_logs() -> None:
    for name, level in QUIET.items():
        logging.getLogger(name).setLevel(level)
