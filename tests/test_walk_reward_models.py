"""The docs walk of docs/reward-models.md, as written (test_readme_walk.walk_docs)."""

from __future__ import annotations

import pytest
from test_readme_walk import walk_docs


@pytest.mark.slow
def test_reward_models_page_runs_as_written(tmp_path) -> None:
    walk_docs("reward-models", tmp_path)
