"""Several processes for one run: DDP or FSDP2, launched by ``accelerate launch`` or ``torchrun``.

One process per GPU (NCCL), or per CPU slot with gloo (tests). Every process builds the same model
from the same seed and takes every ``world``-th batch of each step. ``ddp`` keeps a full replica per
process and averages gradients; ``fsdp`` (PyTorch FSDP2 ``fully_shard``) shards every decoder layer's
parameters, gradients and optimizer state across processes — what full fine-tuning of a 9B model
needs. With FSDP every process takes part in validation (the forward pass gathers the parameters)
and in saving (the full state dict is gathered onto rank 0, which alone writes the run dir).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from duelist.core.errors import DuelistError
from duelist.core.hardware import pick_device


@dataclass
class Distributed:
    """This process's place in a multi-process run (``accelerate launch`` / ``torchrun`` set the env)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    strategy: str = "none"  # none (one process) | ddp | fsdp

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp"


def resolve_strategy(name: str) -> str:
    """``auto``: FSDP when ``accelerate launch --use_fsdp`` started us (it sets ACCELERATE_USE_FSDP), else DDP."""
    if name == "auto":
        return "fsdp" if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true") else "ddp"
    return name


def init_distributed(
    device_name: str, strategy: str = "auto", timeout_min: float = 30.0
) -> tuple[Distributed, torch.device]:
    """One process: the configured device. Several (WORLD_SIZE > 1): one GPU each (NCCL), or CPU with gloo;
    ``timeout_min``: how long a collective waits for the slowest process before the run is ended."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    strategy = resolve_strategy(strategy)
    if world <= 1:
        return Distributed(), pick_device(device_name, "trainer.device")
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device_name != "cpu"
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        from datetime import timedelta

        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=timeout_min))
    return Distributed(rank, world, local, strategy), torch.device("cuda", local) if cuda else torch.device("cpu")


def _layer_classes(model: torch.nn.Module) -> set[str]:
    """Class names of the transformer blocks (Hugging Face lists them in ``_no_split_modules``)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return names


def wrap(model: torch.nn.Module, state: Distributed, device: torch.device) -> torch.nn.Module:
    """The module to run forward/backward through: the model itself, a DDP wrapper, or the model sharded
    in place by FSDP2 (then ``model`` itself is the sharded module; build the optimizer afterwards)."""
    if state.world <= 1:
        return model
    if state.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[state.local_rank] if device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (state.world,))
    blocks = _layer_classes(model)
    if not blocks:
        raise DuelistError(
            "trainer.strategy=fsdp: this model names no transformer block class (_no_split_modules); use "
            "trainer.strategy=ddp"
        )
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)  # the rest (embeddings, final norm, head) as one unit
    return model


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """All processes call this; rank 0 receives the full (unsharded) state dict on CPU, the others an empty one."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def broadcast(value: Any, state: Distributed) -> Any:
    """Rank 0's ``value`` on every process."""
    if state.world <= 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any, state: Distributed) -> list[Any]:
    """Every process's ``value``, in rank order, on every process."""
    if state.world <= 1:
        return [value]
    import torch.distributed as dist

    box: list[Any] = [None] * state.world
    dist.all_gather_object(box, value)
    return box


def barrier(state: Distributed) -> None:
    if state.world > 1:
        import torch.distributed as dist

        dist.barrier()


def optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name (so it reloads into a rebuilt model); under FSDP every process
    calls this and rank 0 receives the gathered state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def set_optimizer_state(
    model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any], dist: Distributed
) -> None:
    """Load what :func:`optimizer_state` returned (the full state; FSDP keeps each process's shard of it). With several
    processes only rank 0 holds it (read from the saved state) and sends it to the others, so no process but rank 0
    keeps a full copy in memory (a 9B model's is about 100 GB)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    several = dist.world > 1
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=several)
    set_optimizer_state_dict(model, opt, state if dist.main or not several else {}, options=options)


def set_sharded_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], dist: Distributed) -> None:
    """FSDP: rank 0's full copy of the trainable weights (read from a saved state) sent to every process's shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    set_model_state_dict(model, weights if dist.main else {}, options=options)
