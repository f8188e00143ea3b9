"""What a network's forward pass costs, counted: forward FLOPs of a row of L tokens at full depth (``FlopCounterMode``
over the model built on the meta device: shapes only, no weights, no arithmetic), fitted as ``a·L + b·L²``, and a
run's rows as it scores them. ``python -m duelist footprint`` and ``plan`` project memory and hours from these, and
``infer.py hardware=...`` takes its first estimate of speed from them (:func:`projected_seconds`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from duelist.core.errors import DuelistError
from duelist.core.files import shown


def local_weights(model_cfg: Any) -> Optional[str]:
    """The folder of a pretrained model's weights when it is on this machine (``pkg:`` paths, folders)."""
    from duelist.core.files import resolve_path

    path = resolve_path(model_cfg.name_or_path)
    return path if model_cfg.init == "pretrained" and Path(path).is_dir() else None


def hf_config(cfg: Any) -> Any:
    """The Hugging Face config the model file describes (the depth as composed): a random-init shape's, the config of
    weights on this machine, or, for weights that are not, that of the model file ``model.shape`` names (the same
    network with random weights); nothing is downloaded."""
    from transformers import AutoConfig

    from duelist.models.network_build import attention, config_extras, load_tokenizer

    folder = local_weights(cfg.model)
    if cfg.model.init == "pretrained" and not folder:
        return hf_config(shape_twin(cfg.model))
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    if folder:
        config = AutoConfig.from_pretrained(folder, num_labels=2, **config_extras(cfg.model))
    else:
        extra = {"vocab_size": len(tokenizer), "num_labels": 2, "pad_token_id": tokenizer.pad_token_id}
        config = AutoConfig.for_model(cfg.model.arch, **{**extra, **config_extras(cfg.model)})
    config._attn_implementation = attention(cfg.model)
    return config


def shape_twin(model_cfg: Any) -> Any:
    """train.py's config for the model file ``model.shape`` names: this network's shape with random weights, for
    counting without its weights; one line when there is none."""
    from duelist.core.hydra_setup import compose_train

    if not model_cfg.get("shape"):
        raise DuelistError(
            f"model={model_cfg.name}: its weights ({model_cfg.name_or_path}) are not on this machine and model.shape "
            "names no model file of its shape; download them (hf download ... --local-dir DIR, model.name_or_path=DIR) "
            "or set model.shape to a random-init model file of the same shape"
        )
    return compose_train([f"model={model_cfg.shape}"])


def counted_flops(cfg: Any, lengths: Sequence[int], config: Any = None) -> list[int]:
    """Counted forward FLOPs of one row of each length through the full-depth model, built on the meta device (shapes
    only: no memory, no arithmetic); a model whose forward needs values (``.item()``) is built for real if it is
    small."""
    from transformers import AutoModelForSequenceClassification

    config = config or hf_config(cfg)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    device = "meta"
    try:
        return _count(model, lengths, device)
    except RuntimeError as err:
        if sum(p.numel() for p in model.parameters()) > 2e9:
            raise DuelistError(f"model={cfg.model.name}: its forward cannot run on the meta device ({err})") from err
    model = AutoModelForSequenceClassification.from_config(config)
    return _count(model, lengths, "cpu")


def _count(model: torch.nn.Module, lengths: Sequence[int], device: str) -> list[int]:
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    out = []
    for length in lengths:
        ids = torch.full((1, int(length)), 3, dtype=torch.long, device=device)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(input_ids=ids)  # no padding: no mask (building one reads values, which the meta device has not)
        out.append(int(counter.get_total_flops()))
    return out


def flops_curve(cfg: Any, short: int = 256, long: int = 512, config: Any = None) -> dict[str, float]:
    """Forward FLOPs of a row of L tokens = a·L + b·L² at full depth, from two counts (:func:`counted_flops`)."""
    f1, f2 = counted_flops(cfg, [short, long], config)
    # f = a·L + b·L²  →  b = (f2/L2 − f1/L1) / (L2 − L1)
    b = (f2 / long - f1 / short) / (long - short)
    a = f1 / short - b * short
    return {"per_token": a, "per_token_squared": b}


def row_flops(curve: dict[str, float], lengths: np.ndarray) -> np.ndarray:
    lengths = np.asarray(lengths, dtype=np.float64)
    return curve["per_token"] * lengths + curve["per_token_squared"] * lengths**2


def row_lengths(run_dir: Path, test: Any, cache_dir: Optional[str] = None) -> tuple[np.ndarray, Any]:
    """Tokens of each row's sequences as the run scores them (rows x its head's sequences per pair), and the run's
    saved config."""
    from duelist.models.heads import head_of
    from duelist.models.network_build import load_tokenizer
    from duelist.runs.run_dir import RunDir

    run = RunDir(run_dir).require_checkpoint()
    cfg = run.read_checkpoint_config()
    tokenizer = load_tokenizer(str(run.checkpoint / "tokenizer"), what="tokenizer")
    head = head_of(cfg.model)
    encoded = head.encoder(tokenizer, cfg.model).encode(test, cache_dir, desc=f"tokenize {shown(run_dir)}")
    return head.sequence_tokens(encoded), cfg


def base_config(run_dir: Path, cfg: Any) -> Any:
    """The Hugging Face config of the run's network at full depth: a merged model's own, a random-init shape's, the
    base model's (from a local folder or the Hugging Face cache), or its ``model.shape`` twin's; nothing is
    downloaded."""
    from transformers import AutoConfig

    from duelist.core.files import resolve_path

    merged = Path(run_dir) / "checkpoint" / "model" / "config.json"
    if merged.is_file():
        return AutoConfig.from_pretrained(str(merged.parent))
    if cfg.model.init == "random":
        return hf_config(cfg)
    try:
        return AutoConfig.from_pretrained(resolve_path(cfg.model.name_or_path), local_files_only=True, num_labels=2)
    except OSError:
        return hf_config(shape_twin(cfg.model))


def projected_seconds(
    run_dir: Path, test: Any, flops_per_s: float, tta: str, cache_dir: Optional[str] = None
) -> tuple[float, int]:
    """Seconds a run's forward passes over ``test`` take at a sustained ``flops_per_s`` (its rows as it encodes them,
    its counted FLOP curve, the passes its head makes with ``tta``), and the real tokens they read: what ``python -m
    duelist plan`` prints, and ``infer.py``'s first estimate of speed."""
    from duelist.models.heads import head_of

    lengths, cfg = row_lengths(run_dir, test, cache_dir)
    flops = float(row_flops(flops_curve(cfg, config=base_config(run_dir, cfg)), lengths).sum())
    passes = head_of(cfg.model).passes(tta)
    return passes * flops / flops_per_s, passes * int(lengths.sum())


GB = 1e9


def weight_gb(config: Any, quantization: str) -> float:
    """Bytes of the weights scoring holds, counted from the model's shape on the meta device: every weight in 16 bit,
    or the linear layers bitsandbytes quantizes (all but the head) at 1 byte and a 4-byte scale per output row
    (``int8``) or half a byte, a 1-byte scale per 64 and a 4-byte one per 256 of those (``nf4``, double-quantized),
    the rest (embeddings, norms, head) in 16 bit. Matches what ``footprint`` measures on the built model (Gemma-2-9B:
    18.5, 10.2 and 6.1 GB)."""
    from transformers import AutoModelForSequenceClassification

    from duelist.models.network_build import HEAD_NAMES  # bitsandbytes leaves the head in 16 bit

    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    linear = rows = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] not in HEAD_NAMES:
            linear += module.weight.numel()
            rows += module.weight.shape[0]
    other = sum(p.numel() for p in model.parameters()) - linear
    quantized = {
        "none": 2.0 * linear,
        "int8": linear + 4.0 * rows,
        "nf4": linear / 2 + linear / 64 + 4.0 * linear / 64 / 256,
    }[quantization]
    return (quantized + 2.0 * other) / GB


def working_gb(config: Any, batch_tokens: int, max_length: int, eager_attention: bool) -> float:
    """Memory a scoring batch of ``batch_tokens`` padded tokens (rows of ``max_length``) takes beside the weights,
    estimated: one decoder layer's activations in 16 bit at a time (the hidden states in and out and normed, the MLP's
    gate, up and product), eager attention's scores (16-bit scores and their fp32 softmax per head and row), and
    half a GB of CUDA workspace. Not measured on a GPU yet."""
    hidden, inner = config.hidden_size, getattr(config, "intermediate_size", 4 * config.hidden_size)
    layer = 2.0 * batch_tokens * (3 * hidden + 3 * inner)
    rows = max(1, batch_tokens // max(1, max_length))
    scores = rows * config.num_attention_heads * max_length**2 * (2 + 4) if eager_attention else 0.0
    return (layer + scores) / GB + 0.5


def scoring_quantization(run: Any, cfg: Any, asked: str) -> str:
    """How scoring holds a run's weights: as ``infer.py quantization=`` asks, or, unasked, an unmerged QLoRA run's
    4-bit base (nf4)."""
    if asked == "none" and cfg.lora.enabled and cfg.lora.qlora and run.has_adapter():
        return "nf4"
    return asked
