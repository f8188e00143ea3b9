"""Typed schemas for every config group.

Each YAML file under ``conf/`` is validated against the dataclass registered here, so a
misspelt key (``lora.rnak=8``) or a wrong type fails when Hydra composes the config, before
any work starts. The YAML files carry the user-facing comments; these classes carry the types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


@dataclass
class ModelConfig:
    name: str = MISSING
    arch: str = MISSING  # key of duelist.modeling.ARCHITECTURES
    name_or_path: str = MISSING
    init: str = "pretrained"  # pretrained | random
    config_overrides: Dict[str, Any] = field(default_factory=dict)
    softcapping: bool = False
    attn_implementation: str = "eager"
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    template: str = "plain"  # plain | chat
    max_length: int = 512
    prompt_max_tokens: int = 128


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = 64
    alpha: int = 16
    dropout: float = 0.05
    target_modules: Any = "all-linear"
    qlora: bool = False


@dataclass
class DataConfig:
    name: str = MISSING
    train: Any = MISSING  # a path or a list of paths
    valid: Any = None  # a path, a list of paths, or null for k-fold
    n_folds: int = 5
    fold: int = 0
    split_seed: int = 42
    max_rows: Optional[int] = None
    ties: str = "drop"  # drop | soft
    on_bad_rows: str = "fail"  # fail | drop
    languages: Optional[List[str]] = None
    language_quota: Dict[str, int] = field(default_factory=dict)
    dedup: bool = True


@dataclass
class AugmentConfig:
    swap: bool = False
    same_batch: bool = False


@dataclass
class TrainerConfig:
    seed: int = 42
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    eval_every: int = 0
    eval_batch_size: int = 32
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    gradient_checkpointing: bool = False
    group_by_length: bool = True
    device: str = "auto"  # auto | cpu | cuda
    strategy: str = "auto"  # auto | ddp | fsdp (several processes only)
    optimizer: str = "adamw"  # adamw | adamw_8bit


@dataclass
class LoggerConfig:
    name: str = "none"  # wandb | none
    project: str = "duelist"
    entity: Optional[str] = None
    mode: str = "offline"  # offline | online | disabled
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    log_predictions: int = 200


@dataclass
class PseudolabelConfig:
    name: str = "none"
    # labelling: python infer.py task=pseudolabel
    teachers: List[str] = field(default_factory=list)  # model names; the best run of each (runs=[...] overrides)
    tta: str = "swap"  # none | swap
    combine: str = "prob"  # prob | logit: how teachers are averaged
    min_confidence: float = 0.0  # keep rows with |p - 0.5| >= this
    require_agreement: bool = False
    top_k_per_language: Optional[int] = None
    labels: str = "soft"  # soft | hard
    round: int = 1
    # learning: python train.py (rows with pseudo_label=True)
    loss: str = "ce"  # ce | kl
    temperature: float = 1.0


@dataclass
class TrainConfig:
    model: ModelConfig = MISSING
    lora: LoraConfig = MISSING
    data: DataConfig = MISSING
    augment: AugmentConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    pseudolabel: PseudolabelConfig = MISSING
    optimized_metric: str = "val/accuracy"
    cache_dir: str = MISSING


@dataclass
class TestDataConfig:
    test: str = MISSING
    on_bad_rows: str = "fail"  # fail | drop


@dataclass
class EnsembleConfig:
    name: str = "mean"
    members: List[str] = field(default_factory=list)  # model names; the best run of each is picked
    roots: List[str] = field(default_factory=lambda: ["outputs", "multirun"])
    select_by: str = "val/accuracy"
    weights: str = "equal"  # equal | oof
    combine: str = "prob"  # prob | logit
    per_language: bool = False
    min_language_rows: int = 200
    grid_step: float = 0.05


@dataclass
class GeneratorConfig:
    name: str = MISSING  # written to model_a/model_b
    name_or_path: str = MISSING
    init: str = "pretrained"  # pretrained | random
    arch: Optional[str] = None  # random init: Hugging Face model_type
    config_overrides: Dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerateConfig:
    name: str = "hf"
    backend: str = "hf"  # hf | vllm
    generators: List[GeneratorConfig] = field(default_factory=list)
    max_prompts: Optional[int] = None
    language_quota: Dict[str, int] = field(default_factory=dict)
    max_prompt_tokens: int = 1024
    max_new_tokens: int = 512
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 42
    batch_size: int = 16
    shard_size: int = 1000
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.9


@dataclass
class InferConfig:
    task: str = "submit"  # submit | pseudolabel | generate
    runs: List[str] = MISSING
    ensemble: EnsembleConfig = MISSING
    pseudolabel: PseudolabelConfig = MISSING
    generate: GenerateConfig = MISSING
    data: TestDataConfig = field(default_factory=TestDataConfig)
    output: str = MISSING
    tta: str = "none"  # none | swap
    batch_size: int = 32
    max_batch_tokens: Optional[int] = None
    time_budget_min: Optional[float] = None
    quantization: str = "none"  # none | int8 | nf4
    backend: str = "hf"  # hf | vllm
    devices: List[str] = field(default_factory=list)
    device_map: Optional[str] = None  # null | auto | balanced
    device: str = "auto"
    precision: str = "auto"
    cache_dir: str = MISSING


GROUPS = {
    "model": ModelConfig,
    "lora": LoraConfig,
    "data": DataConfig,
    "augment": AugmentConfig,
    "trainer": TrainerConfig,
    "logger": LoggerConfig,
    "pseudolabel": PseudolabelConfig,
    "ensemble": EnsembleConfig,
    "generate": GenerateConfig,
}


def register_configs() -> None:
    """Register the schemas so every ``conf/<group>/*.yaml`` is checked against its type, and our resolvers."""
    from duelist.sweeps import direction

    if not OmegaConf.has_resolver("duelist_direction"):
        OmegaConf.register_new_resolver("duelist_direction", direction)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="infer_schema", node=InferConfig)
    for group, node in GROUPS.items():
        cs.store(group=group, name=f"{group}_schema", node=node)
