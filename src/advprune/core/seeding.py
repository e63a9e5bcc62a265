"""Seeding, so that a run and its resumed twin draw the same random numbers.

`seed_everything` starts every generator from a seed; `rng_state`/`set_rng_state` capture and
restore them mid-run, so a run resumed from a mid-epoch checkpoint continues the very streams the
interrupted run was drawing from (attack random starts, dropout).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from advprune.core.errors import CheckpointError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state of every generator this process draws from: torch's CPU generator and the
    generator of `device` when it is a GPU (as tensors), Python's and NumPy's (their Mersenne
    Twister keys as tensors, the scalars as JSON)."""
    version, python_keys, python_gauss = random.getstate()
    _, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    tensors = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor(python_keys, dtype=torch.int64),
        "numpy": torch.from_numpy(numpy_keys.astype(np.int64)),
    }
    if device.type == "cuda":
        tensors["cuda"] = torch.cuda.get_rng_state(device)
    scalars = {
        "python_version": version,
        "python_gauss": python_gauss,
        "numpy_pos": int(numpy_pos),
        "numpy_has_gauss": int(numpy_has_gauss),
        "numpy_gauss": float(numpy_gauss),
    }
    return tensors, scalars


def set_rng_state(
    tensors: dict[str, torch.Tensor], scalars: dict[str, Any], device: torch.device
) -> None:
    """Restore what `rng_state` captured."""
    if ("cuda" in tensors) != (device.type == "cuda"):
        raise CheckpointError(
            "the checkpoint's random-number state was saved on another kind of device; resume "
            "mid-epoch on the device type it was written on (or from an epoch-end checkpoint)"
        )
    torch.set_rng_state(tensors["torch"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(tensors["cuda"], device)
    python_keys = tuple(int(k) for k in tensors["python"].tolist())
    random.setstate((scalars["python_version"], python_keys, scalars["python_gauss"]))
    np.random.set_state(
        (
            "MT19937",
            tensors["numpy"].numpy().astype(np.uint32),
            scalars["numpy_pos"],
            scalars["numpy_has_gauss"],
            scalars["numpy_gauss"],
        )
    )
