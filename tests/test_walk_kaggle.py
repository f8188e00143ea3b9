"""The docs walk of docs/kaggle.md, as written (:func:`test_readme_walk.walk_docs`)."""

from __future__ import annotations

import pytest
from test_readme_walk import walk_docs


@pytest.mark.slow
def test_kaggle_pages_run_as_written(tmp_path) -> None:
    walk_docs("kaggle", tmp_path)
