"""Hugging Face ``datasets`` sources (``hf:NAME[#CONFIG][@SPLIT]``), offline: save_to_disk folders and local data
files."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import compose_train
from duelist.core.errors import DuelistError
from duelist.data.reading import load_pairs
from duelist.data.splits import load_train_valid

pytestmark = pytest.mark.fast


def lmsys_rows(n: int, offset: int = 0) -> pd.DataFrame:
    """Rows in the LMSYS arena 55k layout (JSON-encoded turn lists, one-hot winner columns)."""
    ids = range(offset, offset + n)
    return pd.DataFrame(
        {
            "id": [str(1000 + i) for i in ids],
            "model_a": ["gpt-4"] * n,
            "model_b": ["llama-2"] * n,
            "prompt": [f'["question {i}"]' for i in ids],
            "response_a": [f'["answer a{i}"]' for i in ids],
            "response_b": [f'["answer b{i} is longer"]' for i in ids],
            "winner_model_a": [int(i % 2 == 0) for i in ids],
            "winner_model_b": [int(i % 2 == 1) for i in ids],
            "winner_tie": [0] * n,
        }
    )


def test_save_to_disk_folder_with_splits_reads_like_the_same_rows_from_a_file(tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    train, test = lmsys_rows(6), lmsys_rows(4, offset=6)
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_pandas(train), "test": datasets.Dataset.from_pandas(test)}
    ).save_to_disk(str(tmp_path / "arena"))
    test.to_csv(tmp_path / "test.csv", index=False)

    from_hub = load_pairs(f"hf:{tmp_path / 'arena'}@test")
    from_file = load_pairs(str(tmp_path / "test.csv"))
    cols = ["id", "prompt", "response_a", "response_b", "winner", "p_a"]
    pd.testing.assert_frame_equal(from_hub[cols], from_file[cols])
    assert list(from_hub["prompt"]) == [f"question {i}" for i in range(6, 10)]  # decoded from the LMSYS JSON lists
    assert len(load_pairs(f"hf:{tmp_path / 'arena'}")) == 6  # split train by default
    with pytest.raises(DuelistError, match="no split 'valid'; it has train, test"):
        load_pairs(f"hf:{tmp_path / 'arena'}@valid")


def test_load_dataset_on_a_folder_of_local_files_is_a_training_source(tmp_path) -> None:
    pytest.importorskip("datasets")
    folder = tmp_path / "pairs"
    folder.mkdir()
    lmsys_rows(40).to_parquet(folder / "part-0.parquet")
    lmsys_rows(40, offset=40).to_parquet(folder / "part-1.parquet")
    cfg = compose_train(["data=files", f"data.train=[hf:{folder}]", "data.n_folds=4", "data.dedup=false"])
    train, valid = load_train_valid(cfg.data)
    assert len(train) + len(valid) == 80 and sorted(pd.concat([train, valid])["id"]) == sorted(
        str(1000 + i) for i in range(80)
    )


def test_a_hub_id_without_network_is_one_clear_line(monkeypatch) -> None:
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(
        DuelistError, match="hf:nobody/no-such-pairs: cannot load this Hugging Face dataset .*save_to_disk"
    ):
        load_pairs("hf:nobody/no-such-pairs")
