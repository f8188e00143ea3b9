"""The feature model (``model=features``) on the bundled sample: every fold, against the longer-answer rule.

    python bench/feature_model.py [--early-stopping 0] [--encoder use]   # writes
    outputs/bench/feature-model-<host>.json (--out bench/results/... to commit)

Trains ``python train.py model=features data.fold=K`` for K = 0..4 in this process (run dirs under a temporary
folder) and reports each fold's validation accuracy, the longer-answer rule's on the same rows, log loss,
per-language accuracy and the time ``train()`` took. ``--encoder use`` adds the sentence encoder's similarities
(``model.encoder=use``); the first fold then also embeds the sample's texts (cached for the others).
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
    parser.add_argument("--encoder", default="none", help="model.encoder: none | use")
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
                f"model.encoder={args.encoder}",
                f"cache_dir={Path(tmp) / 'cache'}",  # a cold cache: the first fold embeds every text
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
                    "language_rows": m["val/rows_by_language"],
                    "trees": m["train/trees"],
                    "seconds": seconds,
                }
            )
    mean = {k: sum(f[k] for f in folds) / len(folds) for k in ("accuracy", "longer_wins", "log_loss")}
    rows = sum(f["rows"] for f in folds)
    pooled = {k: sum(f[k] * f["rows"] for f in folds) / rows for k in ("accuracy", "longer_wins", "log_loss")}
    languages = {lang for f in folds for lang in f["by_language"]}
    count = {lang: sum(f["language_rows"].get(lang, 0) for f in folds) for lang in languages}
    pooled["by_language"] = {
        lang: sum(f["by_language"].get(lang, 0) * f["language_rows"].get(lang, 0) for f in folds) / count[lang]
        for lang in sorted(languages)
        if count[lang] >= 100
    }
    for f in folds:
        print(
            f"fold {f['fold']}: {f['rows']} pairs  features {f['accuracy']:.4f}  longer-answer rule "
            f"{f['longer_wins']:.4f}  "
            f"log loss {f['log_loss']:.4f}  {f['seconds']:.1f} s"
        )
    print(f"mean: features {mean['accuracy']:.4f}  rule {mean['longer_wins']:.4f}  log loss {mean['log_loss']:.4f}")
    print(f"pooled over {rows} pairs: {json.dumps(pooled)}")
    report = {
        "device": f"cpu {platform.machine()}",
        "versions": {**versions(), "lightgbm": metadata.version("lightgbm")},
        "commit": git_commit(),
        "early_stopping_rounds": args.early_stopping,
        "encoder": args.encoder,
        "folds": folds,
        "mean": mean,
        "pooled": pooled,
    }
    out = Path(args.out or ROOT / "outputs" / "bench" / f"feature-model-{platform.node() or 'host'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
