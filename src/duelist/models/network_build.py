"""The network factory: build a Hugging Face sequence classifier, wrap it with (Q)LoRA, save and reload a checkpoint,
merge adapters.

Networks differ only in config (``conf/model/*.yaml``): a pretrained path or hub id, or a random init of a real
architecture (``init: random`` + ``config_overrides``) for fast tests. Checkpoints are safetensors only:

    checkpoint/config.yaml        resolved run config (what infer.py rebuilds from)
    checkpoint/tokenizer/         the tokenizer
    checkpoint/adapter/           LoRA adapter + the trained classification head (modules_to_save)
    checkpoint/base/              the random-init base weights (random-init models with LoRA only)
    checkpoint/model/             full weights (lora=none)

A zero-shot run (``model.head=reward trainer.epochs=0``: a reward model's own judgement, no training) saves only
config.yaml and tokenizer/: its weights are the base's, at ``model.name_or_path``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from duelist.core.errors import DuelistError
from duelist.core.files import atomic_dir, hub_offline, resolve_path
from duelist.core.hardware import (
    bnb_device_ok,
    check_quantization,
    plain_4bit_kernels,
    quantized_device_map,
    require_bitsandbytes,
    torch_dtype,
)
from duelist.models.heads import head_of
from duelist.runs.run_dir import CONFIG, RunDir

log = logging.getLogger(__name__)
# texts are tokenised whole before they are cut to budget; the "longer than the model maximum" warning is expected
logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)

HEAD_NAMES = ("classifier", "score")  # names of the sequence-classification heads in HF models


def is_zero_shot(cfg: Any) -> bool:
    """``trainer.epochs=0`` (and no ``max_steps``): a reward model scores the validation rows as it is, untrained."""
    return float(cfg.trainer.epochs) == 0 and int(cfg.trainer.max_steps) <= 0


def _gemma2_options(model_cfg: Any) -> dict[str, Any]:
    # The WSDM recipe trains with attention and final-logit softcapping off; ``model.softcapping=true`` keeps
    # the pretrained values (50.0 / 30.0 for Gemma-2).
    return {} if model_cfg.softcapping else {"attn_logit_softcapping": None, "final_logit_softcapping": None}


def _no_options(model_cfg: Any) -> dict[str, Any]:
    return {}


# arch (Hugging Face model_type) -> extra config values derived from our model config; any other type has none
ARCHITECTURES: dict[str, Callable[[Any], dict[str, Any]]] = {"gemma2": _gemma2_options}


def attention(model_cfg: Any) -> str:
    """``attn_implementation``; ``auto`` is flash-attention-2 on a GPU of compute capability >= 8.0 (Ampere and later:
    not T4/V100) with ``flash_attn`` installed, else eager for Gemma-2 (transformers >= 5.21 refuses sdpa for it) and
    sdpa for the others."""
    name = model_cfg.attn_implementation
    if name != "auto":
        return name
    if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0):
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return "eager" if model_cfg.arch == "gemma2" else "sdpa"


def make_trainable_fp32(model: torch.nn.Module) -> int:
    """Every trainable parameter in fp32 (adapters, the head, or every weight with full fine-tuning): the frozen base
    may stay bf16/fp16/4-bit, half precision comes from autocast. Updates of lr x grad below bf16's resolution would
    otherwise be lost, and GradScaler refuses fp16 gradients. Returns the number of parameters cast."""
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast


def upcast_unquantized(model: torch.nn.Module) -> None:
    """What ``prepare_model_for_kbit_training`` does to a QLoRA model while it trains: the parameters that are not
    4-bit (norms, embeddings, the head) in fp32. A reload does the same, so it computes what training validated."""
    for param in model.parameters():
        if param.dtype in (torch.float16, torch.bfloat16) and type(param).__name__ != "Params4bit":
            param.data = param.data.float()


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
    decoders); ``mean`` (BERT-style encoders only) replaces the pooler with :class:`MeanPooler`. Every model built
    goes through here: a classifier reads each sequence once, so it keeps no KV cache either (``use_cache``: off; with
    gradient checkpointing transformers would warn that it turned it off)."""
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
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
    zero_shot: bool = False  # the pretrained model as it is: its checkpoint points at model.name_or_path


@contextlib.contextmanager
def quiet_load_report() -> Iterator[None]:
    """transformers' LOAD REPORT table (weights missing / unexpected / resized) is left out: duelist replaces the
    classification head on purpose and reloads it from the adapter; real load failures still raise."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def _looks_local(path: str) -> bool:
    return os.path.isabs(path) or path.startswith((".", "~", "pkg:")) or os.path.exists(path)


def from_cache_only(path: str) -> bool:
    """A hub id loads from the local cache alone when the hub cannot be reached (one probe, not 50 s of retries)."""
    return not _looks_local(path) and hub_offline()


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
        tok = AutoTokenizer.from_pretrained(resolve_path(path), local_files_only=from_cache_only(path))
    except Exception as err:  # OSError, HF hub errors, connection errors ...
        raise _load_error(what, path, err) from err
    if tok.pad_token_id is None:
        tok.pad_token = pad_fallback(tok)
    return tok


SPARE_PADS = ("<|finetune_right_pad_id|>", "<|endoftext|>", "<pad>", "[PAD]")  # Llama 3.1's reserved pad, Qwen's, ...


def pad_fallback(tokenizer: Any) -> str:
    """The pad token of a tokenizer that has none: a spare pad-like token of its vocabulary other than eos (Llama
    3.1's ``<|finetune_right_pad_id|>``), else eos. Not eos where possible: a reward model's conversation ends in eos
    (Llama 3's ``<|eot_id|>``), and a sequence must end in a real token, not the pad, for the head to read it."""
    vocab = tokenizer.get_vocab()
    spare = [t for t in SPARE_PADS if t in vocab and t != tokenizer.eos_token]
    return spare[0] if spare else tokenizer.eos_token


def check_arch(arch: str) -> None:
    """``model.arch`` must be a Hugging Face ``model_type`` with a sequence-classification head in the installed
    transformers (any of them trains: the options of :data:`ARCHITECTURES` are extras where duelist knows them)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES as KNOWN

    if arch not in KNOWN:
        import difflib

        close = difflib.get_close_matches(arch, list(KNOWN), n=5, cutoff=0.5)
        raise DuelistError(
            f"model.arch={arch}: transformers has no *ForSequenceClassification model of that type"
            + (f"; close: {', '.join(close)}" if close else "")
            + " (model.arch is the model_type in the checkpoint's config.json; see docs/configs.md#adding-a-model)"
        )


def check_model_config(model_cfg: Any, lora_cfg: Any, device: torch.device) -> None:
    """Stop before loading anything when the combination cannot work here."""
    check_arch(model_cfg.arch)
    if not lora_cfg.enabled and (lora_cfg.r or lora_cfg.alpha):
        keys = " and ".join(f"lora.{k}={lora_cfg[k]}" for k in ("r", "alpha") if lora_cfg[k])
        raise DuelistError(
            f"{keys} has no effect: adapters are off (lora=none: full fine-tuning of every weight). "
            f"Drop lora=none (or the experiment that sets it) to train LoRA adapters"
        )
    if model_cfg.pooling == "mean" and model_cfg.arch != "bert":
        raise DuelistError(
            f"model.pooling=mean is for BERT-style encoders (arch=bert); {model_cfg.arch} classifies from its last "
            "token: use model.pooling=model"
        )
    if lora_cfg.enabled and lora_cfg.qlora:
        # bitsandbytes loads and runs 4-bit layers on a CPU (slowly), so we refuse ourselves; DUELIST_CPU_BNB=1 (tests)
        # allows it.
        if not bnb_device_ok(device):
            raise DuelistError(
                "lora.qlora=true needs a CUDA GPU (4-bit nf4 via bitsandbytes); on this machine use lora.qlora=false"
            )
        require_bitsandbytes("lora.qlora=true")


def _quantization(lora_cfg: Any, inference: str = "none", compute: torch.dtype = torch.float32) -> Any:
    """bitsandbytes settings: nf4 for QLoRA training; ``inference`` int8 (LLM.int8) or nf4 when scoring;
    ``compute``: the dtype the 4-bit layers compute in (the weights dtype: bf16/fp16 on a GPU)."""
    kind = inference if inference != "none" else ("nf4" if lora_cfg.enabled and lora_cfg.qlora else "none")
    if kind == "none":
        return None
    from transformers import BitsAndBytesConfig

    keep = list(HEAD_NAMES)  # the 2-output head stays in full precision
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
        llm_int8_skip_modules=keep,
    )


def config_extras(model_cfg: Any) -> dict[str, Any]:
    """Values set on the Hugging Face config: the architecture's options, then ``model.config_overrides``."""
    extra = dict(ARCHITECTURES.get(model_cfg.arch, _no_options)(model_cfg))
    overrides = model_cfg.config_overrides
    extra.update(OmegaConf.to_container(overrides) if isinstance(overrides, DictConfig) else dict(overrides))
    return extra


def _random_model(model_cfg: Any, tokenizer: Any, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    extra = config_extras(model_cfg)
    # overrides may set a real vocab size
    config = AutoConfig.for_model(
        model_cfg.arch,
        **{
            "vocab_size": len(tokenizer),
            "num_labels": head_of(model_cfg).outputs,
            "pad_token_id": tokenizer.pad_token_id,
            **extra,
        },
    )
    config._attn_implementation = attention(model_cfg)
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config, dtype=dtype)


def build_base(
    model_cfg: Any,
    lora_cfg: Any,
    tokenizer: Any,
    dtype: torch.dtype,
    seed: int,
    device: torch.device,
    weights: Optional[str] = None,
    quantization: str = "none",
    device_map: Optional[str] = None,
    require_head: bool = False,
) -> torch.nn.Module:
    """The sequence-classification model (its head's outputs: :mod:`duelist.models.heads`) without adapters.

    ``weights``: a folder of saved base weights (a random-init checkpoint's base/); ``quantization``: int8 | nf4
    loading for inference (QLoRA runs load nf4 anyway); quantized weights are placed on ``device`` as they load;
    ``device_map``: auto | balanced spreads the layers over the visible GPUs (a model too big for one);
    ``require_head``: the pretrained weights must hold a head of this shape (a zero-shot run scores with it).

    A pretrained head of the right shape is kept (``head=reward`` on a reward model: training starts from its
    judgement); one of another shape (a reward model under ``head=pair``) is replaced by a fresh head.
    """
    from transformers import AutoModelForSequenceClassification

    quant = _quantization(lora_cfg, quantization, compute=dtype)
    if weights is None and model_cfg.init == "random":
        if quant is not None:  # from_config cannot quantize: build_model saves the random weights and loads them back
            raise ValueError("a random-init base is quantized from saved weights (weights=FOLDER)")
        model = _random_model(model_cfg, tokenizer, dtype, seed)
        model.config.pad_token_id = tokenizer.pad_token_id
        return apply_pooling(model, model_cfg)
    extra = config_extras(model_cfg)
    source = weights or resolve_path(model_cfg.name_or_path)
    labels = head_of(model_cfg).outputs
    try:
        with quiet_load_report():  # "classifier MISSING": the 2-label head is new by design (or comes from the adapter)
            model, info = AutoModelForSequenceClassification.from_pretrained(
                source,
                dtype=dtype,
                attn_implementation=attention(model_cfg),
                quantization_config=quant,
                device_map=device_map or (quantized_device_map(device) if quant else None),
                # a head of another shape (a reward model's 1 output under head=pair) is replaced by a fresh one
                ignore_mismatched_sizes=weights is None,
                num_labels=labels,
                pad_token_id=tokenizer.pad_token_id,
                output_loading_info=True,
                local_files_only=weights is None and from_cache_only(model_cfg.name_or_path),
                **({} if weights else extra),
            )
    except Exception as err:
        raise _load_error("name_or_path", model_cfg.name_or_path, err) from err
    plain_4bit_kernels(model)
    fresh = [k for k in [*info["missing_keys"], *(m[0] for m in info.get("mismatched_keys", []))] if _is_head(k)]
    if weights is None and model_cfg.init == "pretrained":
        if fresh and require_head:
            raise DuelistError(
                f"model.name_or_path={model_cfg.name_or_path} has no {labels}-output head to score with: a zero-shot "
                "run (trainer.epochs=0) needs a reward model (e.g. model=skywork_reward_v2_qwen3_8b); train it instead "
                "(trainer.epochs > 0)"
            )
        if not fresh:
            log.info("kept the pretrained %d-output head of %s", labels, model_cfg.name_or_path)
    model.config.pad_token_id = tokenizer.pad_token_id
    return apply_pooling(model, model_cfg)


def _is_head(key: str) -> bool:
    return any(h in key.split(".") for h in HEAD_NAMES)


def add_lora(model: torch.nn.Module, lora_cfg: Any, gradient_checkpointing: bool) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if lora_cfg.qlora:
        # non-4-bit parameters to fp32, base frozen; checkpointing stays non-reentrant (its default would turn reentrant
        # back on)
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    targets = lora_cfg.target_modules
    targets = targets if isinstance(targets, str) else list(targets)
    config = LoraConfig(
        task_type="SEQ_CLS",
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=targets,
    )
    # task_type=SEQ_CLS puts the classification head in modules_to_save: it is trained and saved with the adapter.
    return get_peft_model(model, config)


def build_model(
    model_cfg: Any,
    lora_cfg: Any,
    device: torch.device,
    seed: int,
    gradient_checkpointing: bool = False,
    zero_shot: bool = False,
) -> Built:
    """The model to train: base weights in ``model.dtype`` (4-bit with QLoRA), every trainable parameter in fp32.
    ``zero_shot``: the pretrained model with its own head, nothing to train (no adapters)."""
    check_model_config(model_cfg, lora_cfg, device)
    tokenizer = load_tokenizer(model_cfg.name_or_path)
    dtype = torch_dtype(model_cfg.dtype, device)
    init_state = None
    if model_cfg.init == "random" and lora_cfg.enabled and lora_cfg.qlora:
        # from_config cannot quantize: the random weights are saved and loaded back through the quantizer, as a reload
        # of base/ will do, so training and reload start from the same 4-bit weights
        import tempfile

        random_model = _random_model(model_cfg, tokenizer, dtype, seed)
        init_state = {k: v.detach().to("cpu", copy=True) for k, v in random_model.state_dict().items()}
        with tempfile.TemporaryDirectory(prefix="duelist-random-base-") as tmp:
            random_model.save_pretrained(tmp, safe_serialization=True)
            del random_model
            model = build_base(model_cfg, lora_cfg, tokenizer, dtype, seed, device, weights=tmp)
        model.config.name_or_path = model.name_or_path = ""  # a from-config model, not the deleted temporary folder
    elif zero_shot:
        model = build_base(model_cfg, lora_cfg, tokenizer, dtype, seed, device, require_head=True).requires_grad_(False)
        if lora_cfg.enabled and lora_cfg.qlora:
            upcast_unquantized(model)  # as a reload does: the OOF is what the reload computes
        else:
            model.to(device)
        return Built(model, tokenizer, zero_shot=True)
    else:
        model = build_base(model_cfg, lora_cfg, tokenizer, dtype, seed, device)
        if model_cfg.init == "random" and lora_cfg.enabled:  # the random base is saved with the checkpoint
            init_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora_cfg.enabled:
        model = add_lora(model, lora_cfg, gradient_checkpointing)
    make_trainable_fp32(model)
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


def adapter_card(run_config: DictConfig, metrics: Optional[dict[str, Any]], step: Optional[int]) -> str:
    """The adapter's README (a Hugging Face model card): what it predicts, its base, adapters, data, the validation
    numbers of the kept step, and how to load it (with duelist: PEFT alone does not rebuild the input format)."""
    m, lora, data = run_config.model, run_config.lora, run_config.data
    sources = [data.train] if isinstance(data.train, str) else list(data.train)
    train = ", ".join(str(s if isinstance(s, str) else s.get("path")) for s in sources)
    pretrained = m.init == "pretrained"
    base = m.name_or_path if pretrained else f"{m.arch} built from its config, random weights (base/)"
    validation = (
        f"fold {data.fold} of {data.n_folds} (split seed {data.split_seed})" if data.valid is None else str(data.valid)
    )
    lines = [
        "---",
        "library_name: peft",
        *([f"base_model: {m.name_or_path}"] if pretrained and not str(m.name_or_path).startswith("pkg:") else []),
        "tags: [duelist, human-preference, pairwise, sequence-classification, lora]",
        "---",
        "",
        f"# duelist LoRA adapter: {m.name} on {data.name}",
        "",
        "Predicts which of two chatbot responses a person preferred: prompt, response_a and response_b in, P(A wins)",
        "out (one logit through a sigmoid; the WSDM Cup 2025 Multilingual Chatbot Arena task, metric accuracy).",
        "",
        f"- **base**: {base}",
        f"- **adapters**: LoRA r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, on {lora.target_modules}"
        + (" over a 4-bit NF4 base (QLoRA)" if lora.qlora else "")
        + "; the classification head is trained fully and saved with them",
        f"- **input**: template {m.template}, at most {m.max_length} tokens per pair (config.yaml next to this folder)",
        f"- **data**: {data.name} ({train}); validation: {validation}",
    ]
    if metrics is not None:
        lines.append(
            f"- **validation** at step {step}: accuracy {metrics['val/accuracy']:.4f} (the longer-answer rule: "
            f"{metrics['val/baseline_longer_wins']:.4f}), log loss {metrics['val/log_loss']:.4f}, on "
            f"{metrics['val/rows']} pairs"
        )
    lines += [
        "",
        "## Load it",
        "",
        "duelist loads the run dir (the folder that holds this `checkpoint/`):",
        "",
        "```bash",
        "python infer.py runs=[RUN_DIR] data.test=test.parquet          # a submission",
        "python -m duelist export run=RUN_DIR out=MERGED                 # the adapters merged into the weights",
        "```",
        "",
        "or in Python: `from duelist.models.network_build import load_checkpoint; built, cfg = "
        'load_checkpoint("RUN_DIR", torch.device("cpu"))`.',
        "",
    ]
    return "\n".join(lines)


def save_checkpoint(
    built: Built,
    run_config: DictConfig,
    target: str | Path,
    state_dict: Optional[dict[str, torch.Tensor]] = None,
    metrics: Optional[dict[str, Any]] = None,
    step: Optional[int] = None,
) -> None:
    """Write ``target`` atomically: it appears complete or not at all. ``state_dict``: the full weights
    when the model itself is sharded (FSDP), else the model's own are saved; ``metrics`` (of ``step``): the validation
    numbers the adapter's card states."""
    with atomic_dir(target) as tmp:
        OmegaConf.save(run_config, tmp / CONFIG, resolve=True)
        built.tokenizer.save_pretrained(tmp / "tokenizer")
        model = built.model
        if built.zero_shot:
            pass  # the base's weights, loaded from model.name_or_path
        elif hasattr(model, "peft_config"):
            model.save_pretrained(tmp / "adapter", safe_serialization=True, state_dict=state_dict)
            settings = json.loads((tmp / "adapter" / "adapter_config.json").read_text())
            m = run_config.model  # random weights: the base/ folder beside the adapter
            settings["base_model_name_or_path"] = m.name_or_path if m.init == "pretrained" else "base"
            (tmp / "adapter" / "adapter_config.json").write_text(json.dumps(settings, indent=2, sort_keys=True))
            (tmp / "adapter" / "README.md").write_text(adapter_card(run_config, metrics, step))
            if built.init_state is not None:
                import copy

                config = copy.deepcopy(model.get_base_model().config)
                if getattr(config, "quantization_config", None) is not None:
                    del (
                        config.quantization_config
                    )  # the saved weights are the unquantized random init; a reload quantizes them
                config.save_pretrained(tmp / "base")
                from safetensors.torch import save_file

                save_file(
                    {k: v.contiguous() for k, v in built.init_state.items()}, str(tmp / "base" / "model.safetensors")
                )
        else:
            model.save_pretrained(tmp / "model", safe_serialization=True, state_dict=state_dict)
            built.tokenizer.save_pretrained(tmp / "model")  # a folder as a download looks: vLLM loads it whole


@dataclass
class Loading:
    """How :func:`load_checkpoint` rebuilds a run's model: its checkpoint's parts and the loading options."""

    ckpt: Path
    cfg: DictConfig
    device: torch.device
    dtype: torch.dtype
    dequantize: bool  # a QLoRA run's 4-bit base as 16/32-bit numbers (to merge the adapters into it)
    quantization: str  # none | int8 | nf4: the weights quantized for inference
    device_map: Optional[str]  # auto | balanced: the layers split over the GPUs

    @property
    def qlora(self) -> bool:
        return bool(self.cfg.lora.enabled and self.cfg.lora.qlora)

    def base(
        self, tokenizer: Any, weights: Optional[str] = None, require_head: bool = False, fp32_head: bool = False
    ) -> torch.nn.Module:
        """The base network as the run trained over it: its 4-bit layers as they were (with their other parameters in
        fp32, as training had them) or dequantized. ``fp32_head``: the head as it trained (make_trainable_fp32), for
        the saved copy to load into."""
        model = build_base(
            self.cfg.model,
            self.cfg.lora,
            tokenizer,
            self.dtype,
            0,
            self.device,
            weights=weights,
            quantization=self.quantization,
            device_map=self.device_map,
            require_head=require_head,
        )
        for name in HEAD_NAMES if fp32_head else ():
            if isinstance(getattr(model, name, None), torch.nn.Module):
                getattr(model, name).float()
        if self.qlora and self.dequantize:
            with quiet_load_report():
                return model.dequantize().to(self.dtype)  # the NF4-rounded weights the adapters learnt against
        if self.qlora:
            upcast_unquantized(model)
        return model


def load_checkpoint(
    run_dir: str | Path,
    device: torch.device,
    dtype_name: str = "auto",
    dequantize: bool = False,
    quantization: str = "none",
    device_map: Optional[str] = None,
) -> tuple[Built, DictConfig]:
    """Rebuild the trained model from a run dir alone (``RUN/checkpoint``), computing what training validated (a QLoRA
    run: the same 4-bit base with its other parameters in fp32). ``dequantize``: a QLoRA run's 4-bit base is
    dequantized after loading, so the adapters sit on the NF4-rounded weights they were trained against, in 16/32 bit
    (to merge them); ``quantization`` (int8 | nf4) loads the weights quantized for inference (CUDA);
    ``device_map`` (auto | balanced) splits the layers over the GPUs."""
    check_quantization(quantization, device)
    run = RunDir(run_dir).require_checkpoint()
    cfg = run.read_checkpoint_config()
    saved = _saved_parts(run, cfg)
    lora = OmegaConf.merge(cfg.lora, {"qlora": False}) if dequantize and cfg.lora.qlora else cfg.lora
    if dequantize and cfg.lora.enabled and cfg.lora.qlora:
        # quantizing once to reproduce the NF4 rounding works on any device (bitsandbytes has CPU kernels)
        require_bitsandbytes("merging a QLoRA run (it reproduces the 4-bit base)")
    check_model_config(cfg.model, lora, device)
    tokenizer = load_tokenizer(str(run.checkpoint / "tokenizer"), what="tokenizer")
    dtype = torch_dtype(dtype_name if dtype_name != "auto" else cfg.model.dtype, device)
    how = Loading(run.checkpoint, cfg, device, dtype, dequantize, quantization, device_map)
    if saved == "zero-shot":  # the base at name_or_path must still be the reward model that scored the OOF
        model = how.base(tokenizer, require_head=True)
    elif saved == "adapter":
        model = _with_adapters(how, tokenizer)
    else:
        model = _full_weights(how)
    if not (how.qlora and not dequantize) and quantization == "none" and device_map is None:
        model.to(device)  # quantized or split weights were placed as they loaded
    model.eval()
    return Built(model, tokenizer, zero_shot=saved == "zero-shot"), cfg


def _saved_parts(run: RunDir, cfg: DictConfig) -> str:
    """What the checkpoint holds: ``adapter`` (LoRA adapters and the head), ``model`` (full weights) or ``zero-shot``
    (nothing but the config and tokenizer: the base's own weights); one line when it is incomplete."""
    ckpt = run.checkpoint
    if "model" not in cfg or "lora" not in cfg:
        raise DuelistError(f"{run.checkpoint_config_file}: not a duelist run config (no model/lora section)")
    has_adapter, has_full = (ckpt / "adapter").is_dir(), (ckpt / "model").is_dir()
    zero_shot = is_zero_shot(cfg) and not (has_adapter or has_full)
    if not (has_adapter or has_full or zero_shot) or not (ckpt / "tokenizer").is_dir():
        raise DuelistError(f"{ckpt}: incomplete checkpoint (needs tokenizer/ and adapter/ or model/)")
    if has_adapter and cfg.model.init == "random" and not (ckpt / "base").is_dir():
        raise DuelistError(f"{ckpt}: random-init model without base/ weights; cannot rebuild")
    return "adapter" if has_adapter else "model" if has_full else "zero-shot"


def _with_adapters(how: Loading, tokenizer: Any) -> torch.nn.Module:
    """The base (pretrained, or a random init's saved base/) with the run's adapters and trained head on it."""
    from peft import PeftModel

    weights = str(how.ckpt / "base") if how.cfg.model.init == "random" else None
    base = how.base(tokenizer, weights=weights, fp32_head=True)
    return PeftModel.from_pretrained(base, str(how.ckpt / "adapter"))


def _full_weights(how: Loading) -> torch.nn.Module:
    """Every weight from checkpoint/model (full fine-tuning, or a merged export)."""
    from transformers import AutoModelForSequenceClassification

    quant = _quantization(how.cfg.lora, how.quantization, compute=how.dtype)
    with quiet_load_report():  # a mean-pooled run saved no [CLS] pooler: "pooler MISSING" is by design
        model = AutoModelForSequenceClassification.from_pretrained(
            str(how.ckpt / "model"),
            dtype=how.dtype,
            attn_implementation=attention(how.cfg.model),
            quantization_config=quant,
            device_map=how.device_map or (quantized_device_map(how.device) if quant else None),
        )
    plain_4bit_kernels(model)
    return apply_pooling(model, how.cfg.model)


def merge_adapters(run_dir: str | Path, device: torch.device, dtype_name: str = "auto") -> tuple[Built, DictConfig]:
    """A LoRA run's model with the adapters merged into the weights, and the config of the merged run (full weights,
    ``lora=none``). A QLoRA run is merged into its dequantized NF4 base, the weights it trained against: merging into
    the original 16-bit weights would move predictions (measured on tiny models: up to 0.04 in p_a). A zero-shot run's
    "merge" is its base's weights, written out."""
    run = RunDir(run_dir).require_checkpoint()
    zero_shot = not (run.checkpoint / "model").is_dir() and is_zero_shot(run.read_checkpoint_config())
    if not (run.checkpoint / "adapter").is_dir() and not zero_shot:
        raise DuelistError(
            f"{run_dir}: no checkpoint/adapter/ to merge (pass the run dir of a LoRA run; full fine-tuning runs need "
            "no merge)"
        )
    built, cfg = load_checkpoint(run_dir, device, dtype_name, dequantize=True)
    merged = built.model if zero_shot else built.model.merge_and_unload()  # zero-shot: the base's own weights
    merged.config.pad_token_id = built.tokenizer.pad_token_id
    if getattr(merged.config, "quantization_config", None) is not None:
        del merged.config.quantization_config  # the weights are plain 16/32-bit numbers now
    cfg.lora.enabled, cfg.lora.qlora, cfg.lora.r, cfg.lora.alpha = False, False, 0, 0
    cfg.model.init = "pretrained"  # every weight is in checkpoint/model now
    return Built(merged, built.tokenizer), cfg
