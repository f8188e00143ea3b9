"""The machine: which device, which dtype, which autocast, and whether bitsandbytes can run here.

Precision names (:class:`~duelist.core.config.Precision`: ``auto | fp32 | bf16 | fp16``) are one vocabulary for
weights and autocast. ``auto`` is bf16 on a GPU that has it, fp16 on older GPUs (T4, V100) and fp32 on a CPU.

bitsandbytes (QLoRA, int8/nf4 scoring, 8-bit AdamW) needs a CUDA GPU; its CPU kernels run the same paths in tests
behind the test-only switch ``DUELIST_CPU_BNB=1`` (:func:`cpu_bnb`).
"""

from __future__ import annotations

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


def vllm_dtype(name: Any) -> str:
    """vLLM's name for a precision: ``auto`` stays auto (vLLM picks), the others are torch's names (``float16``,
    ...)."""
    if precision(name) == Precision.auto:
        return "auto"
    return str(torch_dtype(name, torch.device("cpu"))).removeprefix("torch.")


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
    """vLLM (the ``vllm`` extra) imports and a CUDA GPU is visible, for ``what``; else one line naming ``instead``."""
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        raise DuelistError(
            f"{what} needs vLLM: pip install 'duelist[vllm]' (Linux + CUDA GPU), or use {instead}"
        ) from err
    if not torch.cuda.is_available():
        raise DuelistError(f"{what} needs a CUDA GPU; on this machine use {instead}")


def quantized_device_map(device: torch.device) -> dict[str, Any]:
    """Where bitsandbytes places a quantized model: all of it on ``device`` (a data-parallel worker's own GPU, not
    the current one, which is GPU 0 in every freshly spawned process)."""
    if device.type == "cuda":
        return {"": device.index if device.index is not None else torch.cuda.current_device()}
    return {"": "cpu"}


@dataclass(frozen=True)
class Throughput:
    """A machine the projections of ``footprint`` and ``plan`` time work on."""

    devices: int  # GPUs working on one job's rows (infer.py devices=[...])
    flops: float  # sustained FLOP/s of one device in ``precision``
    precision: str  # the dtype scoring runs in there
    memory_gb: float  # memory of one device
    source: str  # where ``flops`` comes from


THROUGHPUT = {
    "t4x2": Throughput(2, 24e12, "fp16", 15.0, "Kaggle's 2×T4: fp16 sustained at the T4's 70 W cap (65 nominal)"),
    "h100": Throughput(1, 790e12, "bf16", 80.0, "one H100: bf16 dense matmul as measured earlier (989 nominal)"),
}
