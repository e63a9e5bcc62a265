"""Training state (model, optimizer, progress) for exact resume, as one safetensors file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advprune.core.errors import CheckpointError
from advprune.core.tensor_files import load_tensors, save_tensors
from advprune.models.serialization import load_state_strict

MODEL_PREFIX = "model."
OPTIMIZER_PREFIX = "optimizer."
EXTRA_PREFIX = "extra."


def save_training_state(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    metadata: dict,
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Model, optimizer and `extra` tensors (e.g. pruning masks) under prefixes; optimizer scalars
    and groups in the metadata."""
    tensors = {MODEL_PREFIX + name: t for name, t in model.state_dict().items()}
    tensors.update({EXTRA_PREFIX + name: t for name, t in (extra or {}).items()})
    optimizer_state = optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for index, state in optimizer_state["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{OPTIMIZER_PREFIX}{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    optimizer_meta = {"param_groups": optimizer_state["param_groups"], "scalars": scalars}
    return save_tensors(path, tensors, {**metadata, "optimizer": optimizer_meta})


def load_training_state(
    path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore model and optimizer in place; return the metadata (epoch, history…) and the extra
    tensors."""
    tensors, metadata = load_tensors(path, what="training checkpoint")
    if "optimizer" not in metadata:
        raise CheckpointError(f"{path} holds no optimizer state; it is not a training checkpoint")
    model_state = {
        k[len(MODEL_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)
    }
    load_state_strict(model, model_state, path)
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        if name.startswith(OPTIMIZER_PREFIX):
            index, key = name[len(OPTIMIZER_PREFIX) :].split(".", 1)
            state.setdefault(int(index), {})[key] = tensor
    for name, value in metadata["optimizer"]["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    try:
        optimizer.load_state_dict(
            {"state": state, "param_groups": metadata["optimizer"]["param_groups"]}
        )
    except (ValueError, KeyError) as err:
        raise CheckpointError(
            f"optimizer state in {path} does not match this run ({err}); it was written with "
            "another --optimizer or model"
        ) from err
    extra = {k[len(EXTRA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    return metadata, extra
