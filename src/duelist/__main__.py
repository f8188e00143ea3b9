"""python -m duelist COMMAND [ARGS]: duelist's tools, one command each (train.py and infer.py train and score;
these look after runs and ship them).

    python -m duelist runs [sort=METRIC] [model=NAME] [roots=[DIR,...]]   the finished runs, best first
    python -m duelist review dir=DIR | study=NAME                         the review page of a multirun or a study
    python -m duelist export run=RUN out=DIR                              LoRA adapters merged into the weights
    python -m duelist kaggle runs=[RUN,...] out=DIR                       the offline Kaggle package
    python -m duelist bench model=NAME [train=true]                       inference and training speed, MFU
    python -m duelist footprint model=NAME layers=2                       FLOPs, memory at real width, projected
    python -m duelist plan runs=[RUN,...] test=FILE hardware=t4x2         infer.py's hours on that machine
    python -m duelist eda data=files data.train=FILE                      a data report (train.py's config groups)
    python -m duelist example-data [out=DIR]                              example files from the bundled sample

Every command takes key=value options, as train.py and infer.py do (lists as key=[a,b]); COMMAND --help lists them.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "runs": "duelist.runs.registry",
    "review": "duelist.tools.review",
    "export": "duelist.tools.export",
    "kaggle": "duelist.tools.kaggle",
    "bench": "duelist.tools.bench",
    "footprint": "duelist.tools.footprint",
    "plan": "duelist.tools.plan",
    "eda": "duelist.tools.eda",
    "example-data": "duelist.tools.example_data",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}; one of {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    result = importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
