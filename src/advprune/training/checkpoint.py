"""Training state for exact resume, as one safetensors file written atomically.

It holds the model, the optimizer, the method's tensors (masks, gates, scores), the position in
the data order (epoch and batch) and, per rank, every generator's state and the running sums of
the epoch's logged loss and accuracy. The learning rate is a pure function of that position
(`schedule.py`), so there is no scheduler state; bf16 autocast needs no loss scaler.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
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
RANK_PREFIX = "rank"


@dataclass
class RankState:
    """What differs between the processes of a run: generator states and the epoch's sums."""

    tensors: dict[str, torch.Tensor]
    values: dict[str, Any]


@dataclass
class TrainingState:
    """A checkpoint as read back: its metadata, the method's tensors and each rank's state."""

    metadata: dict[str, Any]
    extra: dict[str, torch.Tensor]
    ranks: list[RankState] = field(default_factory=list)


def save_training_state(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    metadata: dict,
    extra: dict[str, torch.Tensor] | None = None,
    ranks: list[RankState] | None = None,
) -> Path:
    """Model, optimizer, `extra` and per-rank tensors under prefixes; optimizer scalars and
    groups and per-rank values in the metadata."""
    tensors = {MODEL_PREFIX + name: t for name, t in model.state_dict().items()}
    tensors.update({EXTRA_PREFIX + name: t for name, t in (extra or {}).items()})
    for rank, state in enumerate(ranks or []):
        tensors.update({f"{RANK_PREFIX}{rank}.{name}": t for name, t in state.tensors.items()})
    optimizer_state = optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for index, state in optimizer_state["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{OPTIMIZER_PREFIX}{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    optimizer_meta = {"param_groups": optimizer_state["param_groups"], "scalars": scalars}
    rank_values = [state.values for state in ranks or []]
    return save_tensors(
        path, tensors, {**metadata, "optimizer": optimizer_meta, "ranks": rank_values}
    )


def load_training_state(
    path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer
) -> TrainingState:
    """Restore model and optimizer in place; return the rest of the checkpoint."""
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
    ranks = []
    for rank, values in enumerate(metadata.get("ranks", [])):
        prefix = f"{RANK_PREFIX}{rank}."
        rank_tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        ranks.append(RankState(rank_tensors, values))
    return TrainingState(metadata, extra, ranks)
