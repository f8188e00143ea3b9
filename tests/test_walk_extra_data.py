"""The docs walk of docs/extra-data.md, as written (:func:`test_readme_walk.walk_docs`)."""

from __future__ import annotations

import pytest
from test_readme_walk import walk_docs


@pytest.mark.slow
def test_extra_data_pages_run_as_written(tmp_path) -> None:
    walk_docs("extra-data", tmp_path)
