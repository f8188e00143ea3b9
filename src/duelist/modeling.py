"""One factory for every model: build, wrap with (Q)LoRA, save and reload a checkpoint.

Models differ only in config (``conf/model/*.yaml``): a pretrained path or hub id, or a random
init of a real architecture (``init: random`` + ``config_overrides``) for fast tests.
Checkpoints are safetensors only:

    checkpoint/config.yaml        resolved run config (what infer.py rebuilds from)
    checkpoint/tokenizer/         the tokenizer
    checkpoint/adapter/           LoRA adapter + the trained classification head (modules_to_save)
    checkpoint/base/              the random-init base weights (random-init models with LoRA only)
    checkpoint/model/             full weights (lora=none)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from duelist.config import Precision, precision
from duelist.errors import DuelistError
from duelist.files import atomic_dir, resolve_path
from duelist.rundir import CONFIG, RunDir

log = logging.getLogger(__name__)
# texts are tokenised whole before they are cut to budget; the "longer than the model maximum" warning is expected
logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)

HEAD_NAMES = ("classifier", "score")  # names of the sequence-classification heads in HF models


def _gemma2_options(model_cfg: Any) -> dict[str, Any]:
    # The plan trains with attention and final-logit softcapping off; ``model.softcapping=true`` keeps
    # the pretrained values (50.0 / 30.0 for Gemma-2).
    return {} if model_cfg.softcapping else {"attn_logit_softcapping": None, "final_logit_softcapping": None}


def _no_options(model_cfg: Any) -> dict[str, Any]:
    return {}


# arch (Hugging Face model_type) -> extra config values derived from our model config
ARCHITECTURES: dict[str, Callable[[Any], dict[str, Any]]] = {
    "gemma2": _gemma2_options,
    "qwen2": _no_options,
    "llama": _no_options,
    "bert": _no_options,
}


def attention(model_cfg: Any) -> str:
    """``attn_implementation``; ``auto`` is flash-attention-2 on a GPU with ``flash_attn`` installed, else eager for
    Gemma-2 (transformers >= 5.21 refuses sdpa for it) and sdpa for the others."""
    name = model_cfg.attn_implementation
    if name != "auto":
        return name
    if torch.cuda.is_available():
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return "eager" if model_cfg.arch == "gemma2" else "sdpa"


class MeanPooler(torch.nn.Module):
    """Stands in for BERT's [CLS] pooler (``model.pooling=mean``): the mean of the last hidden states over the real
    tokens. Sentence encoders such as all-MiniLM-L6-v2 were trained for mean pooling; their [CLS] pooler was not,
    and LoRA through it collapses to one output for every input (measured: 0.50 accuracy, vs 0.61 with mean pooling
    after one epoch). The attention mask reaches it from a hook on the encoder's forward call."""

    def __init__(self) -> None:
        super().__init__()
        self.mask: Optional[torch.Tensor] = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return hidden_states.mean(dim=1)
        mask = self.mask.to(hidden_states.dtype).unsqueeze(-1)
        return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def apply_pooling(model: torch.nn.Module, model_cfg: Any) -> torch.nn.Module:
    """``model.pooling``: ``model`` keeps the architecture's own head input ([CLS] pooler for BERT, last token for
    decoders); ``mean`` (BERT-style encoders only) replaces the pooler with :class:`MeanPooler`."""
    if model_cfg.pooling == "model":
        return model
    encoder = model.base_model
    pooler = MeanPooler()
    encoder.pooler = pooler

    def remember_mask(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        pooler.mask = kwargs.get("attention_mask")

    encoder.register_forward_pre_hook(remember_mask, with_kwargs=True)
    return model


@dataclass
class Built:
    model: torch.nn.Module
    tokenizer: Any
    init_state: Optional[dict[str, torch.Tensor]] = None  # random-init base weights, saved with the checkpoint


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DuelistError("device=cuda but no CUDA GPU is visible; use device=auto or device=cpu")
    return torch.device(name)


def torch_dtype(name: Any, device: torch.device) -> torch.dtype:
    """The torch dtype of a precision name (:class:`~duelist.config.Precision`, the one vocabulary for weights
    and autocast): ``auto`` is bf16 on a GPU that supports it, fp16 on older GPUs (T4, V100), fp32 on CPU."""
    choice = precision(name)
    if choice == Precision.auto:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {Precision.fp32: torch.float32, Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}[choice]


def vllm_dtype(name: Any) -> str:
    """vLLM's name for a precision: ``auto`` stays auto (vLLM picks), the others are torch's names (``float16``, ...)."""
    if precision(name) == Precision.auto:
        return "auto"
    return str(torch_dtype(name, torch.device("cpu"))).removeprefix("torch.")


def _looks_local(path: str) -> bool:
    return os.path.isabs(path) or path.startswith((".", "~", "pkg:")) or os.path.exists(path)


def _load_error(what: str, path: str, err: Exception) -> DuelistError:
    if _looks_local(path):
        return DuelistError(f"model.{what}={path}: cannot load from this local path ({str(err).splitlines()[0]})")
    return DuelistError(
        f"model.{what}={path}: not found locally and the hub cannot be reached. On a machine with network run "
        f"`hf download {path} --local-dir DIR`, copy DIR here and pass model.{what}=DIR"
    )


def load_tokenizer(path: str, what: str = "name_or_path") -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve_path(path))
    except Exception as err:  # OSError, HF hub errors, connection errors ...
        raise _load_error(what, path, err) from err
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def check_model_config(model_cfg: Any, lora_cfg: Any, device: torch.device) -> None:
    """Stop before loading anything when the combination cannot work here."""
    if not lora_cfg.enabled and (lora_cfg.r or lora_cfg.alpha):
        keys = " and ".join(f"lora.{k}={lora_cfg[k]}" for k in ("r", "alpha") if lora_cfg[k])
        raise DuelistError(
            f"{keys} has no effect: adapters are off (lora=none: full fine-tuning of every weight). "
            f"Drop lora=none (or the experiment that sets it) to train LoRA adapters"
        )
    if model_cfg.pooling == "mean" and model_cfg.arch != "bert":
        raise DuelistError(f"model.pooling=mean is for BERT-style encoders (arch=bert); {model_cfg.arch} classifies from its last token: use model.pooling=model")
    if lora_cfg.enabled and lora_cfg.qlora:
        # bitsandbytes loads and runs 4-bit layers on a CPU without complaint, so we refuse ourselves.
        if device.type != "cuda":
            raise DuelistError("lora.qlora=true needs a CUDA GPU (4-bit nf4 via bitsandbytes); on this machine use lora.qlora=false")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as err:
            raise DuelistError("lora.qlora=true needs bitsandbytes: pip install 'duelist[qlora]'") from err


def _quantization(lora_cfg: Any, inference: str = "none") -> Any:
    """bitsandbytes settings: nf4 for QLoRA training; ``inference`` int8 (LLM.int8) or nf4 when scoring."""
    kind = inference if inference != "none" else ("nf4" if lora_cfg.enabled and lora_cfg.qlora else "none")
    if kind == "none":
        return None
    from transformers import BitsAndBytesConfig

    keep = list(HEAD_NAMES)  # the 2-output head stays in full precision
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)
    compute = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute, llm_int8_skip_modules=keep
    )


def check_quantization(kind: str, device: torch.device) -> None:
    if kind == "none":
        return
    if device.type != "cuda":
        raise DuelistError(f"quantization={kind} needs a CUDA GPU (bitsandbytes); on this machine use quantization=none")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise DuelistError(f"quantization={kind} needs bitsandbytes: pip install 'duelist[qlora]'") from err


def build_base(model_cfg: Any, lora_cfg: Any, tokenizer: Any, dtype: torch.dtype, seed: int, weights: Optional[str] = None,
               quantization: str = "none", device_map: Optional[str] = None) -> torch.nn.Module:
    """The sequence-classification model (2 labels) without adapters.

    ``weights``: a folder of saved base weights (used when reloading a random-init checkpoint);
    ``quantization``: int8 | nf4 loading for inference; ``device_map``: auto | balanced spreads the
    layers over the visible GPUs (a model too big for one).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    extra = dict(ARCHITECTURES[model_cfg.arch](model_cfg))
    extra.update(OmegaConf.to_container(model_cfg.config_overrides) if isinstance(model_cfg.config_overrides, DictConfig) else dict(model_cfg.config_overrides))
    common = dict(num_labels=2, pad_token_id=tokenizer.pad_token_id)
    if weights is not None or model_cfg.init == "pretrained":
        source = weights or resolve_path(model_cfg.name_or_path)
        quant = _quantization(lora_cfg, quantization)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                source, dtype=dtype, attn_implementation=attention(model_cfg),
                quantization_config=quant, device_map=device_map or ({"": torch.cuda.current_device()} if quant else None),
                # a reward model's 1-output head (or any other head shape) is replaced by a fresh 2-label head
                ignore_mismatched_sizes=weights is None,
                **common, **({} if weights else extra),
            )
        except Exception as err:
            raise _load_error("name_or_path", model_cfg.name_or_path, err) from err
    else:
        config = AutoConfig.for_model(model_cfg.arch, **{"vocab_size": len(tokenizer), **common, **extra})  # overrides may set a real vocab size
        config._attn_implementation = attention(model_cfg)
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    return apply_pooling(model, model_cfg)


def add_lora(model: torch.nn.Module, lora_cfg: Any, gradient_checkpointing: bool) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if lora_cfg.qlora:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    targets = lora_cfg.target_modules
    targets = targets if isinstance(targets, str) else list(targets)
    config = LoraConfig(task_type="SEQ_CLS", r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout, target_modules=targets)
    # task_type=SEQ_CLS puts the classification head in modules_to_save: it is trained and saved with the adapter.
    return get_peft_model(model, config)


def build_model(model_cfg: Any, lora_cfg: Any, device: torch.device, seed: int, gradient_checkpointing: bool = False) -> Built:
    check_model_config(model_cfg, lora_cfg, device)
    tokenizer = load_tokenizer(model_cfg.name_or_path)
    dtype = torch_dtype(model_cfg.dtype, device)
    if lora_cfg.enabled and dtype != torch.float32 and device.type == "cpu":
        dtype = torch.float32
    model = build_base(model_cfg, lora_cfg, tokenizer, dtype, seed)
    init_state = None
    if model_cfg.init == "random" and lora_cfg.enabled:
        init_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora_cfg.enabled:
        model = add_lora(model, lora_cfg, gradient_checkpointing)
    if not (lora_cfg.enabled and lora_cfg.qlora):
        model.to(device)
    return Built(model, tokenizer, init_state)


def head_and_body_parameters(model: torch.nn.Module) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """Trainable parameters split into the classification head and the rest (adapters or backbone)."""
    head, body = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        parts = name.split(".")
        (head if any(h in parts for h in HEAD_NAMES) else body).append(param)
    return head, body


def save_checkpoint(built: Built, run_config: DictConfig, target: str | Path, state_dict: Optional[dict[str, torch.Tensor]] = None) -> None:
    """Write ``target`` atomically: it appears complete or not at all. ``state_dict``: the full weights
    when the model itself is sharded (FSDP), else the model's own are saved."""
    with atomic_dir(target) as tmp:
        OmegaConf.save(run_config, tmp / CONFIG, resolve=True)
        built.tokenizer.save_pretrained(tmp / "tokenizer")
        model = built.model
        if hasattr(model, "peft_config"):
            model.save_pretrained(tmp / "adapter", safe_serialization=True, state_dict=state_dict)
            if built.init_state is not None:
                base = model.get_base_model()
                base.config.save_pretrained(tmp / "base")
                from safetensors.torch import save_file

                save_file({k: v.contiguous() for k, v in built.init_state.items()}, str(tmp / "base" / "model.safetensors"))
        else:
            model.save_pretrained(tmp / "model", safe_serialization=True, state_dict=state_dict)


def load_checkpoint(run_dir: str | Path, device: torch.device, dtype_name: str = "auto", dequantize: bool = False,
                    quantization: str = "none", device_map: Optional[str] = None) -> tuple[Built, DictConfig]:
    """Rebuild the trained model from a run dir alone (``RUN/checkpoint``); ``dequantize`` loads a QLoRA
    run's base in 16/32 bit instead of 4 bit (to merge the adapters); ``quantization`` (int8 | nf4) loads
    the weights quantized for inference (CUDA); ``device_map`` (auto | balanced) splits the layers over the GPUs."""
    check_quantization(quantization, device)
    run = RunDir(run_dir).require_checkpoint()
    ckpt = run.checkpoint
    cfg = run.read_checkpoint_config()
    if "model" not in cfg or "lora" not in cfg:
        raise DuelistError(f"{run.checkpoint_config_file}: not a duelist run config (no model/lora section)")
    has_adapter, has_full = (ckpt / "adapter").is_dir(), (ckpt / "model").is_dir()
    if not (has_adapter or has_full) or not (ckpt / "tokenizer").is_dir():
        raise DuelistError(f"{ckpt}: incomplete checkpoint (needs tokenizer/ and adapter/ or model/)")
    if dequantize:
        cfg.lora.qlora = False
    check_model_config(cfg.model, cfg.lora, device)
    tokenizer = load_tokenizer(str(ckpt / "tokenizer"), what="tokenizer")
    dtype = torch_dtype(dtype_name if dtype_name != "auto" else cfg.model.dtype, device)
    if has_adapter:
        from peft import PeftModel

        if cfg.model.init == "random" and not (ckpt / "base").is_dir():
            raise DuelistError(f"{ckpt}: random-init model without base/ weights; cannot rebuild")
        weights = str(ckpt / "base") if cfg.model.init == "random" else None
        base = build_base(cfg.model, cfg.lora, tokenizer, dtype, seed=0, weights=weights, quantization=quantization, device_map=device_map)
        model = PeftModel.from_pretrained(base, str(ckpt / "adapter"))
    else:
        from transformers import AutoModelForSequenceClassification

        quant = _quantization(cfg.lora, quantization)
        model = apply_pooling(AutoModelForSequenceClassification.from_pretrained(
            str(ckpt / "model"), dtype=dtype, attn_implementation=attention(cfg.model),
            quantization_config=quant, device_map=device_map or ({"": torch.cuda.current_device()} if quant else None),
        ), cfg.model)
    if not (cfg.lora.enabled and cfg.lora.qlora) and quantization == "none" and device_map is None:
        model.to(device)  # quantized or split weights were placed as they loaded
    model.eval()
    return Built(model, tokenizer), cfg


def merge_checkpoint(run_dir: str | Path, out_dir: str | Path, dtype_name: str = "auto") -> Path:
    """Write ``out_dir`` as a run dir whose checkpoint is the full model with the LoRA adapters merged into
    the weights (``checkpoint/model/``): inference then runs without adapter overhead. A QLoRA run is merged
    into a 16-bit base (merging into 4-bit weights would round the adapters away). ``metrics.json`` and
    ``oof.parquet`` are copied so ensembles can still weight the run."""
    import shutil

    run, out_dir = RunDir(run_dir).require_checkpoint(), Path(out_dir)
    if not (run.checkpoint / "adapter").is_dir():
        raise DuelistError(f"{run_dir}: no checkpoint/adapter/ to merge (pass the run dir of a LoRA run; full fine-tuning runs need no merge)")
    if out_dir.resolve() == run.path.resolve():
        raise DuelistError(f"--out {out_dir}: must differ from the run dir")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    built, cfg = load_checkpoint(run_dir, device, dtype_name, dequantize=True)
    merged = built.model.merge_and_unload()
    merged.config.pad_token_id = built.tokenizer.pad_token_id
    cfg.lora.enabled, cfg.lora.qlora, cfg.lora.r, cfg.lora.alpha = False, False, 0, 0
    cfg.model.init = "pretrained"  # every weight is in checkpoint/model now
    with atomic_dir(out_dir) as tmp:
        copy = RunDir(tmp)
        save_checkpoint(Built(merged, built.tokenizer), cfg, copy.checkpoint)
        copy.write_config(cfg)
        for source, target in ((run.metrics_file, copy.metrics_file), (run.oof_file, copy.oof_file)):
            if source.is_file():
                shutil.copy2(source, target)
        copy.write_exported_from(run)
    return out_dir
