"""Issue 12, parts 2-4: per-language specialists, the feature model and the stacker, the language tag, translation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY, WSDM_EXAMPLE, compose_train, run_cli
from duelist.runs.run_dir import RunDir
from duelist.tasks.train import train

SMALL = ["data.max_rows=200", "logger=none"]  # the split every run below shares (TINY uses the same rows)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A feature-model generalist and a tiny Gemma-2 Chinese specialist (with the language tag) on one split."""
    root = tmp_path_factory.mktemp("runs")
    train(compose_train(["model=features", *SMALL]), root / "features")
    train(
        compose_train(["model=features", *SMALL, "model.trees.num_leaves=4", "trainer.seed=1"]), root / "features_small"
    )
    train(compose_train([*TINY, "data.languages=[zh]", "model.language_tag=true"]), root / "zh")
    return {"features": root / "features", "features_small": root / "features_small", "zh": root / "zh"}


def test_a_run_records_the_settings_its_kind_never_read(runs) -> None:
    from duelist.models.trees import TreesKind

    assert json.loads((runs["features"] / "metrics.json").read_text())["unused_settings"] == list(TreesKind.unused)
    assert json.loads((runs["zh"] / "metrics.json").read_text())["unused_settings"] == []


@pytest.mark.fast
def test_runs_written_before_the_new_model_keys_still_resume_and_count_as_finished() -> None:
    from duelist.runs.states import config_differences, resolved

    cfg = compose_train([])
    old = resolved(cfg)
    del old["model"]["language_tag"]  # a run dir written before this key existed
    old["model"]["trees"] = None  # and when one schema served both kinds (the other kind's keys were None)
    old["pseudolabel"] = old.pop("distillation")  # and before train.py's distillation group had its name
    assert config_differences(old, resolved(cfg)) == []
    features = resolved(compose_train(["model=features"]))
    old_features = {
        **features,
        "model": {**features["model"], "name_or_path": None, "pooling": None, "max_length": None},
    }
    assert config_differences(old_features, features) == []
    assert config_differences(old, resolved(compose_train(["model.language_tag=true"]))) == [
        "model.language_tag: False -> True"
    ]


@pytest.mark.fast
def test_a_run_dir_written_before_the_renames_reads_with_todays_names(tmp_path) -> None:
    from omegaconf import OmegaConf

    from duelist.runs.states import resolved

    old = resolved(compose_train([]))
    old["pseudolabel"] = old.pop("distillation")
    del old["model"]["pooling"]
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(old))
    cfg = RunDir(tmp_path).read_config()
    assert "pseudolabel" not in cfg and cfg.distillation.loss == "ce" and cfg.model.pooling == "model"


@pytest.mark.fast
def test_early_stopping_keeps_the_round_with_the_lowest_validation_log_loss() -> None:
    from duelist.models.trees import FeatureModel

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(600, 4)), columns=list("abcd"))
    target = (
        (x["a"] + rng.normal(scale=2.0, size=600) > 0).astype(float).to_numpy()
    )  # noisy: the validation loss turns up
    trees = compose_train(
        [
            "model=features",
            "model.trees.n_estimators=400",
            "model.trees.early_stopping_rounds=30",
            "model.trees.learning_rate=0.2",
        ]
    ).model.trees
    model, curves = FeatureModel.fit(
        x[:400],
        target[:400],
        np.ones(400),
        trees,
        0,
        valid=(x[400:], target[400:]),
        evaluate=lambda p: {"val/accuracy": float(np.mean((p >= 0.5) == (target[400:] == 1)))},
    )
    losses = np.array(curves["val/log_loss"])
    best = int(losses[np.argmin(losses[:, 1]), 0])
    assert (
        len(losses) == best + 30 < 400
        and model.booster.num_trees() == best
        and len(curves["val/accuracy"]) == len(losses)
    )
    np.testing.assert_allclose(
        model.predict(x[400:]),
        FeatureModel.fit(
            x[:400],
            target[:400],
            np.ones(400),
            compose_train(
                ["model=features", f"model.trees.n_estimators={best}", "model.trees.learning_rate=0.2"]
            ).model.trees,
            0,
        )[0].predict(x[400:]),
    )


@pytest.mark.fast
def test_text_features_by_hand() -> None:
    from duelist.data.features import pair_features, text_features

    text = "# Title\n\n- one\n- two\n1. three\n\n**bold** and [a link](http://x.org)\n```py\nprint(1)\n```\n| a | b |\n"
    f = text_features(text)
    assert (f["headers"], f["list_items"], f["code_blocks"], f["bold"], f["table_rows"]) == (1, 3, 1, 1, 1)
    assert (
        f["links"] == 1 and text_features("see https://a.b and http://c.d")["links"] == 2
    )  # a markdown link, bare URLs
    assert f["chars"] == len(text) and f["empty"] == 0 and f["refusal"] == 0
    assert text_features("我不知道答案")["words"] == 6  # every CJK character is a word
    assert text_features("Hello, big world!")["words"] == 3
    assert (
        text_features("Извините, я не могу помочь с этим.")["refusal"] == 1
        and text_features("抱歉，我无法回答。")["refusal"] == 1
    )
    assert text_features("I'm sorry, but I can't help.")["refusal"] == 1
    assert text_features("ok\nok\nok\nfine")["repeated_lines"] == pytest.approx(0.5)  # 4 lines, 2 distinct
    empty = text_features("")
    assert empty["empty"] == 1 and empty["chars"] == 0 and empty["compression"] == 1.0
    pairs = pd.DataFrame(
        {
            "prompt": ["Как дела?"],
            "response_a": ["Хорошо, спасибо! Всё отлично."],
            "response_b": ["I am fine, thank you very much."],
            "language": ["Russian"],
        }
    )
    given, swapped = pair_features(pairs)
    assert (
        given.loc[0, "a_same_language"] == 1 and given.loc[0, "b_same_language"] == 0
    )  # B answers a Russian prompt in English
    assert (
        given.loc[0, "diff_chars"]
        == len(pairs.response_a[0]) - len(pairs.response_b[0])
        == -swapped.loc[0, "diff_chars"]
    )
    assert swapped.loc[0, "a_same_language"] == 0 and given.loc[0, "share_words"] + swapped.loc[
        0, "share_words"
    ] == pytest.approx(1.0)


def test_feature_model_beats_the_longer_answer_rule_and_infer_reloads_it(tmp_path) -> None:
    run = tmp_path / "features"
    train(compose_train(["model=features", "logger=none"]), run)  # trained in this process; infer.py reloads it below
    metrics = json.loads((run / "metrics.json").read_text())
    assert (
        metrics["val/accuracy"] > metrics["val/baseline_longer_wins"] + 0.02
    )  # the bundled validation split (478 pairs)
    assert {p.name for p in (run / "checkpoint").iterdir()} == {
        "config.yaml",
        "booster.txt",
        "columns.json",
    }  # text only, no pickle
    assert (run / "feature_importance.png").stat().st_size > 0 and (run / "curves.png").stat().st_size > 0
    assert len(json.loads((run / "history.json").read_text())["val/log_loss"]) == 150  # one point per boosting round
    oof = pd.read_parquet(run / "oof.parquet")
    hard = oof["winner"].isin(["model_a", "model_b"])
    assert metrics["val/accuracy"] == pytest.approx(
        float(((oof["p_a"] >= 0.5) == (oof["winner"] == "model_a"))[hard].mean())
    )

    out = tmp_path / "sub.csv"
    res = run_cli("infer.py", [f"runs=[{run}]", f"data.test={WSDM_EXAMPLE}", f"output={out}", "tta=swap"])
    assert res.returncode == 0, res.stderr[-3000:]
    probs = pd.read_parquet(out.with_suffix(".parquet"))
    # LightGBM reads the saved text model by itself: swap-TTA is the mean of p_a and 1 - p_a of the exchanged pair
    import lightgbm as lgb

    from duelist.data.features import pair_features
    from duelist.data.reading import load_test

    booster = lgb.Booster(model_file=str(run / "checkpoint" / "booster.txt"))
    columns = json.loads((run / "checkpoint" / "columns.json").read_text())["columns"]
    given, swapped = pair_features(load_test(str(WSDM_EXAMPLE)))
    expected = (booster.predict(given[columns]) + 1 - booster.predict(swapped[columns])) / 2
    np.testing.assert_allclose(probs["p_a"], expected, atol=1e-12)
    assert list(probs["language"]) == ["Spanish", "English", "Portuguese"]

    from duelist.core.errors import DuelistError
    from duelist.tools.export import export_run
    from duelist.tools.kaggle import needed_packages

    assert needed_packages([str(run)], merge=False, quantization="none") == {"lightgbm"}  # the Kaggle package ships it

    with pytest.raises(DuelistError, match="a feature-model run .* has nothing to merge"):
        export_run(run, tmp_path / "merged")


def test_specialist_scores_only_its_language_and_routes_with_the_generalist(runs, tmp_path) -> None:
    gen, zh = runs["features"], runs["zh"]
    gen_oof, zh_oof = RunDir(gen).read_oof(), RunDir(zh).read_oof()
    assert set(zh_oof["language"]) == {"Chinese"}
    assert set(zh_oof["id"]) == set(
        gen_oof.loc[gen_oof["language"] == "Chinese", "id"]
    )  # the specialist's validation rows line up
    assert RunDir(zh).specialty() == ["Chinese"] and RunDir(gen).specialty() is None

    from duelist.data.splits import load_train_valid

    _, valid = load_train_valid(compose_train(SMALL).data)
    test = pd.concat(
        [
            valid[["id", "prompt", "response_a", "response_b"]],
            pd.read_parquet(WSDM_EXAMPLE)[["id", "prompt", "response_a", "response_b"]].astype({"id": str}),
        ],
        ignore_index=True,
    )  # English + Chinese + the WSDM example's Spanish/Portuguese, no language column
    test.to_parquet(tmp_path / "test.parquet")
    out = tmp_path / "sub.csv"
    res = run_cli(
        "infer.py",
        [
            "ensemble=weighted",
            f"runs=[{gen},{zh}]",
            "ensemble.min_language_rows=5",
            f"data.test={tmp_path / 'test.parquet'}",
            f"output={out}",
        ],
    )
    assert res.returncode == 0, res.stderr[-3000:]
    probs = pd.read_parquet(out.with_suffix(".parquet"))
    report = json.loads(out.with_suffix(".ensemble.json").read_text())
    chinese = (probs["language"] == "Chinese").to_numpy()
    assert chinese.sum() == (valid["language"] == "Chinese").sum() and set(probs["language"]) >= {
        "English",
        "Chinese",
        "Spanish",
        "Portuguese",
    }
    assert (
        probs["p_a_run1"].notna().to_numpy().tolist() == chinese.tolist()
    )  # the specialist scored the Chinese rows only
    assert (
        probs["p_a_run0"].notna().all() and probs["p_a"].notna().all() and len(probs) == len(test)
    )  # no row left unscored
    assert report["weights"]["*"] == [1.0, 0.0] and set(report["weights"]) == {"*", "Chinese"}
    w = report["weights"]["Chinese"]
    assert w[1] > 0 and sum(w) == pytest.approx(1.0)
    expected = np.where(chinese, w[0] * probs["p_a_run0"] + w[1] * probs["p_a_run1"].fillna(0), probs["p_a_run0"])
    np.testing.assert_allclose(probs["p_a"], expected, atol=1e-12)
    # the Chinese weights were tuned on the Chinese OOF rows alone: recompute the grid search here
    both = gen_oof.merge(zh_oof[["id", "p_a"]], on="id", suffixes=("", "_zh"))
    target = both["target"].to_numpy()
    grid = np.round(np.arange(0, 1.0001, 0.05), 10)
    losses = [
        float(
            np.mean(
                -(target * np.log(np.clip(q, 1e-7, 1 - 1e-7)) + (1 - target) * np.log(np.clip(1 - q, 1e-7, 1 - 1e-7)))
            )
        )
        for q in (a * both["p_a"] + (1 - a) * both["p_a_zh"] for a in grid)
    ]
    assert w[0] == pytest.approx(grid[int(np.argmin(np.round(losses, 10)))])

    # equal weights (ensemble=mean) route the same way and need no OOF: 1/2 on Chinese rows, the generalist alone
    # elsewhere
    from conftest import compose_infer
    from duelist.tasks.submit import ensemble_weights

    report, _ = ensemble_weights(
        compose_infer(["ensemble=mean", f"runs=[{gen},{zh}]", "data.test=t.parquet"]), [gen, zh]
    )
    assert report["weights"] == {"*": [1.0, 0.0], "Chinese": [0.5, 0.5]}

    # specialists alone: a language none of them covers is refused in one line before any scoring
    from duelist.core.errors import DuelistError
    from duelist.tasks.submit import submit

    with pytest.raises(DuelistError, match=r"rows in .*English.*Spanish.* would be left unscored.*add a generalist"):
        submit(
            compose_infer([f"runs=[{zh}]", f"data.test={tmp_path / 'test.parquet'}", f"output={tmp_path / 'only.csv'}"])
        )
    assert not (tmp_path / "only.csv").exists()


def test_language_tag_opens_the_input_with_the_row_language(runs) -> None:
    from duelist.data.encoding import PairEncoder
    from duelist.models.network_build import load_tokenizer

    cfg = RunDir(runs["zh"]).read_checkpoint_config()
    assert cfg.model.language_tag is True
    tok = load_tokenizer(str(runs["zh"] / "checkpoint" / "tokenizer"))
    encoder = PairEncoder.for_model(tok, cfg.model)
    rows = pd.DataFrame({"prompt": ["Привет"], "response_a": ["a"], "response_b": ["b"], "language": ["Russian"]})
    text = tok.decode(encoder.encode(rows)[0])
    assert "Language: Russian" in text and text.index("Language: Russian") < text.index("Привет")
    untagged = PairEncoder(tok, cfg.model.template, cfg.model.max_length, cfg.model.prompt_max_tokens)
    assert "Language:" not in tok.decode(untagged.encode(rows)[0]) and untagged.fingerprint() != encoder.fingerprint()


def test_stack_is_cross_fitted(runs, tmp_path, monkeypatch) -> None:
    from duelist.models.trees import FeatureModel
    from duelist.predict import stacking

    fits: list[set] = []
    predicted: list[tuple[set, set]] = []
    key = lambda x: set(map(tuple, x[["prompt_chars", "a_chars", "b_chars", "member0_p_a"]].round(9).to_numpy()))  # noqa: E731
    fit, predict = FeatureModel.fit.__func__, FeatureModel.predict

    def recording_fit(cls, x, *args, **kwargs):
        model, curves = fit(cls, x, *args, **kwargs)
        model.trained_on = key(x)  # the rows (given and A/B-exchanged) this stacker learnt from
        fits.append(model.trained_on)
        return model, curves

    def recording_predict(self, x, swapped=None):
        predicted.append((self.trained_on, key(x)))
        return predict(self, x, swapped)

    monkeypatch.setattr(FeatureModel, "fit", classmethod(recording_fit))
    monkeypatch.setattr(FeatureModel, "predict", recording_predict)
    members = [runs["features"], runs["features_small"]]
    report, model = stacking.fit(members, compose_infer_stack().ensemble.trees)
    assert len(predicted) == stacking.PARTS and len(fits) == stacking.PARTS + 1
    scored = set()
    for seen, rows in predicted:
        assert rows and not rows & seen  # no row is scored by a stacker that saw it
        scored |= rows
    assert len(scored) == report["shared_oof_rows"]  # every shared row scored once, cross-fitted
    from duelist.data.pairs import normalized, prompt_keys, prompt_parts
    from duelist.data.splits import load_train_valid

    _, valid = load_train_valid(compose_train(SMALL).data)
    part = prompt_parts(prompt_keys(valid["prompt"]), stacking.PARTS)
    by_prompt = pd.Series(part).groupby(normalized(valid["prompt"]).to_numpy()).nunique()
    assert (by_prompt == 1).all() and part.max() == stacking.PARTS - 1  # a prompt's rows share a part
    assert set(report["oof/accuracy"]) == {"member0", "member1", "mean", "stack_cross_fitted"}

    out = tmp_path / "sub.csv"
    res = run_cli(
        "infer.py",
        ["ensemble=stack", f"runs=[{members[0]},{members[1]}]", f"data.test={WSDM_EXAMPLE}", f"output={out}"],
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert re.search(r"stack, cross-fitted +[01]\.[0-9]{4} .*scored by a stacker trained on the others", res.stdout)
    assert (out.with_suffix(".stacker") / "booster.txt").is_file() and len(pd.read_csv(out)) == 3
    from duelist.core.errors import DuelistError

    with pytest.raises(DuelistError, match="is a specialist"):
        stacking.fit([members[0], runs["zh"]], compose_infer_stack().ensemble.trees)


def compose_infer_stack():
    from conftest import compose_infer

    return compose_infer(["ensemble=stack", "data.test=t.parquet"])


def short_pairs() -> pd.DataFrame:
    """Six labelled pairs with short texts (the tiny generator's byte-level tokenizer reads one token per byte)."""
    return pd.DataFrame(
        {
            "id": [f"t{i}" for i in range(6)],
            "prompt": [
                "你好吗？",
                "什么是猫？",
                "今天天气怎么样？",
                "How are you?",
                "What is a cat?",
                "Is it raining today?",
            ],
            "response_a": ["我很好。", "猫是动物。", "晴天。", "Fine, thanks.", "A small animal.", "No, it is sunny."],
            "response_b": [
                "",
                "一种宠物。",
                "下雨了。",
                "Not bad.",
                "A pet that purrs.",
                "Yes.",
            ],  # an empty response is data
            "winner": ["model_a", "model_b", "model_a", "model_b", "model_a", "tie"],
            "language": ["Chinese"] * 3 + ["English"] * 3,
        }
    )


class EchoTranslator:
    """A stand-in translator: answers ``<language>: <text>`` from the instruction it is sent; a text with EMPTY comes
    back empty, one with LONG stops at the token limit. Its tokenizer counts words."""

    def __init__(self):
        self.tokenizer = lambda text, add_special_tokens=False: {"input_ids": text.split()}
        self.asks: list[str] = []

    def generate(self, prompts, seed):
        self.asks += list(prompts)
        language = [p.split(" into ")[1].split(".")[0] for p in prompts]
        texts = [p.split("\n\n", 1)[1] for p in prompts]
        self.at_limit = ["LONG" in x for x in texts]
        return ["" if "EMPTY" in x else f"{lang}: {x}" for lang, x in zip(language, texts)]


@pytest.mark.fast
def test_translate_rows_maps_every_text_and_leaves_out_what_would_mislabel() -> None:
    from duelist.tasks.translate import translate_rows

    t = compose_infer_stack().translate
    rows = pd.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "prompt": ["hello", "hi", "hey", " ".join(["word"] * 300)],
            "response_a": ["one", "EMPTY please", "three", "x"],
            "response_b": ["", "two", "LONG answer", "y"],
        }
    )
    backend = EchoTranslator()
    out = translate_rows(backend, rows, "Russian", t, max_prompt_tokens=100, seed=0)
    assert list(out["id"]) == ["a", "b", "c", "d"]
    assert (
        out.loc[0, "prompt"] == "Russian: hello"
        and out.loc[0, "response_a"] == "Russian: one"
        and out.loc[0, "response_b"] == ""
    )
    assert list(out["problem"].fillna("ok")) == ["ok", "empty", "cut", "too_long"]
    assert all(ask.startswith("Translate the text below into Russian.") for ask in backend.asks)
    assert not any(
        "word word" in ask for ask in backend.asks
    )  # the text that does not fit with the instruction is not sent
    t.keep_cut = True
    assert list(translate_rows(EchoTranslator(), rows, "Russian", t, 100, 0)["problem"].fillna("ok")) == [
        "ok",
        "empty",
        "ok",
        "too_long",
    ]


def test_translate_keeps_labels_resumes_and_trains_as_extra_data(tmp_path) -> None:
    from duelist.data.splits import load_train_valid

    rows = short_pairs()
    rows.to_parquet(tmp_path / "pairs.parquet")
    out = tmp_path / "translated.parquet"
    # the tiny random generator never ends an answer by itself: keep_cut keeps its (cut, gibberish) translations
    args = [
        "task=translate",
        "generate=tiny",
        f"data.test={tmp_path / 'pairs.parquet'}",
        f"output={out}",
        "+translate.to=[Russian,zh]",
        "translate.max_new_tokens=6",
        "translate.keep_cut=true",
        "generate.shard_size=2",
    ]
    res = run_cli("infer.py", args)
    assert res.returncode == 0, res.stderr[-3000:]
    first = pd.read_parquet(out)
    # English rows go to Russian and Chinese, Chinese rows to Russian only: 3 x 2 + 3
    assert sorted(first["language"].value_counts().items()) == [("Chinese", 3), ("Russian", 6)]
    assert first["translated"].all() and set(first["source_id"]) == set(rows["id"])
    source = rows.set_index("id").loc[first["source_id"]]
    assert (first["winner"].to_numpy() == source["winner"].to_numpy()).all() and (
        first["source_language"].to_numpy() == source["language"].to_numpy()
    ).all()
    assert (first["id"] == first["source_id"] + "@" + first["language"]).all()
    assert (first.loc[first["source_id"] == "t0", "response_b"] == "").all()  # the empty response stays empty
    assert (first["prompt"] != source["prompt"].to_numpy()).all()

    # a crash: the output and one shard are gone; the same command translates that shard only
    out.unlink()
    shard = sorted((tmp_path / "translated.shards").glob("shard-*.Russian.parquet"))[1]
    shard.unlink()
    res = run_cli("infer.py", args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "6 shards of 2 rows, 5 already done" in res.stdout + res.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(out), first)

    # training reads them as extra data: they never validate, and a translation of a validation row never trains
    cfg = compose_train(
        [
            "data=files",
            f"data.train=[{tmp_path / 'pairs.parquet'},{{path:{out},validate:true}}]",
            "data.n_folds=2",
            "data.ties=soft",
        ]
    ).data
    train_rows, valid = load_train_valid(cfg)
    assert (
        not valid["translated"].any() and train_rows["translated"].any()
    )  # validate:true does not make translations validate
    assert not (train_rows["translated"] & train_rows["source_id"].isin(set(valid["id"]))).any()
    assert set(train_rows.loc[train_rows["translated"], "source_id"]) <= set(rows["id"]) - set(
        valid["id"]
    )  # (the tiny model's gibberish
    # translations may repeat, and repeated pairs are deduplicated)


@pytest.mark.fast
def test_translations_of_validation_pairs_never_train_whatever_their_ids(tmp_path, monkeypatch) -> None:
    """The leakage guard finds a translation's source by its texts: a translation made from a copy of a validation pair
    under another id (dropped by dedup, or in a file that is not in data.train at all) or from a pair whose prompt is a
    validation prompt never trains."""
    from conftest import compose_infer
    from duelist.data.pairs import normalized, pair_keys
    from duelist.data.reading import load_pairs
    from duelist.data.splits import load_train_valid
    from duelist.tasks import translate as task

    sample = load_pairs("pkg:duelist/assets/sample/hh_rlhf_harmless_test.parquet", on_bad_rows="drop")
    sample = sample[~pair_keys(sample).duplicated()].iloc[:40]  # 40 distinct pairs
    sample = sample[["id", "prompt", "response_a", "response_b", "winner", "language"]].reset_index(drop=True)
    sample.to_parquet(tmp_path / "train.parquet")
    copies = sample.assign(id="copy-" + sample["id"])  # the same pairs under other ids
    copies.to_parquet(tmp_path / "extra.parquet")
    others = sample.assign(id="other-" + sample["id"], response_a=sample["response_a"] + " (another answer)")
    others.to_parquet(tmp_path / "others.parquet")  # other pairs for the same prompts
    monkeypatch.setattr(task, "make_backend", lambda gen, cfg, device: EchoTranslator())
    for name in ("extra", "others"):
        cfg = compose_infer(
            [
                "task=translate",
                "generate=tiny",
                f"data.test={tmp_path / name}.parquet",
                f"output={tmp_path / name}-ru.parquet",
                "+translate.to=[Russian]",
                "generate.max_prompt_tokens=100000",
            ]
        )
        task.translate(cfg)

    def trained_translations(*files: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        paths = ",".join(str(tmp_path / f) for f in files)
        data = compose_train(["data=files", f"data.train=[{paths}]", "data.n_folds=5"]).data
        train_rows, valid = load_train_valid(data)
        return train_rows[train_rows["translated"]], valid

    source = {f"copy-{i}": row for i, row in sample.set_index("id").iterrows()}
    source |= {f"other-{i}": row for i, row in others.assign(id=sample["id"]).set_index("id").iterrows()}
    for files in (
        ["train.parquet", "extra.parquet", "extra-ru.parquet", "others-ru.parquet"],  # copies dropped by dedup
        ["train.parquet", "extra-ru.parquet", "others-ru.parquet"],
    ):  # the translated file's source is not in data.train
        translated, valid = trained_translations(*files)
        valid_prompts = set(normalized(valid["prompt"]))
        made_from = pd.DataFrame([source[i] for i in translated["source_id"]])
        assert len(translated) and len(valid)
        assert not normalized(made_from["prompt"]).isin(valid_prompts).any()  # checked on the texts, independently
        # every translation of a pair (or a prompt) that validates was left out, and only those
        kept = {i for i in source if normalized(pd.Series([source[i]["prompt"]])).iloc[0] not in valid_prompts}
        assert set(translated["source_id"]) == kept


def test_runs_written_by_earlier_versions_still_count_as_finished(tmp_path, runs, tiny_run) -> None:
    """A network run and a feature-model run whose config.yaml an earlier version wrote (one model schema for both
    kinds, the other kind's keys None; no model.language_tag; train.py's distillation group named pseudolabel): the
    same command again finds them finished and trains nothing."""
    import shutil

    import yaml

    # copies of finished runs of these very settings (the shared ones are left as they are)
    finished = (("network", TINY, tiny_run), ("features", ["model=features", *SMALL], runs["features"]))
    for name, overrides, trained in finished:
        run = tmp_path / name
        shutil.copytree(trained, run)
        value = json.loads((run / "metrics.json").read_text())[compose_train(overrides).optimized_metric]
        old = yaml.safe_load((run / "config.yaml").read_text())
        old["pseudolabel"] = old.pop("distillation")
        if name == "network":
            del old["model"]["language_tag"]
            old["model"]["trees"] = None
        else:
            old["model"].update(dict.fromkeys(["name_or_path", "init", "pooling", "template", "max_length"], None))
        (run / "config.yaml").write_text(yaml.safe_dump(old))
        before = (run / "metrics.json").stat().st_mtime_ns
        assert train(compose_train(overrides), run) == value
        assert (run / "metrics.json").stat().st_mtime_ns == before, name  # not trained again
