"""The feature model (``model=features``) on the bundled sample: every fold, against the longer-answer rule.

    python bench/feature_model.py [--early-stopping 0]   # writes outputs/bench/feature-model-<host>.json (--out
    bench/results/... to commit)

Trains ``python train.py model=features data.fold=K`` for K = 0..4 in this process (run dirs under a temporary
folder) and reports each fold's validation accuracy, the longer-answer rule's on the same rows, log loss,
per-language accuracy and the time ``train()`` took.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from hydra import compose, initialize_config_dir

    from duelist.core.hydra_setup import register_configs
    from duelist.tasks.train import train
    from duelist.tools.bench import git_commit, versions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--early-stopping", type=int, default=0, help="model.trees.early_stopping_rounds (0: the default, fixed rounds)"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    register_configs()
    folds = []
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(str(ROOT / "conf")):
        for fold in range(5):
            overrides = [
                "model=features",
                "logger=none",
                f"data.fold={fold}",
                f"model.trees.early_stopping_rounds={args.early_stopping}",
            ]
            if args.early_stopping:
                overrides.append("model.trees.n_estimators=1000")
            start = time.perf_counter()
            train(compose("train", overrides=overrides), Path(tmp) / f"fold{fold}")
            seconds = time.perf_counter() - start
            m = json.loads((Path(tmp) / f"fold{fold}" / "metrics.json").read_text())
            folds.append(
                {
                    "fold": fold,
                    "rows": m["val/rows"],
                    "accuracy": m["val/accuracy"],
                    "longer_wins": m["val/baseline_longer_wins"],
                    "log_loss": m["val/log_loss"],
                    "by_language": m["val/accuracy_by_language"],
                    "trees": m["train/trees"],
                    "seconds": seconds,
                }
            )
    mean = {k: sum(f[k] for f in folds) / len(folds) for k in ("accuracy", "longer_wins", "log_loss")}
    for f in folds:
        print(
            f"fold {f['fold']}: {f['rows']} pairs  features {f['accuracy']:.4f}  longer-answer rule "
            f"{f['longer_wins']:.4f}  "
            f"log loss {f['log_loss']:.4f}  {f['seconds']:.1f} s"
        )
    print(f"mean: features {mean['accuracy']:.4f}  rule {mean['longer_wins']:.4f}  log loss {mean['log_loss']:.4f}")
    report = {
        "device": f"cpu {platform.machine()}",
        "versions": {**versions(), "lightgbm": metadata.version("lightgbm")},
        "commit": git_commit(),
        "early_stopping_rounds": args.early_stopping,
        "folds": folds,
        "mean": mean,
    }
    out = Path(args.out or ROOT / "outputs" / "bench" / f"feature-model-{platform.node() or 'host'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
