"""The docs walk of docs/train-and-infer.md and docs/gpu-and-kaggle.md, as written (test_readme_walk.walk_docs)."""

from __future__ import annotations

import pytest
from test_readme_walk import walk_docs


@pytest.mark.slow
def test_train_and_infer_pages_run_as_written(tmp_path) -> None:
    walk_docs("train-and-infer", tmp_path)
