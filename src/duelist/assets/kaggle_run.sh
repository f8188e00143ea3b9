#!/usr/bin/env bash
# usage: bash run.sh TEST_FILE [OUTPUT_CSV] [more infer.py overrides, e.g. tta=swap time_budget_min=690]
# written by python -m duelist kaggle (the template: src/duelist/assets/kaggle_run.sh)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
TEST="$1"; OUT="${2:-submission.csv}"; shift $(( $# < 2 ? $# : 2 ))
WHEELS_PYTHON="@PYTHON@"  # the Python the compiled wheels are for ("": any)
HAVE="$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ -n "$WHEELS_PYTHON" ] && [ "$HAVE" != "$WHEELS_PYTHON" ]; then
  echo "error: this package's wheels are for Python $WHEELS_PYTHON and this is Python $HAVE: build it with Python $HAVE (python -m duelist kaggle ...)" >&2; exit 2
fi
# what scoring needs (requirements.txt), then duelist itself without the training-only rest of its dependencies;
# Kaggle runs as root, so pip's warning about root is only noise
PIP=(pip install -q --root-user-action=ignore --no-index --find-links "$HERE/wheels")
"${PIP[@]}" -r "$HERE/requirements.txt"
"${PIP[@]}" --no-deps duelist
HF_HUB_OFFLINE=1 WANDB_MODE=disabled python "$HERE/infer.py" "runs=[@RUNS@]" "data.test=$TEST" "output=$OUT" \
  "hydra.run.dir=${TMPDIR:-/tmp}/duelist-infer" @OPTIONS@"$@"
