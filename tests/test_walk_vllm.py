"""The docs walk of docs/vllm.md, as written (:func:`test_readme_walk.walk_docs`), in the vLLM environment."""

from __future__ import annotations

import pytest
from test_readme_walk import walk_docs

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm", reason="vLLM is not installed here: the README's vLLM environment runs these tests")


def test_vllm_page_runs_as_written(tmp_path) -> None:
    walk_docs("vllm", tmp_path)
