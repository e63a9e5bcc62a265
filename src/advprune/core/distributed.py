"""Data-parallel runs launched by torchrun: which process we are, and the collectives we need.

`torchrun --nproc-per-node N -m advprune train ...` starts N processes with RANK, WORLD_SIZE,
LOCAL_RANK and a rendezvous address in their environment; `initialize` joins them into one process
group. Without torchrun (WORLD_SIZE unset or 1) every helper here is a no-op for a single process,
so code written once runs either way.

Methods use `all_reduce_sum` for accumulators each rank fills from its own shard (MAD saliency,
counts) and `average_gradients` for parameters that DistributedDataParallel does not own (gates or
scores kept outside the model).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from advprune.core.errors import ConfigError

BACKENDS = ("gloo", "nccl")
# Rank 0 alone writes checkpoints and evaluates parts of an epoch; the others wait in the next
# collective, so the timeout must outlast the longest such pause on a big model.
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: rank r of world_size processes, on local GPU local_rank."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and logs."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_world_size() -> int:
    """WORLD_SIZE as torchrun set it (1 when not launched by torchrun)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError as err:
        raise ConfigError(
            f"WORLD_SIZE={value!r} is not a number; launch with torchrun or unset it"
        ) from err


def local_rank() -> int:
    """LOCAL_RANK under torchrun: the GPU index this process uses on its node."""
    return int(os.environ.get("LOCAL_RANK", "0")) if launched_world_size() > 1 else 0


def current() -> Distributed:
    if not (dist.is_available() and dist.is_initialized()):
        return Distributed()
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank())


def initialize(backend: str | None = None, device: torch.device | None = None) -> Distributed:
    """Join the process group torchrun prepared; idempotent, and a no-op without torchrun.

    `backend` None picks nccl for CUDA devices and gloo otherwise (gloo also runs on CPU).
    """
    if current().enabled or launched_world_size() <= 1:
        return current()
    cuda = device is not None and device.type == "cuda"
    backend = backend or ("nccl" if cuda else "gloo")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "nccl" and not cuda:
        raise ConfigError("--backend nccl needs CUDA devices; use --backend gloo on CPU")
    if cuda:
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend, timeout=TIMEOUT)
    except (RuntimeError, ValueError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            f"cannot join the torchrun process group ({message}); check --rdzv-endpoint / "
            "MASTER_ADDR and that every node was launched with the same --nnodes"
        ) from err
    return current()


def shutdown(finished: bool = False) -> None:
    """Leave the process group. After a finished command every rank first waits for the others on
    torchrun's store, so no rank closes its gloo connections while a peer may still be reading the
    last collective from them (pytorch/gloo#155); after a failure it leaves at once, and torchrun
    stops the ranks still waiting."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if finished and current().enabled:
        _wait_for_every_rank("advprune/finished")
    dist.destroy_process_group()


def _wait_for_every_rank(key: str) -> None:
    """A barrier on the rendezvous store (TCP to torchrun's agent), not on gloo or NCCL."""
    store = dist.distributed_c10d._get_default_store()
    ddp = current()
    store.set(f"{key}/{ddp.rank}", "1")
    store.wait([f"{key}/{rank}" for rank in range(ddp.world_size)], TIMEOUT)


def main_output(progress: bool, log: Callable[[str], None]) -> tuple[bool, Callable[[str], None]]:
    """`progress` and `log` on rank 0, silence on the others: one process speaks for the run."""
    return (progress, log) if current().is_main else (False, _silent)


def _silent(_: str) -> None:
    pass


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place; returns it (unchanged for one process)."""
    if current().enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_gradients(parameters: list[nn.Parameter]) -> None:
    """Average `.grad` over ranks for parameters DDP does not own, as DDP does for the model's:
    one all-reduce of the gradients flattened together, not one per tensor."""
    world = current().world_size
    grads = [parameter.grad for parameter in parameters if parameter.grad is not None]
    if world == 1 or not grads:
        return
    flat = all_reduce_sum(torch.cat([grad.reshape(-1) for grad in grads])).div_(world)
    for grad, averaged in zip(grads, flat.split([grad.numel() for grad in grads]), strict=True):
        grad.copy_(averaged.view_as(grad))


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's `value` (picklable), in rank order: e.g. per-rank RNG states for a checkpoint.

    The values travel between our own processes only; nothing read from a file is unpickled.
    """
    world = current().world_size
    if world == 1:
        return [value]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank, so all ranks take the same branch (e.g. "cache exists")."""
    if not current().enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(model: nn.Module, device: torch.device, find_unused_parameters: bool) -> nn.Module:
    """`model` under DistributedDataParallel (gradients all-reduced in backward), if distributed."""
    if not current().enabled:
        return model
    if not any(parameter.requires_grad for parameter in model.parameters()):
        return model  # e.g. HYDRA's scores: the method averages its own gradients
    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel: attacks run on it, so their input-gradient
    passes neither trigger gradient all-reduces nor count as DDP iterations."""
    return model.module if isinstance(model, DistributedDataParallel) else model
