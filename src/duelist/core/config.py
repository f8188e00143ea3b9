"""Typed schemas for every config: key names, types and fixed choices.

Hydra composes ``conf/train.yaml`` / ``conf/infer.yaml`` onto :class:`TrainConfig` / :class:`InferConfig`; a model file
names its own schema in its defaults list (``/schemas/network@_here_``: :class:`NetworkModelConfig`, or
``/schemas/trees@_here_``: :class:`TreesModelConfig`), so each kind of model holds only the keys it uses. A misspelt key
(``lora.rnak=8``), a wrong type or a value outside a fixed choice (``trainer.precision=bf17``) fails at compose time,
before any data or model is loaded, with the allowed values listed. The YAML files under ``conf/`` are the one source of
default values (and carry the comments users read); these classes carry no defaults, only the types.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


class Choice(str, Enum):
    """A fixed-choice value: equal to its name as a string (``Precision.bf16 == "bf16"``) and printed as it."""

    def __str__(self) -> str:
        return str(self.value)


class Precision(Choice):
    """Weights dtype and autocast precision; the torch names are accepted as aliases (``float16`` is ``fp16``)."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"
    float32 = "fp32"
    bfloat16 = "bf16"
    float16 = "fp16"


def precision(name: Any) -> Precision:
    """A precision name from a config (a Precision, or a plain string from an older saved config)."""
    from duelist.core.errors import DuelistError

    try:
        return name if isinstance(name, Precision) else Precision[str(name)]
    except KeyError as err:
        raise DuelistError(f"precision/dtype {name!r}: use one of {', '.join(Precision.__members__)}") from err


# metric names hold a slash, so these enums are built by name
Metric = Choice("Metric", {"val/accuracy": "val/accuracy", "val/log_loss": "val/log_loss"})  # type: ignore[call-overload]


class TreesArch(Choice):
    features = "features"  # gradient-boosted trees (LightGBM) on hand-made pair features (duelist.models.trees)


class Init(Choice):
    pretrained = "pretrained"
    random = "random"


class Attention(Choice):
    auto = "auto"
    eager = "eager"
    sdpa = "sdpa"
    flash_attention_2 = "flash_attention_2"


class Template(Choice):
    plain = "plain"
    chat = "chat"


class Pooling(Choice):
    model = "model"
    mean = "mean"


class Hardware(Choice):
    """``infer.py hardware=``: a machine of :data:`duelist.core.hardware.THROUGHPUT`."""

    t4x2 = "t4x2"
    h100 = "h100"


class Head(Choice):
    """``model.head``: ``pair`` reads both responses in one sequence into a 2-label head; ``reward`` scores prompt +
    response A and prompt + response B as two sequences with a one-output head, ``p_a = sigmoid(r_a - r_b)``."""

    pair = "pair"
    reward = "reward"


class LengthHint(Choice):
    none = "none"
    buckets = "buckets"
    chars = "chars"


class Ties(Choice):
    drop = "drop"
    soft = "soft"


class BadRows(Choice):
    fail = "fail"
    drop = "drop"


class Device(Choice):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Strategy(Choice):
    auto = "auto"
    ddp = "ddp"
    fsdp = "fsdp"


class Optimizer(Choice):
    adamw = "adamw"
    adamw_8bit = "adamw_8bit"


class Tracker(Choice):
    wandb = "wandb"
    none = "none"


class WandbMode(Choice):
    offline = "offline"
    online = "online"
    disabled = "disabled"


class TTA(Choice):
    none = "none"
    swap = "swap"


class Combine(Choice):
    prob = "prob"
    logit = "logit"


class Labels(Choice):
    soft = "soft"
    hard = "hard"


class PseudoLoss(Choice):
    ce = "ce"
    kl = "kl"


class Weights(Choice):
    equal = "equal"
    oof = "oof"
    stack = "stack"


class Task(Choice):
    submit = "submit"
    pseudolabel = "pseudolabel"
    generate = "generate"
    translate = "translate"
    oof = "oof"


class Quantization(Choice):
    none = "none"
    int8 = "int8"
    nf4 = "nf4"


class Backend(Choice):
    hf = "hf"
    vllm = "vllm"


class DeviceMap(Choice):
    auto = "auto"
    balanced = "balanced"


@dataclass
class TreesConfig:
    """LightGBM settings of a feature model (``model=features``) or a stacker (``ensemble=stack``)."""

    n_estimators: int = MISSING
    learning_rate: float = MISSING
    num_leaves: int = MISSING
    min_child_samples: int = MISSING
    feature_fraction: float = MISSING
    bagging_fraction: float = MISSING
    lambda_l2: float = MISSING
    early_stopping_rounds: int = MISSING
    threads: int = MISSING


@dataclass
class NetworkModelConfig:
    """``model=<a network>``: a Hugging Face sequence classifier, its tokenizer and the token budget of a pair."""

    name: str = MISSING
    arch: str = MISSING  # any Hugging Face model_type with a *ForSequenceClassification class (checked before a job)
    name_or_path: str = MISSING
    init: Init = MISSING
    config_overrides: Dict[str, Any] = MISSING
    softcapping: bool = MISSING
    attn_implementation: Attention = MISSING
    dtype: Precision = MISSING
    pooling: Pooling = MISSING
    head: Head = MISSING
    template: Template = MISSING
    length_hint: LengthHint = MISSING
    language_tag: bool = MISSING
    max_length: int = MISSING
    prompt_max_tokens: int = MISSING


@dataclass
class TreesModelConfig:
    """``model=features``: LightGBM on hand-made features of the pair (no network)."""

    name: str = MISSING
    arch: TreesArch = MISSING
    trees: TreesConfig = MISSING


MODEL_SCHEMAS = {"network": NetworkModelConfig, "trees": TreesModelConfig}  # the name in conf/model/*.yaml defaults
# network keys added after runs were first written, with the value every run written before them was trained with
ADDED_NETWORK_KEYS = {"pooling": "model", "head": "pair", "length_hint": "none", "language_tag": False}


def model_schema(model: Any) -> str:
    """``trees`` or ``network``: the schema a model config follows (a composed config knows its type; a saved one is
    told by its ``arch``). The one place that reads it: :func:`duelist.models.kinds.kind_of` builds on it."""
    typed = OmegaConf.get_type(model) if OmegaConf.is_config(model) else None
    if typed in (NetworkModelConfig, TreesModelConfig):
        return "trees" if typed is TreesModelConfig else "network"
    return "trees" if str(model.get("arch")) == TreesArch.features.value else "network"


# top-level keys renamed since runs were first written: old name -> new name
RENAMED_KEYS = {"pseudolabel": "distillation"}


def upgraded(cfg: Any) -> Any:
    """A run's saved config (a DictConfig or a plain dict) as this version names it, with the values its run was
    trained with: renamed keys (:data:`RENAMED_KEYS`) under their new names, and network keys added after the run was
    written (:data:`ADDED_NETWORK_KEYS`) with their old values. Changed in place and returned."""
    for old, new in RENAMED_KEYS.items():
        if old in cfg and new not in cfg:
            cfg[new] = cfg.pop(old)
    model = cfg.get("model")
    if model is not None and hasattr(model, "keys") and model_schema(model) == "network":
        for key, value in ADDED_NETWORK_KEYS.items():
            if key not in model:
                model[key] = value
    return cfg


def flatten(values: dict[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; an empty dict stays a value."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, sep, f"{name}{sep}"))
        else:
            out[name] = value
    return out


@dataclass
class LoraConfig:
    enabled: bool = MISSING
    r: int = MISSING
    alpha: int = MISSING
    dropout: float = MISSING
    target_modules: Any = MISSING
    qlora: bool = MISSING


@dataclass
class DataConfig:
    name: str = MISSING
    train: Any = MISSING  # a path or a list of paths / {path, weight, max_rows, validate}
    valid: Any = MISSING  # a path, a list of paths, or null for k-fold
    n_folds: int = MISSING
    fold: int = MISSING
    split_seed: int = MISSING
    max_rows: Optional[int] = MISSING
    ties: Ties = MISSING
    on_bad_rows: BadRows = MISSING
    languages: Optional[List[str]] = MISSING
    language_quota: Dict[str, int] = MISSING
    dedup: bool = MISSING


@dataclass
class AugmentConfig:
    swap: bool = MISSING
    same_batch: bool = MISSING


@dataclass
class TrainerConfig:
    seed: int = MISSING
    epochs: float = MISSING
    max_steps: int = MISSING
    batch_size: int = MISSING
    grad_accum: int = MISSING
    lr: float = MISSING
    head_lr: float = MISSING
    weight_decay: float = MISSING
    warmup_ratio: float = MISSING
    max_grad_norm: float = MISSING
    eval_every: int = MISSING
    eval_batch_size: int = MISSING
    precision: Precision = MISSING
    gradient_checkpointing: bool = MISSING
    group_by_length: bool = MISSING
    device: Device = MISSING
    strategy: Strategy = MISSING
    dist_timeout_min: float = MISSING
    optimizer: Optimizer = MISSING
    save_every: int = MISSING
    keep_states: int = MISSING
    resume: str = MISSING


@dataclass
class LoggerConfig:
    """``logger=none`` sets only ``name``: the W&B settings are None there (not applicable, not defaults)."""

    name: Tracker = MISSING
    project: Optional[str] = None
    entity: Optional[str] = None
    mode: Optional[WandbMode] = None
    group: Optional[str] = None
    run_name: Optional[str] = None
    tags: Optional[List[str]] = None
    log_predictions: Optional[int] = None


@dataclass
class DistillationConfig:
    """train.py: how rows of pseudo-labelled files (``pseudo_label=true``, written by ``infer.py task=pseudolabel``)
    are learnt from their teachers' probabilities."""

    loss: PseudoLoss = MISSING
    temperature: float = MISSING


@dataclass
class TrainConfig:
    model: Any = MISSING  # NetworkModelConfig or TreesModelConfig: each model file names its schema
    lora: LoraConfig = MISSING
    data: DataConfig = MISSING
    augment: AugmentConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    distillation: DistillationConfig = MISSING
    optimized_metric: Metric = MISSING  # type: ignore[valid-type]
    cache_dir: str = MISSING


@dataclass
class TestDataConfig:
    test: str = MISSING
    on_bad_rows: BadRows = MISSING


@dataclass
class EnsembleConfig:
    """How runs are picked and combined. Weighted ensembles (``weights: equal | oof``) set the combination keys;
    ``weights: stack`` sets ``trees`` (the stacker's LightGBM settings) instead: the keys a mode does not use are
    None."""

    members: Any = MISSING  # auto (the best run of each of the two best model names) or a list of model names
    roots: List[str] = MISSING
    select_by: Metric = MISSING  # type: ignore[valid-type]
    weights: Weights = MISSING
    combine: Optional[Combine] = None
    per_language: Optional[bool] = None
    min_language_rows: Optional[int] = None
    grid_step: Optional[float] = None
    cascade: Optional[bool] = None
    trees: Optional[TreesConfig] = None
    stacker: Optional[str] = None


@dataclass
class LabelingConfig:
    """infer.py task=pseudolabel: which teachers label, and which rows are kept with which labels."""

    name: str = MISSING
    teachers: List[str] = MISSING
    tta: TTA = MISSING
    combine: Combine = MISSING
    min_confidence: float = MISSING
    require_agreement: bool = MISSING
    top_k_per_language: Optional[int] = MISSING
    labels: Labels = MISSING
    round: int = MISSING


@dataclass
class GeneratorConfig:
    name: str = MISSING  # written to model_a/model_b
    name_or_path: str = MISSING
    init: Init = MISSING
    arch: Optional[str] = MISSING  # random init: Hugging Face model_type
    config_overrides: Dict[str, Any] = MISSING


@dataclass
class GenerateConfig:
    name: str = MISSING
    backend: Backend = MISSING
    generators: List[GeneratorConfig] = MISSING
    max_prompts: Optional[int] = MISSING
    language_quota: Dict[str, int] = MISSING
    max_prompt_tokens: int = MISSING
    max_new_tokens: int = MISSING
    temperature: float = MISSING
    top_p: float = MISSING
    seed: int = MISSING
    batch_size: int = MISSING
    shard_size: int = MISSING
    dtype: Precision = MISSING
    gpu_memory_utilization: float = MISSING


@dataclass
class TranslateConfig:
    """infer.py task=translate: into which languages, with which instruction (the model is
    ``generate.generators[0]``)."""

    to: List[str] = MISSING
    instruction: str = MISSING
    max_new_tokens: int = MISSING
    keep_cut: bool = MISSING


@dataclass
class InferConfig:
    task: Task = MISSING
    runs: List[str] = MISSING
    ensemble: EnsembleConfig = MISSING
    labeling: LabelingConfig = MISSING
    generate: GenerateConfig = MISSING
    translate: TranslateConfig = MISSING
    data: TestDataConfig = MISSING
    output: str = MISSING
    tta: TTA = MISSING
    batch_size: int = MISSING
    max_batch_tokens: Optional[int] = MISSING
    time_budget_min: Optional[float] = MISSING
    hardware: Optional[Hardware] = MISSING
    quantization: Quantization = MISSING
    backend: Backend = MISSING
    devices: List[str] = MISSING
    device_map: Optional[DeviceMap] = MISSING
    device: Device = MISSING
    precision: Precision = MISSING
    shard_rows: int = MISSING
    cache_dir: str = MISSING


def conf_dir() -> Path:
    """The ``conf/`` folder: ``$DUELIST_CONF`` if set, else ``./conf`` (a checkout, or the Kaggle package next to its
    infer.py), else the checkout this package is installed from (``pip install -e .``). Works for wheel installs too."""
    candidates = [Path(os.environ["DUELIST_CONF"])] if os.environ.get("DUELIST_CONF") else []
    candidates += [Path.cwd() / "conf", Path(__file__).resolve().parents[3] / "conf"]
    for folder in candidates:
        if (folder / "train.yaml").is_file():
            return folder
    from duelist.core.errors import DuelistError

    raise DuelistError(
        f"no conf/ folder with train.yaml in {', '.join(map(str, candidates))}: run from a duelist checkout or set "
        "DUELIST_CONF=PATH/conf"
    )


# what Hydra may instantiate from our configs (hydra.main's execution_whitelist): our callbacks and plugins, Hydra's
# launchers and Optuna's samplers, and the logging handlers of Hydra's job_logging
TRUSTED_TARGETS = ("duelist.*", "hydra_plugins.*", "hydra._internal.*", "optuna.samplers.*", "logging.*")


def multirun_group() -> Optional[str]:
    """Resolver ``duelist_multirun_group``: the W&B group of a multirun job (the Optuna study name, else the sweep
    dir, so every multirun is one group); None outside a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hc = HydraConfig.get()
    return str(hc.sweeper.get("study_name") or hc.sweep.dir)


def multirun_job_name() -> Optional[str]:
    """Resolver ``duelist_multirun_job_name``: what sets a multirun job apart, its overrides that the command line did
    not give every job (``lora.r=16`` from ``-m lora.r=16,32,64``; an Optuna trial's sampled values); None outside a
    multirun."""
    import sys

    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hc = HydraConfig.get()
    parser = OverridesParser.create()
    try:  # the local launcher runs every job in the process the command started: its argv holds the common overrides
        common = {
            o.get_key_element()
            for o in parser.parse_overrides([a for a in sys.argv[1:] if "=" in a and not a.startswith("-")])
            if not o.is_sweep_override()
        }
    except Exception:  # another launcher's entry point: keep every override
        common = set()
    own = [
        str(o.input_line) for o in parser.parse_overrides(list(hc.overrides.task)) if o.get_key_element() not in common
    ]
    return ",".join(own) if own else f"job{hc.job.num}"


def register_configs() -> None:
    """Register the two top-level schemas (every group is typed through them), the two model schemas (under
    ``schemas/``, named by each model file's defaults list; not a group of train.yaml) and our resolvers."""
    from duelist.core.metrics import direction

    if not OmegaConf.has_resolver("duelist_direction"):
        OmegaConf.register_resolver("duelist_direction", direction)
    for name, resolver in (
        ("duelist_multirun_group", multirun_group),
        ("duelist_multirun_job_name", multirun_job_name),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_resolver(name, resolver)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig, replace=True)
    cs.store(name="infer_schema", node=InferConfig, replace=True)
    for name, schema in MODEL_SCHEMAS.items():
        cs.store(group="schemas", name=name, node=schema, replace=True)


# Hydra's own flags that take a value (the next argument is not an override)
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--experimental-rerun"}
_OTHER_CONFIG = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}


def entry_point_groups(config_dir: Path) -> dict[str, list[str]]:
    """The config groups each entry point composes (``train``, ``infer``: the groups of its defaults list)."""
    import yaml

    groups = {}
    for name in ("train", "infer"):
        defaults = yaml.safe_load((Path(config_dir) / f"{name}.yaml").read_text()).get("defaults", [])
        groups[name] = [next(iter(d)) for d in defaults if isinstance(d, dict) and not next(iter(d)).startswith("over")]
    return groups


def _one_line(err: Exception, overrides: list[str], config_dir: Path, config_name: str) -> str:
    """Hydra's several-line composition error as one line that names the setting and what is allowed."""
    import re

    text, cause = str(err), err.__cause__
    missing_option = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if missing_option:
        group, option = missing_option.groups()
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        return f"{group}={option}: no such option in conf/{group}/; available: {', '.join(options)}"
    key = re.search(r"Could not override '([^']+)'", text) or re.search(r"Error merging override ([^=\s]+)=", text)
    key = key.group(1) if key else None
    if key and "No match in the defaults list" in text:  # a group of the other entry point
        groups = entry_point_groups(config_dir)
        owner = next((f"; it is a group of {name}.py" for name, own in groups.items() if key in own), "")
        own = ", ".join(groups[config_name])
        return f"{key}: not a group of {config_name}.py{owner}; {config_name}.py's groups: {own}"
    if key and cause is not None and type(cause).__name__ in ("ConfigKeyError", "ConfigAttributeError"):
        parent, _, leaf = key.rpartition(".")
        known = ""
        try:
            from hydra import compose, initialize_config_dir

            with initialize_config_dir(str(config_dir)):
                cfg = compose(config_name, overrides=[o for o in overrides if not o.split("=")[0].lstrip("+~") == key])
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if node is not None and hasattr(node, "keys"):
                known = f"; {parent or config_name} has: {', '.join(map(str, node.keys()))}"
        except Exception:  # the list of keys is a courtesy; the line stands without it
            pass
        return f"{key}: no such setting{known} (every key is in conf/, with a comment)"
    if key and cause is not None:
        first = str(cause).strip().splitlines()[0]
        value = next(
            (o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == key and "=" in o), None
        )
        return f"{key}={value}: {first}" if value is not None else f"{key}: {first}"
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("To append")]
    return "; ".join(lines)


def check_command_line(config_dir: str | Path, config_name: str, argv: list[str]) -> None:
    """Compose ``config_dir/config_name`` (the entry point's own ``conf/``) with the command line's overrides before
    Hydra runs (the first value of each sweep), so a typo in a key, a group option or a fixed-choice value stops with
    one ``error:`` line and exit code 2, like every other input error (Hydra itself prints several lines, suggests
    ``+key=value`` and exits 1). ``hydra.*`` settings, Hydra's own flags and commands with another config are left to
    Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from duelist.core.errors import DuelistError

    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _OTHER_CONFIG or arg.split("=")[0] in _OTHER_CONFIG:
            return
        elif arg.startswith("-"):
            skip = arg in _FLAGS_WITH_VALUE
        else:
            args.append(arg)
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except Exception:
        return  # a syntax error: Hydra reports it with the position
    overrides = []
    for override in parsed:
        if override.key_or_group.split("/")[0].split(".")[0] == "hydra":
            continue
        if override.is_sweep_override():
            try:
                overrides.append(f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}")
            except Exception:  # interval(...) and other sweeper-only syntax: the sweeper checks it
                continue
        else:
            overrides.append(override.input_line)
    try:
        with initialize_config_dir(str(Path(config_dir).resolve())):
            cfg = compose(config_name, overrides=overrides)
    except Exception as err:
        raise DuelistError(_one_line(err, overrides, Path(config_dir).resolve(), config_name)) from err
    import dataclasses

    for override in parsed:  # +key / ++key add keys to open maps (data.language_quota); a typed group has none to add
        parent, _, leaf = override.key_or_group.rpartition(".")
        if (override.is_add() or override.is_force_add()) and parent and parent.split(".")[0] != "hydra":
            node = OmegaConf.select(cfg, parent)
            schema = OmegaConf.get_type(node) if node is not None else None
            if (
                schema is not None
                and dataclasses.is_dataclass(schema)
                and leaf not in {f.name for f in dataclasses.fields(schema)}
            ):
                known = ", ".join(k for k in node.keys() if k != leaf)
                raise DuelistError(
                    f"{override.input_line}: {parent} has no setting {leaf} to add ({parent} has: {known}); "
                    f"+ adds keys only to open maps such as data.language_quota"
                )
