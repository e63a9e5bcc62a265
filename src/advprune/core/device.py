"""Device and precision choices, made in one place."""

from __future__ import annotations

import contextlib
import ctypes
import sys

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


def flush_denormals() -> bool:
    """Have the CPU treat subnormal floats (|x| < 1.2e-38 in float32) as zero.

    ANP-VS's relaxed-Bernoulli gates at temperature 0.1 saturate, and their samples and
    gradients reach subnormal values, on which x86 arithmetic is many times slower: one epoch of
    the demo's ANP-VS on 6,000 images takes 19.1 s, and 12.2 s with this set, to the same weights
    (benchmarks/subnormals.py). Part of `tune_process`; a program using the API can call either
    itself. Returns whether the CPU supports it.
    """
    return torch.set_flush_denormal(True)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_host_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of handing it back to the OS at once.

    By default every tensor over a (growing) threshold is mmap'ed and unmapped when freed, and the
    heap is trimmed as soon as 128 KiB are free at its top, so a training loop page-faults its
    activations in again at every step: on the development CPU that was ~15 % of a PGD-AT run's
    CPU time, all of it system time. Heap allocations up to 32 MiB (glibc's ceiling) and 1 GiB of
    free heap kept bring it near zero; the peak memory stays what it was. Called by the command
    line, which owns its process; a program using the API can call it itself. Returns whether the
    C library took the settings (False off glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    settings = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30))
    return all([mallopt(option, value) == 1 for option, value in settings])


def tune_process() -> None:
    """The process-wide speed settings of every advprune process: freed memory kept for reuse
    (`keep_freed_host_memory`) and subnormal floats flushed (`flush_denormals`). The command line
    calls it, and so does every step `reproduce` runs (`run_step`), here or in its own process."""
    keep_freed_host_memory()
    flush_denormals()
