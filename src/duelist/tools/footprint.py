"""A network at its real width and reduced depth, measured, and projected to full depth: ``python -m duelist
footprint``.

    python -m duelist footprint model=gemma2_9b_random layers=2 precision=fp32 score_length=128 check_layers=[4]
    python -m duelist footprint model=tiny_gemma2 layers=2 max_length=256 check_layers=[4,8]

The model file's architecture is built at its real width with ``layers`` decoder layers (random weights) and run
through duelist's own code on this machine: the training step of each recipe (``qlora``: the 4-bit nf4 base through
bitsandbytes, ``lora``: the base in ``precision``; r=64 adapters and the head in fp32; bf16 autocast, or none with
``precision=fp32``; gradient checkpointing off and on) and the scoring pass in each precision (fp16, bf16, int8,
nf4). On a CPU the bitsandbytes paths run behind ``DUELIST_CPU_BNB=1``, which this command sets for itself. Per
decoder layer and for the rest of the model (embedding, final norm, head), it records:

- FLOPs, counted by ``torch.utils.flop_counter.FlopCounterMode``;
- saved activations: the bytes autograd keeps for the backward pass, seen by
  ``torch.autograd.graph.saved_tensors_hooks`` (with checkpointing a layer keeps its input, which the checkpoint
  saves); a tensor several layers keep, or the model hands every layer, counts once, in the rest;
- weight bytes by dtype (4-bit and 8-bit weights as their packed bytes plus their quantization state), gradient
  bytes of the trainable parameters, optimizer-state bytes after one AdamW step;
- wall time and the growth of the resident memory during the step.

The projection to the model's full depth D is rest + first layer + (D − 1) × a later layer, for FLOPs, weights,
gradients, optimizer state and saved activations. Peak training memory = weights + gradients + optimizer state +
saved activations, plus with checkpointing one layer's activations while backward recomputes it. Time to score
rows on a device = their forward FLOPs / its sustained FLOP/s (:data:`duelist.core.hardware.THROUGHPUT`): counted
FLOPs of a row of L tokens are a·L + b·L², fitted from two counts of the full-depth model on the meta device (no
memory, no arithmetic). ``check_layers`` builds those depths too and puts measured beside projected; ``lengths``
trains at several short lengths and fits them to ``max_length`` (for CPUs too slow at full length).
"""

from __future__ import annotations

import ctypes
import gc
import os
import re
import resource
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from duelist.core import options
from duelist.core.errors import DuelistError, exit_cleanly_on_user_error
from duelist.core.files import write_json
from duelist.core.hardware import THROUGHPUT
from duelist.core.logs import quiet_library_logs
from duelist.core.options import option
from duelist.models.network_flops import flops_curve, hf_config, local_weights, row_flops
from duelist.tools.bench import (
    KAGGLE_ROWS,
    compose_network,
    device_name,
    git_commit,
    slug,
    synthetic_lengths,
    versions,
)

REST = "rest"
LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h)\.(\d+)(?:\.|$)")
RECIPES = {"qlora": "qlora", "lora": "default"}  # training recipes: the lora group they compose
PRECISIONS = ("fp16", "bf16", "int8", "nf4")  # scoring: weights' dtype, or bitsandbytes quantization (fp16 compute)
QUANTIZATIONS = ("none", "int8", "nf4")  # how scoring holds the weights (infer.py quantization=)
GB = 1e9


def part_of(name: str) -> str:
    """``layer`` for a name inside a decoder layer (``...layers.3.mlp...``), else the rest of the model."""
    return "layer" if LAYER.search(name) else REST


def layer_index(name: str) -> Optional[int]:
    match = LAYER.search(name)
    return int(match.group(1)) if match else None


def compose(model: str, layers: Optional[int], lora: str = "none", dtype: Optional[str] = None) -> Any:
    """train.py's composed config for ``model`` with ``layers`` decoder layers (None: the file's own depth)."""
    from omegaconf import OmegaConf, open_dict

    cfg = compose_network(model, lora)
    if not (cfg.model.init == "random" or local_weights(cfg.model)):
        raise DuelistError(
            f"model={model}: footprint builds networks without a download: a random-init real shape (e.g. "
            "gemma2_9b_random) or weights in a local folder (minilm)"
        )
    if layers is not None:
        with open_dict(cfg.model.config_overrides):
            cfg.model.config_overrides.num_hidden_layers = layers
    if dtype is not None:
        OmegaConf.update(cfg, "model.dtype", dtype)  # validated against the schema's choices
    return cfg


class SavedActivations:
    """Bytes autograd saves for backward during a forward pass, by the decoder layer that saved them (storages
    counted once; one saved by several layers, or handed to every layer by the model, goes to the rest). With
    ``checkpointed`` layers, a layer keeps its input (non-reentrant checkpointing saves it for the recomputation)."""

    def __init__(self, model: torch.nn.Module, checkpointed: bool):
        self.where: str = REST
        self.owners: dict[int, set[str]] = defaultdict(set)
        self.sizes: dict[int, int] = {}
        self.checkpointed = checkpointed
        self.shared: set[int] = set()  # what the model hands every layer (masks, position embeddings)
        self.alive: list[torch.Tensor] = []  # held while counting, so no storage is freed and its address reused
        self.handles = []
        for name, module in model.named_modules():
            index = layer_index(name)
            if index is not None and re.search(rf"(?:layers|layer|h)\.{index}$", name):
                self.handles.append(module.register_forward_pre_hook(self._enter(f"layer{index}"), with_kwargs=True))
                self.handles.append(module.register_forward_hook(self._leave))

    def _enter(self, where: str):
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            self.where = where
            if self.checkpointed:  # the layer's input is its own; masks and position embeddings are the model's
                hidden = args[0] if args else kwargs.get("hidden_states")
                self._keep(hidden)
                for value in [*args[1:], *(v for k, v in kwargs.items() if k != "hidden_states")]:
                    for item in value if isinstance(value, tuple) else (value,):
                        self._keep(item, shared=True)

        return hook

    def _leave(self, *_: Any) -> None:
        self.where = REST

    def _keep(self, tensor: Any, shared: bool = False) -> None:
        if isinstance(tensor, torch.Tensor):
            self.alive.append(tensor)
            storage = tensor.untyped_storage()
            key = storage._cdata
            self.owners[key].add(REST if shared else self.where)
            self.sizes[key] = storage.nbytes()
            if shared:
                self.shared.add(key)

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self._keep(tensor)
        return tensor

    @contextmanager
    def recording(self) -> Iterator[None]:
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
            yield

    def by_part(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for key, owners in self.owners.items():
            layers = owners - {REST}  # a layer's input is saved outside it too (by the checkpoint): the layer's
            out[layers.pop() if len(layers) == 1 and key not in self.shared else REST] += self.sizes[key]
        out.setdefault(REST, 0)
        return dict(out)

    def close(self) -> None:
        self.alive.clear()
        for handle in self.handles:
            handle.remove()


def flops_by_part(counter: Any) -> dict[str, int]:
    """Counted FLOPs per decoder layer (``layer0``, ...) and the rest: each layer's own module entry, the rest the
    total minus the layers."""
    counts = counter.get_flop_counts()
    out: dict[str, int] = {}
    for name, ops in counts.items():
        index = layer_index(name)
        if index is not None and re.search(rf"(?:layers|layer|h)\.{index}$", name):
            out[f"layer{index}"] = int(sum(ops.values()))
    out[REST] = int(counter.get_total_flops()) - sum(out.values())
    return out


def weight_bytes(model: torch.nn.Module) -> dict[str, dict[str, int]]:
    """Bytes of weights and buffers by part (``layer``: all decoder layers together; ``rest``) and dtype; 4-bit and
    8-bit weights as their packed storage plus the quantization state they carry; trainable ones apart."""
    out: dict[str, dict[str, int]] = {"layer": defaultdict(int), REST: defaultdict(int)}
    seen: set[int] = set()
    named = [*model.named_parameters(), *model.named_buffers()]
    for name, tensor in named:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        kind = "trainable " + str(tensor.dtype) if tensor.requires_grad else str(tensor.dtype)
        out[part_of(name)][kind.replace("torch.", "")] += tensor.numel() * tensor.element_size()
        extra = 0
        state = getattr(tensor, "quant_state", None)
        if state is not None:
            extra += sum(
                v.numel() * v.element_size() for v in state.as_dict(packed=True).values() if torch.is_tensor(v)
            )
        scale = getattr(tensor, "SCB", None)
        if torch.is_tensor(scale):
            extra += scale.numel() * scale.element_size()
        if extra:
            out[part_of(name)]["quantization state"] += extra
    return {part: dict(v) for part, v in out.items()}


def total(parts: dict[str, int]) -> int:
    return int(sum(parts.values()))


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> int:
    """Start a new peak of the resident memory (Linux: ``/proc/self/clear_refs``), after handing freed memory back to
    the system (glibc's ``malloc_trim``), so growth is new memory; the resident bytes now."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return _status("VmRSS")


def peak_rss() -> int:
    """The most resident memory since :func:`reset_peak_rss` (bytes)."""
    return _status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------- measuring
def synthetic_batch(batch: int, length: int, vocab: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    ids = torch.tensor(rng.integers(3, vocab, size=(batch, length)))
    ids[ids == pad_id] = pad_id + 1
    return ids, torch.ones_like(ids)


def by_layer(name: str) -> str:
    index = layer_index(name)
    return REST if index is None else f"layer{index}"


def measure_training(cfg: Any, batch: int, lengths: Sequence[int], checkpointing: bool) -> dict[int, dict[str, Any]]:
    """Real training steps of ``cfg`` (build_model, autocast, the loss train.py uses, AdamW), one per length, each
    with its FLOPs, saved activations, weights, gradients, optimizer state, time and the growth of the resident
    memory (the first step's growth includes the optimizer state it creates)."""
    from torch.utils.flop_counter import FlopCounterMode

    from duelist.core.hardware import autocast_dtype
    from duelist.models.network_build import build_model
    from duelist.models.network_training import pair_losses

    device = torch.device("cpu")
    built = build_model(cfg.model, cfg.lora, device, seed=0, gradient_checkpointing=checkpointing)
    model = built.model
    model.train()
    amp = autocast_dtype(cfg.model.dtype, device)  # as trainer.precision=bf16 | fp32 would train it
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW([p for _, p in named], lr=1e-5)
    out = {}
    for length in lengths:
        ids, mask = synthetic_batch(batch, length, model.config.vocab_size, built.tokenizer.pad_token_id)
        target = torch.full((batch,), 0.7)
        saved = SavedActivations(model, checkpointed=checkpointing)
        counter = FlopCounterMode(display=False)
        rss_before = reset_peak_rss()
        start = time.perf_counter()
        with counter:
            with saved.recording(), torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(input_ids=ids, attention_mask=mask).logits
            saved_parts = saved.by_part()
            pair_losses(logits.float(), target).mean().backward()
        opt.step()
        seconds = time.perf_counter() - start
        rss_peak = peak_rss()
        saved.close()
        grads: dict[str, int] = defaultdict(int)
        optimizer: dict[str, int] = defaultdict(int)
        for name, param in named:
            grads[by_layer(name)] += param.grad.numel() * param.grad.element_size()
            state = opt.state.get(param, {})
            optimizer[by_layer(name)] += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
        opt.zero_grad(set_to_none=True)
        out[length] = {
            "checkpointing": checkpointing,
            "autocast": str(amp).replace("torch.", "") if amp else "none",
            "weights_bytes": weight_bytes(model),
            "trainable_parameters": int(sum(p.numel() for _, p in named)),
            "gradient_bytes": dict(grads),
            "optimizer_bytes": dict(optimizer),
            "flops": flops_by_part(counter),
            "saved_activation_bytes": saved_parts,
            "seconds": seconds,
            "tokens": batch * length,
            "rss_gb_before_step": rss_before / GB,
            "rss_growth_gb_in_step": (rss_peak - rss_before) / GB,
        }
        del logits
    return out


@contextmanager
def random_weights_folder(cfg: Any) -> Iterator[str]:
    """The random-init model of ``cfg`` saved as a folder, to load through a quantizer as a checkpoint's base/ is."""
    from duelist.models.network_build import _random_model, load_tokenizer

    if local_weights(cfg.model):
        yield local_weights(cfg.model)
        return
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    model = _random_model(cfg.model, tokenizer, torch.float32, seed=0)
    with tempfile.TemporaryDirectory(prefix="duelist-footprint-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        del model
        yield tmp


def measure_scoring(cfg: Any, folder: str, precision: str, batch: int, length: int) -> dict[str, Any]:
    """The scoring pass (``predict_p_a``, as infer.py runs it) of ``batch`` rows of ``length`` tokens with the weights
    in ``precision``: weights by dtype, counted FLOPs, time."""
    from torch.utils.flop_counter import FlopCounterMode

    from duelist.core.hardware import autocast_dtype, half_weights, torch_dtype
    from duelist.models.heads import head_of
    from duelist.models.network_build import build_base, load_tokenizer
    from duelist.models.network_scoring import predict_p_a

    device = torch.device("cpu")
    quantized = precision in ("int8", "nf4")
    weights_dtype = torch_dtype("fp16" if quantized else precision, device)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    lora = cfg.lora.copy()
    lora.enabled = lora.qlora = False
    model = build_base(
        cfg.model,
        lora,
        tokenizer,
        weights_dtype,
        0,
        device,
        weights=folder,
        quantization=precision if quantized else "none",
    )
    model.eval().requires_grad_(False)  # scoring: nothing trains
    amp = autocast_dtype("auto", device, half_weights(model))
    ids, _ = synthetic_batch(batch, length, model.config.vocab_size, tokenizer.pad_token_id)
    rows = ids.tolist()
    counter = FlopCounterMode(display=False)
    start = time.perf_counter()
    with counter:
        predict_p_a(
            model,
            head_of(cfg.model),
            rows,
            tokenizer.pad_token_id,
            batch,
            device,
            amp,
            f"score {precision}",
            quiet=True,
        )
    return {
        "autocast": str(amp).replace("torch.", "") if amp else "none",
        "weights_bytes": weight_bytes(model),
        "flops": flops_by_part(counter),
        "seconds": time.perf_counter() - start,
        "tokens": batch * length,
    }


# ---------------------------------------------------------------- projecting
def project_parts(parts: dict[str, float], layers: int) -> float:
    """rest + the first layer + (layers − 1) × the mean of the other measured layers. The first layer is apart: its
    input (the embedding's output) needs no gradient, so its backward does less; the others are alike."""
    first = parts.get("layer0", 0.0)
    others = [v for k, v in parts.items() if k not in (REST, "layer0")]
    typical = float(np.mean(others)) if others else first
    if layers == 0:
        return float(parts.get(REST, 0.0))
    return float(parts.get(REST, 0.0) + first + (layers - 1) * typical)


BASE_OF = {"qlora": "nf4", "lora": "bf16"}  # the scoring build whose frozen weights are the recipe's base


def frozen(weights: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The weights without the trainable ones (the base a recipe trains on)."""
    return {part: {k: v for k, v in kinds.items() if not k.startswith("trainable")} for part, kinds in weights.items()}


def weights_at_depth(weights: dict[str, dict[str, int]], measured: int, layers: int) -> int:
    return int(total(weights[REST]) + total(weights["layer"]) / measured * layers)


def projection(
    measured: dict[str, Any], opts: "FootprintOptions", full_cfg: Any, layers: int, hardware: bool = True
) -> dict[str, Any]:
    """The measurement at ``measured["layers"]`` layers projected to ``layers`` (same rows per step, same length)."""
    n = measured["layers"]
    out: dict[str, Any] = {"layers": layers, "batch": opts.batch, "max_length": opts.max_length}
    training = out["training"] = {}
    for name, step in measured["training"].items():
        plain = measured["training"].get(name.removesuffix("_checkpointing"))
        recompute = None
        if step["checkpointing"] and plain is not None and not plain["checkpointing"]:
            recompute = max(v for k, v in plain["saved_activation_bytes"].items() if k != REST)  # one layer, recomputed
        parts = {
            "weights": weights_at_depth(step["weights_bytes"], n, layers),
            "gradients": project_parts(step["gradient_bytes"], layers),
            "optimizer": project_parts(step["optimizer_bytes"], layers),
            "saved_activations": project_parts(step["saved_activation_bytes"], layers),
            "recomputed_layer": recompute or 0.0,
        }
        base = BASE_OF[name.removesuffix("_checkpointing")]
        if step["autocast"] == "none" and base in measured["scoring"]:  # fp32 compute: the recipe's half base too
            half = weights_at_depth(frozen(measured["scoring"][base]["weights_bytes"]), n, layers)
            parts["weights"] += half - weights_at_depth(frozen(step["weights_bytes"]), n, layers)
        training[name] = {
            "peak_gb": sum(parts.values()) / GB,
            "parts_gb": {k: v / GB for k, v in parts.items()},
            "growth_in_step_gb": (sum(parts.values()) - parts["weights"]) / GB,
            "step_flops": project_parts(step["flops"], layers),
            "saved_activation_bytes_per_token": project_parts(step["saved_activation_bytes"], layers) / step["tokens"],
        }
        if step["autocast"] == "none":
            training[name]["note"] = (
                f"trained in fp32 (no autocast); weights with the recipe's half-precision base (the {base} scoring "
                "build's); saved activations in fp32: an upper bound of bf16 autocast's"
            )
        if step["checkpointing"] and recompute is None:
            training[name]["note"] = "recomputed layer unknown: measure checkpointing=[false,true] together"
    scoring = out["scoring"] = {}
    for precision, run in measured["scoring"].items():
        scoring[precision] = {
            "weights_gb": weights_at_depth(run["weights_bytes"], n, layers) / GB,
            "forward_flops": project_parts(run["flops"], layers),
        }
    if hardware:
        curve = flops_curve(full_cfg)
        per_row = float(row_flops(curve, [opts.max_length])[0])
        out["flops_curve"] = curve
        out["forward_flops_row_counted_at_full_depth"] = per_row
        lengths = synthetic_lengths(KAGGLE_ROWS, opts.max_length)
        flops = float(row_flops(curve, lengths).sum())
        out["kaggle_rows"] = {
            "rows": KAGGLE_ROWS,
            "lengths": f"lognormal(median=1000, sigma=0.8) clipped to [64, {opts.max_length}] (bench's mix)",
            "forward_flops": flops,
            "hours_with_swap_tta": kaggle_hours(full_cfg, scoring, opts.max_length, 2 * flops, opts.hardware),
        }
    return out


def kaggle_hours(
    cfg: Any, scoring: dict[str, dict[str, float]], max_length: int, flops: float, hardware: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Hours of ``flops`` on each machine of ``hardware`` for each way scoring holds the weights (the machine's 16-bit
    dtype, int8, nf4: their measured ``weights_gb``), where the model and a batch of
    :data:`~duelist.tools.plan.BATCH_TOKENS` fit (:func:`duelist.tools.plan.hours_by_placement`)."""
    from duelist.models.network_build import attention
    from duelist.models.network_flops import working_gb
    from duelist.tools.plan import BATCH_TOKENS, hours_by_placement

    working = working_gb(hf_config(cfg), BATCH_TOKENS, max_length, attention(cfg.model) == "eager")
    out = {}
    for name in hardware:
        held = {q: THROUGHPUT[name].precision if q == "none" else q for q in QUANTIZATIONS}
        weights = {q: scoring[how]["weights_gb"] for q, how in held.items() if how in scoring}
        out[name] = hours_by_placement(name, weights, working, flops)
    return out


def took_here(run: dict[str, Any]) -> str:
    if run["seconds"] is not None:
        return f"{run['seconds']:.0f} s"
    return ", ".join(f"{v['seconds']:.0f} s at {n}" for n, v in run["measured_at"].items()) + " tokens"


def print_report(report: dict[str, Any], out: Path) -> None:
    shape, p = report["shape"], report["projection"]
    n, full = report["measured"]["layers"], p["layers"]
    print(
        f"{report['model']}: hidden {shape['hidden_size']}, MLP {shape['intermediate_size']}, vocab "
        f"{shape['vocab_size']}, {full} layers; measured at {n} layers on {report['device']}, "
        f"{p['batch']} × {p['max_length']} tokens"
    )
    for name, step in p["training"].items():
        parts = ", ".join(f"{k} {v:.1f}" for k, v in step["parts_gb"].items())
        took = took_here(report["measured"]["training"][name])
        print(f"  train {name:<24} peak {step['peak_gb']:6.1f} GB at {full} layers ({parts}); step here {took}")
    for precision, run in p["scoring"].items():
        took = took_here(report["measured"]["scoring"][precision])
        print(f"  score {precision:<24} weights {run['weights_gb']:6.1f} GB at {full} layers; pass here {took}")
    if "kaggle_rows" in p:
        k = p["kaggle_rows"]
        for name, by_quantization in k["hours_with_swap_tta"].items():
            for quantization, h in by_quantization.items():
                hours = f"{h['hours']:.1f} h with swap TTA" if h["hours"] is not None else "-"
                print(f"  {k['rows']} rows on {name}, quantization={quantization}: {hours}; {h['placement']}")
    for layers, check in report.get("check", {}).items():
        for name, step in check["projected"]["training"].items():
            got = check["measured"]["training"][name]
            print(
                f"  check {layers} layers, {name}: FLOPs {step['step_flops']:.4g} projected vs "
                f"{sum(got['flops'].values()):.4g} counted; saved activations "
                f"{step['saved_activation_bytes_per_token']:.0f} vs "
                f"{sum(got['saved_activation_bytes'].values()) / got['tokens']:.0f} B/token"
                + (
                    f"; step growth {step['growth_in_step_gb']:.2f} GB vs {got['rss_growth_gb_in_step']:.2f} GB "
                    "resident"
                    if "rss_growth_gb_in_step" in got
                    else ""
                )
            )
    print(f"wrote {out}")


# ---------------------------------------------------------------- the command
@dataclass
class FootprintOptions:
    model: str = option("gemma2_9b_random", "a conf/model name of a random-init network (its real shape)")
    layers: int = option(2, "decoder layers to build at the real width")
    max_length: int = option(2048, "tokens per row")
    batch: int = option(1, "rows per training step and per scoring pass")
    recipes: list = option(list(RECIPES), f"training recipes to run: {', '.join(RECIPES)} ([] for none)")
    precisions: list = option(list(PRECISIONS), f"scoring precisions to run: {', '.join(PRECISIONS)} ([] for none)")
    precision: str = option("bf16", "training: bf16 (autocast; the lora recipe's base in bf16) | fp32 (no autocast)")
    lengths: list = option([], "train at these (3+) lengths, fit c + a·L + b·L² to max_length ([]: at max_length)")
    score_length: int = option(0, "tokens of the scoring pass (0: max_length); its weights do not depend on it")
    checkpointing: list = option([False, True], "gradient checkpointing settings to measure")
    check_layers: list = option([], "depths to build too, measured beside the projection from `layers`")
    hardware: list = option(list(THROUGHPUT), "devices to project the time of 25k rows on")
    out: Optional[str] = option(None, "JSON path (default outputs/footprint/<model>-<layers>l.json)")


def measure(opts: FootprintOptions, layers: int) -> dict[str, Any]:
    """Every measurement of one depth, at ``max_length`` or, with ``lengths``, at each of them and fitted to
    ``max_length`` (:func:`fit_length`)."""
    lengths = [int(n) for n in opts.lengths] or [opts.max_length]
    report: dict[str, Any] = {"layers": layers, "training": {}, "scoring": {}}
    runs: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for recipe in opts.recipes:
        cfg = compose(opts.model, layers, RECIPES[recipe], opts.precision)
        for ckpt in opts.checkpointing:
            name = f"{recipe}{'_checkpointing' if ckpt else ''}"
            print(f"  train {name}, {layers} layers, {opts.batch} × {lengths} tokens ...", flush=True)
            runs[f"training/{name}"] = measure_training(cfg, opts.batch, lengths, bool(ckpt))
    if opts.precisions:
        cfg = compose(opts.model, layers)
        with random_weights_folder(cfg) as folder:
            for precision in opts.precisions:
                length = opts.score_length or opts.max_length
                print(f"  score {precision}, {layers} layers, {opts.batch} × {length} tokens ...", flush=True)
                report["scoring"][precision] = measure_scoring(cfg, folder, precision, opts.batch, length)
    for key, by_length in runs.items():
        group, name = key.split("/")
        report[group][name] = fit_length(by_length, opts.max_length, opts.batch)
    return report


FITTED = ("flops", "saved_activation_bytes")  # what grows with the length: c + a·L + b·L² (attention's L×L)


def fit_length(by_length: dict[int, dict[str, Any]], target: int, batch: int) -> dict[str, Any]:
    """One measurement at ``target`` tokens from measurements at three or more other lengths: FLOPs and saved
    activations of each part fitted as c + a·L + b·L² (exact for these models: a tensor is per token, per pair of
    tokens, or of a fixed size, like the adapters' weights cast to bf16 by autocast), the rest as measured at the
    longest; ``measured_at`` keeps what was measured. A single length that is the target is returned as it is."""
    if list(by_length) == [target]:
        return by_length[target]
    lengths = sorted(by_length)
    if len(lengths) < 3:
        raise DuelistError(f"lengths={lengths}: three lengths at least, to fit c + a·L + b·L² to max_length={target}")
    out = dict(by_length[lengths[-1]])
    basis = np.array([[1, n, n * n] for n in lengths], dtype=np.float64)
    for key in (k for k in FITTED if k in out):
        parts = by_length[lengths[-1]][key]
        fitted = {}
        for part in parts:
            values = np.array([by_length[n][key].get(part, 0) for n in lengths], dtype=np.float64)
            coef = np.linalg.lstsq(basis, values, rcond=None)[0]
            fitted[part] = float(round(coef @ [1, target, target * target]))  # bytes and FLOPs are whole
        out[key] = fitted
    out["tokens"] = batch * target
    out["fitted_from_lengths"] = lengths
    out["measured_at"] = {str(n): {k: by_length[n][k] for k in (*FITTED, "seconds") if k in out} for n in lengths}
    out["seconds"] = None  # measured at the lengths above (measured_at), not at the target
    for key in ("rss_growth_gb_in_step", "rss_gb_before_step"):
        out.pop(key, None)  # a resident size is measured at one length, not fitted
    return out


def run(opts: FootprintOptions) -> dict[str, Any]:
    unknown = [r for r in opts.recipes if r not in RECIPES] + [p for p in opts.precisions if p not in PRECISIONS]
    if opts.precision not in ("bf16", "fp32"):
        unknown.append(opts.precision)
    if unknown:
        raise DuelistError(f"unknown recipe or precision {unknown}; recipes: {list(RECIPES)}, precisions: {PRECISIONS}")
    os.environ["DUELIST_CPU_BNB"] = "1"  # the bitsandbytes paths on this CPU
    full_cfg = compose(opts.model, None)
    config = hf_config(full_cfg)
    full = int(config.num_hidden_layers)
    report: dict[str, Any] = {
        "device": device_name(torch.device("cpu")),
        "versions": versions(),
        "commit": git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "model": opts.model,
        "shape": {k: getattr(config, k, None) for k in SHAPE_KEYS},
        "settings": {k: v for k, v in vars(opts).items() if k != "out"},
    }
    report["measured"] = measure(opts, opts.layers)
    report["projection"] = projection(report["measured"], opts, full_cfg, full)
    checks = {}
    for layers in opts.check_layers:
        checks[str(layers)] = {
            "measured": measure(opts, int(layers)),
            "projected": projection(report["measured"], opts, full_cfg, int(layers), hardware=False),
        }
    if checks:
        report["check"] = checks
    out = Path(opts.out or f"outputs/footprint/{slug(opts.model)}-{opts.layers}l.json")
    write_json(out, report)
    print_report(report, out)
    return report


SHAPE_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
)


def parse(argv: Sequence[str] | None = None) -> FootprintOptions:
    return options.parse(FootprintOptions, argv, "python -m duelist footprint", __doc__.split("\n\n")[0])


@exit_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    quiet_library_logs()
    return run(parse(argv))
