"""Peak memory of every process when a 2-process FSDP run resumes from a saved state (CPU, gloo).

    python bench/resume_memory.py [--hidden 512 --layers 4] [--label NAME]  # -> outputs/bench/resume-memory-NAME.json

Trains a random-init Gemma-2 of the given width with every weight trained (``lora=none``), sharded by FSDP over two
processes (``accelerate launch --use_fsdp``), kills both after the state of step 2 is saved, and launches the same
command again, which resumes. While the resumed launch runs, the peak resident memory (``VmHWM``) of each training
process is read from ``/proc`` every 0.1 s. Each process builds the whole model before FSDP shards it; what resuming
adds on top is the saved weights and optimizer state, which every process loaded whole before rank 0 alone read them
and sent them on, so the difference is the measure of that change.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_of_children(parent: int, peaks: dict[int, int], stop: threading.Event) -> None:
    """VmHWM (kB) of every train.py process below ``parent``, by pid, until ``stop``."""
    import psutil

    while not stop.is_set():
        try:
            for child in psutil.Process(parent).children(recursive=True):
                try:
                    if any(part.endswith("train.py") for part in child.cmdline()):
                        status = Path(f"/proc/{child.pid}/status").read_text()
                        hwm = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
                        peaks[child.pid] = max(peaks.get(child.pid, 0), hwm)
                except (psutil.Error, OSError, StopIteration):
                    continue
        except psutil.Error:
            return
        time.sleep(0.1)


def main() -> None:
    from duelist.tools.bench import git_commit, versions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512, help="hidden size (the MLP is 4x)")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers")
    parser.add_argument("--label", default="current", help="a name for this measurement (e.g. the code's version)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    h = args.hidden
    overrides = (
        f"{{hidden_size:{h},intermediate_size:{4 * h},num_hidden_layers:{args.layers},num_attention_heads:8,"
        f"num_key_value_heads:4,head_dim:{h // 8},max_position_embeddings:1024}}"
    )
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        command = [
            accelerate, "launch", "--use_fsdp", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
            "no", "--dynamo_backend", "no", str(ROOT / "train.py"), "model=tiny_gemma2", "lora=none",
            f"model.config_overrides={overrides}", "trainer.lr=1e-4", "logger=none", "data.max_rows=200",
            "trainer.max_steps=4", "trainer.batch_size=4", "trainer.save_every=2", "trainer.eval_batch_size=32",
            f"hydra.run.dir={run}",
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        killed = subprocess.run(command, env={**env, "DUELIST_TEST_KILL_AT_BATCH": "3"}, capture_output=True, text=True)
        assert killed.returncode != 0 and (run / "states" / "step-00000002").is_dir(), killed.stderr[-2000:]
        state_mb = sum(f.stat().st_size for f in (run / "states" / "step-00000002").rglob("*") if f.is_file()) / 1e6
        peaks: dict[int, int] = {}
        stop = threading.Event()
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        watcher = threading.Thread(target=peak_of_children, args=(process.pid, peaks, stop), daemon=True)
        watcher.start()
        out, err = process.communicate()
        stop.set()
        assert process.returncode == 0 and "resuming from" in out + err, err[-3000:]
    ranks = sorted(peaks.values(), reverse=True)
    report = {
        "what": "peak RSS (VmHWM) of each process of a 2-process FSDP run (CPU, gloo) resuming from a saved state",
        "label": args.label,
        "model": f"tiny_gemma2 random init, hidden {h}, {args.layers} layers, lora=none",
        "state_mb": state_mb,
        "peak_rss_mb_per_process": [kb / 1e3 for kb in ranks],
        "seconds": time.perf_counter() - started,
        "commit": git_commit(),
        "versions": versions(),
        "host": f"{os.uname().machine} {os.cpu_count()} cores",
    }
    path = Path(args.out or ROOT / "outputs" / "bench" / f"resume-memory-{args.label}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
