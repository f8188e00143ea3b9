"""What a user reads: library log lines they cannot act on, turned down once at start-up (``train.py``, ``infer.py``
and the commands that load models call :func:`quiet_library_logs`), and the closing block of a job (:func:`closing`),
printed plainly and kept in the job's log file."""

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
    try:  # transformers' "Loading weights" bar: one per model load, nothing a user acts on
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # the Kaggle package and the tools that load no model
        pass


def closing(lines: list[str]) -> None:
    """The last lines of a job: printed as they are (no log prefix) and written to every log file the job has (Hydra's
    ``train.log``), so the file ends with them too."""
    print("\n".join(lines), flush=True)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            for line in lines:
                handler.emit(logging.LogRecord("duelist", logging.INFO, __file__, 0, line, None, None))
            handler.flush()
