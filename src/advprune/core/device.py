"""Device and precision choices, made in one place."""

from __future__ import annotations

import contextlib

import torch

from advprune.core.distributed import launched_world_size, local_rank
from advprune.core.errors import ConfigError

PRECISIONS = ("fp32", "bf16")


def resolve_device(name: str | None = None) -> torch.device:
    """`None`/"auto" picks CUDA when present, else CPU; an unavailable device is a clear error.

    Under torchrun, "auto" and "cuda" mean this process's own GPU, cuda:LOCAL_RANK.
    """
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if device.type == "cuda" and device.index is None and launched_world_size() > 1:
        device = torch.device("cuda", local_rank())
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context: "bf16" autocasts (no loss scaling needed), "fp32" is a no-op."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
