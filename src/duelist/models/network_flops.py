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
    """The Hugging Face config the model file describes (the depth as composed)."""
    from transformers import AutoConfig

    from duelist.models.network_build import attention, config_extras, load_tokenizer

    tokenizer = load_tokenizer(cfg.model.name_or_path)
    folder = local_weights(cfg.model)
    if folder:
        config = AutoConfig.from_pretrained(folder, num_labels=2, **config_extras(cfg.model))
    else:
        extra = {"vocab_size": len(tokenizer), "num_labels": 2, "pad_token_id": tokenizer.pad_token_id}
        config = AutoConfig.for_model(cfg.model.arch, **{**extra, **config_extras(cfg.model)})
    config._attn_implementation = attention(cfg.model)
    return config


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
    """Tokens per row as the run scores them (a reward head: the two sequences' lengths, one column each), and the
    run's saved config."""
    from duelist.core.batching import Duo
    from duelist.data.encoding import encoder_for_model
    from duelist.models.network_build import load_tokenizer
    from duelist.runs.run_dir import RunDir

    run = RunDir(run_dir).require_checkpoint()
    cfg = run.read_checkpoint_config()
    tokenizer = load_tokenizer(str(run.checkpoint / "tokenizer"), what="tokenizer")
    encoded = encoder_for_model(tokenizer, cfg.model).encode(test, cache_dir, desc=f"tokenize {shown(run_dir)}")
    return np.array([[len(s.a), len(s.b)] if isinstance(s, Duo) else len(s) for s in encoded]), cfg


def base_config(run_dir: Path, cfg: Any) -> Any:
    """The Hugging Face config of the run's network at full depth: a merged model's own, a random-init shape's, or
    the base model's (from a local folder or the Hugging Face cache; nothing is downloaded)."""
    from transformers import AutoConfig

    from duelist.core.files import resolve_path

    merged = Path(run_dir) / "checkpoint" / "model" / "config.json"
    if merged.is_file():
        return AutoConfig.from_pretrained(str(merged.parent))
    if cfg.model.init == "random":
        return hf_config(cfg)
    try:
        return AutoConfig.from_pretrained(resolve_path(cfg.model.name_or_path), local_files_only=True, num_labels=2)
    except OSError as err:
        raise DuelistError(
            f"{shown(run_dir)}: the config of its base {cfg.model.name_or_path} is not on this machine; plan on the "
            "machine that trained it (the Hugging Face cache has it), or on the merged export (python -m duelist "
            "export)"
        ) from err


def projected_seconds(
    run_dir: Path, test: Any, flops_per_s: float, tta: str, cache_dir: Optional[str] = None
) -> tuple[float, int]:
    """Seconds a run's forward passes over ``test`` take at a sustained ``flops_per_s`` (its rows as it encodes them,
    its counted FLOP curve; swap-TTA doubles a pair head's work, a reward head's is symmetric), and the real tokens
    they read: what ``python -m duelist plan`` prints, and ``infer.py``'s first estimate of speed."""
    lengths, cfg = row_lengths(run_dir, test, cache_dir)
    flops = float(row_flops(flops_curve(cfg, config=base_config(run_dir, cfg)), lengths).sum())
    passes = 2 if tta == "swap" and lengths.ndim == 1 else 1
    return passes * flops / flops_per_s, passes * int(lengths.sum())
