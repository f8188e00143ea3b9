"""Every config option composes; typos fail at compose time; every YAML key is commented."""

from __future__ import annotations

import re

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from conftest import CONF, compose_infer, compose_train

pytestmark = pytest.mark.fast  # the developer tier: python -m pytest -m fast

GROUPS = ["model", "lora", "data", "augment", "trainer", "logger", "distillation", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group: str, option: str) -> None:
    overrides = [f"{group}={option}"]
    if group == "data" and option == "files" or group == "experiment" and option.startswith("wsdm"):
        overrides.append("data.train=train.parquet")
    cfg = compose_train(overrides)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def test_default_job_is_minilm_on_sample() -> None:
    cfg = compose_train([])
    assert cfg.model.name == "minilm" and cfg.data.name == "sample"
    assert cfg.lora.enabled and cfg.lora.r == 64 and cfg.lora.alpha == 16 and cfg.lora.target_modules == "all-linear"
    assert cfg.model.pooling == "mean" and cfg.model.length_hint == "buckets" and cfg.trainer.lr == 1e-3
    assert cfg.logger.name == "wandb" and cfg.logger.mode == "offline"
    full = compose_train(["experiment=minilm_full"])  # the earlier demo, a recipe
    assert not full.lora.enabled and full.lora.r == 0 and full.trainer.lr == 5e-5 and full.trainer.epochs == 3
    assert (
        full.model.name == "minilm_full"
    )  # its own family in the registry: ensemble=two_model pairs it with the LoRA runs
    tiny = compose_train(["model=tiny_gemma2"])  # a model file describes the network only: no other group changes
    for group in ("lora", "trainer", "data", "augment", "logger", "distillation"):
        assert tiny[group] == cfg[group], group
    assert compose_train(["trainer.lr=1e-4"]).trainer.lr == 1e-4  # the command line beats the defaults


def test_gemma_experiment_is_the_plan() -> None:
    cfg = compose_train(["experiment=wsdm_gemma2_9b", "data.train=x.parquet"])
    assert cfg.model.name_or_path == "google/gemma-2-9b-it"
    assert cfg.model.softcapping is False and cfg.model.attn_implementation in ("auto", "eager", "flash_attention_2")
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.qlora) == (64, 16, True)
    assert cfg.augment.swap is True


@pytest.mark.parametrize("override", ["lora.rnak=8", "trainer.lrr=1e-4", "model.max_length=long", "data.n_folds=five"])
def test_typo_fails_at_compose_time(override: str) -> None:
    with pytest.raises(ConfigCompositionException):
        compose_train([override])


@pytest.mark.parametrize(
    "override,allowed",
    [
        ("trainer.precision=bf17", "auto, fp32, bf16, fp16"),
        ("model.dtype=half", "auto, fp32, bf16, fp16"),
        ("trainer.optimizer=sgd", "adamw, adamw_8bit"),
        ("optimized_metric=val/acc", "val/accuracy, val/log_loss"),
        ("data.ties=keep", "drop, soft"),
        ("distillation.loss=mse", "ce, kl"),
        ("model.pooling=cls", "model, mean"),
    ],
)
def test_a_value_outside_a_fixed_choice_fails_at_compose_time_with_the_choices(override: str, allowed: str) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        compose_train([override])
    assert allowed in str(err.value.__cause__)


@pytest.mark.parametrize(
    "override,allowed",
    [
        ("ensemble.combine=lgoit", "prob, logit"),
        ("precision=fp17", "auto, fp32"),
        ("quantization=int4", "none, int8, nf4"),
        ("tta=flip", "none, swap"),
        ("task=score", "submit, pseudolabel, generate"),
        ("device_map=sequential", "auto, balanced"),
        ("labeling.labels=fuzzy", "soft, hard"),
        ("backend=onnx", "hf, vllm"),
    ],
)
def test_an_infer_value_outside_a_fixed_choice_fails_at_compose_time(override: str, allowed: str) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        compose_infer([override, "data.test=t.parquet"])
    assert allowed in str(err.value.__cause__)


def test_precision_has_one_vocabulary_with_torch_aliases() -> None:
    import torch

    from duelist.core.hardware import torch_dtype, vllm_dtype

    cpu = torch.device("cpu")
    # the names vLLM takes; with auto, the dtype the HF backend loads those weights in on that device
    assert (vllm_dtype("auto", "auto", cpu), vllm_dtype("fp16", "auto", cpu), vllm_dtype("auto", "bf16", cpu)) == (
        "float32",
        "float16",
        "bfloat16",
    )
    for short, long, dtype in (
        ("fp32", "float32", torch.float32),
        ("bf16", "bfloat16", torch.bfloat16),
        ("fp16", "float16", torch.float16),
    ):
        assert compose_train([f"model.dtype={long}"]).model.dtype == short  # the alias is stored under the one name
        assert torch_dtype(short, cpu) is dtype and torch_dtype(long, cpu) is dtype


def test_schemas_are_not_selectable_as_group_options() -> None:
    with pytest.raises(Exception, match="trainer_schema"):
        compose_train(["trainer=trainer_schema"])


def test_infer_config_composes() -> None:
    cfg = compose_infer(["runs=[a,b]", "data.test=t.parquet", "tta=swap"])
    assert list(cfg.runs) == ["a", "b"] and cfg.data.test == "t.parquet" and cfg.tta == "swap"
    with pytest.raises(ConfigCompositionException):
        compose_infer(["data.tst=t.parquet"])


@pytest.mark.parametrize("option", options("ensemble"))
def test_every_ensemble_option_composes(option: str) -> None:
    with initialize_config_dir(config_dir=str(CONF)):
        choices = compose(
            config_name="infer", overrides=[f"ensemble={option}", "data.test=t.parquet"], return_hydra_config=True
        ).hydra.runtime.choices
    cfg = compose_infer(
        [f"ensemble={option}", "data.test=t.parquet", "translate.to=[Russian]"]
    )  # translate.to is ??? like data.test
    assert choices.ensemble == option and cfg.ensemble.weights in ("equal", "oof", "stack")
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def test_every_yaml_key_has_a_comment() -> None:
    key_line = re.compile(r"^\s*[A-Za-z_][\w.]*:")
    missing = []
    for path in sorted(CONF.rglob("*.yaml")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if (
                key_line.match(line)
                and "#" not in line
                and not line.strip().startswith("defaults:")
                and line.strip() not in ("hydra:", "job:", "run:", "trainer:", "data:")
            ):
                missing.append(f"{path.relative_to(CONF)}:{n}: {line.strip()}")
    assert not missing, "YAML keys without a comment:\n" + "\n".join(missing)


def test_translate_targets_are_added_with_plus_and_typos_fail() -> None:
    from duelist.core.command_line import check_command_line
    from duelist.core.errors import DuelistError

    cfg = compose_infer(
        ["task=translate", "+translate.to=[Russian,Vietnamese]", "data.test=t.parquet", "output=o.parquet"]
    )
    assert list(cfg.translate.to) == ["Russian", "Vietnamese"] and "{text}" in cfg.translate.instruction
    check_command_line(
        CONF, "infer", ["task=translate", "+translate.to=[Russian]", "data.test=t.parquet"]
    )  # the spelling
    with pytest.raises(DuelistError, match=r"translate has no setting too"):
        check_command_line(CONF, "infer", ["task=translate", "+translate.too=[Russian]", "data.test=t.parquet"])


@pytest.mark.parametrize("group,option", [(g, o) for g in ("labeling", "generate") for o in options(g)])
def test_every_infer_task_option_composes(group: str, option: str) -> None:
    task = "pseudolabel" if group == "labeling" else "generate"
    cfg = compose_infer(
        [f"task={task}", f"{group}={option}", "data.test=t.parquet", "output=o.parquet", "translate.to=[Russian]"]
    )
    assert cfg[group].name == option
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    with pytest.raises(ConfigCompositionException):
        compose_infer([f"{group}={option}", f"{group}.min_confidenc=0.1", "data.test=t.parquet"])


def test_attention_auto_never_picks_sdpa_for_gemma2(monkeypatch) -> None:
    import importlib.util

    import torch

    from duelist.models.network_build import attention

    gemma, llama = compose_train(["model=gemma2_9b"]).model, compose_train(["model=llama3_1_8b"]).model
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (attention(gemma), attention(llama)) == ("eager", "sdpa")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn" else real(name, *a)
    )
    for capability, expected in (
        ((7, 5), ("eager", "sdpa")),
        ((7, 0), ("eager", "sdpa")),
        ((8, 0), ("flash_attention_2",) * 2),
        ((9, 0), ("flash_attention_2",) * 2),
    ):
        # flash-attention-2 needs compute capability >= 8.0: not on a T4 (7.5) or V100 (7.0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, c=capability: c)
        assert (attention(gemma), attention(llama)) == expected, capability
    assert attention(compose_train(["model=tiny_gemma2"]).model) == "eager"  # an explicit choice is kept


def test_conf_dir_is_found_without_the_source_layout(tmp_path, monkeypatch) -> None:
    from duelist.core.errors import DuelistError
    from duelist.core.hydra_setup import conf_dir

    monkeypatch.chdir(tmp_path)  # not a checkout: the installed package's checkout is the fallback
    assert conf_dir() == CONF
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "train.yaml").write_text("defaults: []\n")
    assert conf_dir() == tmp_path / "conf"  # a Kaggle package: conf/ next to its infer.py, the working directory
    monkeypatch.setenv("DUELIST_CONF", str(CONF))
    assert conf_dir() == CONF
    monkeypatch.setenv("DUELIST_CONF", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path / "conf")
    monkeypatch.setattr(
        "duelist.core.hydra_setup.__file__",
        str(tmp_path / "venv" / "lib" / "site-packages" / "duelist" / "core" / "hydra_setup.py"),
    )  # a wheel install
    with pytest.raises(DuelistError, match="no conf/ folder with train.yaml .*set DUELIST_CONF"):
        conf_dir()


def test_run_configs_written_before_a_model_key_existed_read_with_the_value_they_were_trained_with(tmp_path) -> None:
    from duelist.runs.run_dir import RunDir

    cfg = compose_train([])
    old = OmegaConf.to_container(cfg, resolve=True)
    del old["model"]["pooling"], old["model"]["length_hint"]  # a run from before these keys
    (tmp_path / "checkpoint").mkdir()
    OmegaConf.save(OmegaConf.create(old), tmp_path / "config.yaml")
    OmegaConf.save(OmegaConf.create(old), tmp_path / "checkpoint" / "config.yaml")
    for read in (RunDir(tmp_path).read_config, RunDir(tmp_path).read_checkpoint_config):
        model = read().model
        assert (
            model.pooling == "model" and model.length_hint == "none"
        )  # [CLS] pooler, no length line: how they trained


def test_any_hugging_face_sequence_classifier_type_is_a_model_arch_and_a_typo_names_the_close_ones() -> None:
    from duelist.core.errors import DuelistError
    from duelist.tasks.checks import check_train_config

    check_train_config(compose_train(["model=tiny_qwen2", "model.arch=qwen3", "logger=none"]))  # no code knows qwen3
    check_train_config(compose_train(["model=tiny_qwen2", "model.arch=mistral", "logger=none"]))
    with pytest.raises(DuelistError, match=r"model.arch=qwen33: transformers has no \*ForSequenceClassification .*"):
        check_train_config(compose_train(["model=tiny_qwen2", "model.arch=qwen33", "logger=none"]))
    with pytest.raises(DuelistError, match=r"close: qwen3, "):
        check_train_config(compose_train(["model=tiny_qwen2", "model.arch=qwen33", "logger=none"]))


def test_a_training_token_budget_below_one_is_one_line() -> None:
    from duelist.core.errors import DuelistError
    from duelist.tasks.checks import check_train_config

    check_train_config(compose_train(["model=tiny_qwen2", "trainer.max_batch_tokens=null", "logger=none"]))
    check_train_config(compose_train(["model=tiny_qwen2", "trainer.max_batch_tokens=1", "logger=none"]))
    with pytest.raises(DuelistError, match=r"trainer.max_batch_tokens=0: must be > 0 padded tokens"):
        check_train_config(compose_train(["model=tiny_qwen2", "trainer.max_batch_tokens=0", "logger=none"]))
