"""What pruning saves: the same ``sweep=lora`` study run twice, without a pruner and with the median pruner.

    python bench/pruning.py                      # 8 trials of MiniLM + LoRA on 600 rows of the bundled sample
    python bench/pruning.py trials=4 rows=400

Both sweeps draw the same trials (TPE's first 10 trials are its seeded random start-up draws, so with up to 10 trials
the two studies try the same settings); each trial validates every ``eval_every`` steps and reports to its trial.
Prints and writes ``bench/results/pruning-<machine>.json`` (device, versions, commit): the wall time of each sweep,
its best value, each trial's state, value and steps.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch

from duelist.core import options
from duelist.core.files import write_json
from duelist.core.options import option
from duelist.tools.bench import device_name

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class PruningOptions:
    trials: int = option(8, "trials per sweep (up to 10: the same seeded draws in both)")
    rows: int = option(600, "rows of the bundled sample (4/5 train, 1/5 validation)")
    eval_every: int = option(10, "optimizer steps between validations (each one reported to the trial)")
    n_startup_trials: int = option(2, "median pruner: trials that finish before any is pruned")
    n_warmup_steps: int = option(0, "median pruner: no pruning before this step")
    seed: int = option(0, "sampler seed")
    out: str = option(str(ROOT / "bench" / "results" / f"pruning-{platform.machine()}.json"), "JSON path")


def sweep(opts: PruningOptions, pruner: str, folder: Path) -> dict:
    import optuna

    storage = f"sqlite:///{folder / 'study.db'}"
    args = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "sweep=lora",
        "logger=none",
        f"data.max_rows={opts.rows}",
        f"trainer.eval_every={opts.eval_every}",
        f"hydra.sweeper.n_trials={opts.trials}",
        f"hydra.sweeper.sampler.seed={opts.seed}",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.pruner.type={pruner}",
        f"hydra.sweeper.pruner.n_startup_trials={opts.n_startup_trials}",
        f"hydra.sweeper.pruner.n_warmup_steps={opts.n_warmup_steps}",
        f"hydra.sweep.dir={folder / 'multirun'}",
    ]
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, cwd=folder)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"sweep with pruner={pruner} failed:\n{done.stderr[-3000:]}")
    study = optuna.load_study(study_name="lora", storage=storage)
    trials = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "steps": max(t.intermediate_values, default=None),
            "params": t.params,
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds(),
        }
        for t in study.trials
    ]
    return {
        "pruner": pruner,
        "wall_s": round(wall, 1),
        "best_value": study.best_value,
        "best_params": study.best_trial.params,
        "pruned": sum(t["state"] == "PRUNED" for t in trials),
        "steps": sum(t["steps"] or 0 for t in trials),
        "trials": trials,
    }


def main(argv=None) -> None:
    opts = options.parse(PruningOptions, argv, "python bench/pruning.py", __doc__.split("\n\n")[0])
    results = []
    for pruner in ("none", "median"):
        with tempfile.TemporaryDirectory(prefix=f"duelist-pruning-{pruner}-") as tmp:
            result = sweep(opts, pruner, Path(tmp))
        results.append(result)
        print(
            f"pruner={pruner:7s} wall {result['wall_s']:7.1f} s  best val/accuracy {result['best_value']:.4f}  "
            f"pruned {result['pruned']}/{opts.trials}  steps {result['steps']}",
            flush=True,
        )
    base, pruned = results
    print(f"the pruned sweep took {pruned['wall_s'] / base['wall_s']:.2f} of the unpruned one's time")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    report = {
        "device": device_name(torch.device("cpu")),
        "versions": {p: version(p) for p in ("torch", "transformers", "peft", "optuna", "hydra-core")}
        | {"python": sys.version.split()[0]},
        "commit": commit.strip(),
        "options": vars(opts),
        "time_ratio": round(pruned["wall_s"] / base["wall_s"], 3),
        "sweeps": results,
    }
    write_json(Path(opts.out), report)
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
