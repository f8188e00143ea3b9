"""Small example files to follow the README with, from the bundled real sample (see assets/sample/ATTRIBUTION.md):

    python -m duelist example-data [out=.]

writes ``train.parquet`` (labelled pairs, the WSDM train layout), ``test.parquet`` (other pairs, the WSDM test
layout: id, prompt, response_a, response_b) and ``extra_prompts.parquet`` (prompts only, for ``task=generate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from duelist.core import options
from duelist.core.errors import exit_cleanly_on_user_error
from duelist.core.files import write_parquet
from duelist.core.options import option
from duelist.data.pairs import normalized
from duelist.data.reading import load_pairs

SAMPLE = [
    f"pkg:duelist/assets/sample/{name}.parquet" for name in ("hh_rlhf_harmless_test", "pandalm_test", "oasst1_zh_rank")
]
TRAIN_COLUMNS = ["id", "prompt", "response_a", "response_b", "winner", "model_a", "model_b", "language"]
TEST_COLUMNS = ["id", "prompt", "response_a", "response_b"]


def write_examples(
    out: str | Path, n_train: int = 1500, n_test: int = 300, n_prompts: int = 40, seed: int = 0
) -> dict[str, Path]:
    """Disjoint random rows of the sample: ``n_train`` labelled pairs, ``n_test`` test pairs, ``n_prompts`` prompts that
    appear in neither."""
    out = Path(out)
    rows = load_pairs(SAMPLE, on_bad_rows="drop")
    rows = rows.iloc[np.random.default_rng(seed).permutation(len(rows))].reset_index(drop=True)
    train = rows.iloc[:n_train][TRAIN_COLUMNS]
    test = rows.iloc[n_train : n_train + n_test][TEST_COLUMNS]
    rest = rows.iloc[n_train + n_test :]
    used = set(
        normalized(pd.concat([train["prompt"], test["prompt"]]))
    )  # new prompts only: none is a validation prompt
    fresh = rest[~normalized(rest["prompt"]).isin(used) & ~normalized(rest["prompt"]).duplicated()]
    prompts = fresh.iloc[:n_prompts][["id", "prompt"]]
    files = {
        "train": out / "train.parquet",
        "test": out / "test.parquet",
        "extra_prompts": out / "extra_prompts.parquet",
    }
    for name, table in (("train", train), ("test", test), ("extra_prompts", prompts)):
        write_parquet(files[name], table.reset_index(drop=True))
    return files


@dataclass
class ExampleDataOptions:
    out: str = option(".", "folder to write the three files into")


@exit_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = options.parse(ExampleDataOptions, argv, "python -m duelist example-data", __doc__.splitlines()[0])
    for name, path in write_examples(args.out).items():
        print(f"{name}: {path}")
