"""Save and load zoo models as safetensors with their architecture in the metadata."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advprune.core.errors import CheckpointError
from advprune.core.tensor_files import load_tensors, save_tensors

ARCHITECTURE_KEYS = ("name", "num_classes", "in_channels", "image_size", "mean", "std")


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """`load_state_dict`, but a mismatch names the first differing tensors, not a wall of text."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [k for k in expected if k in state and expected[k].shape != state[k].shape]
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"missing {', '.join(missing[:3])}")
        if unexpected:
            details.append(f"unexpected {', '.join(unexpected[:3])}")
        if wrong_shape:
            key = wrong_shape[0]
            details.append(
                f"{key} is {tuple(state[key].shape)}, model has {tuple(expected[key].shape)}"
            )
        raise CheckpointError(
            f"checkpoint {source} does not fit this model ({'; '.join(details)}); it was written "
            "for another architecture or dataset — pass the matching --model/--dataset"
        )
    model.load_state_dict(state)


def save_model(path: str | os.PathLike, model: nn.Module, metadata: dict[str, Any]) -> Path:
    """Weights of `model` plus `metadata` (which must hold `architecture` to be reloadable)."""
    return save_tensors(path, model.state_dict(), metadata)


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict]:
    """Rebuild a zoo model from a file written by `save_model`, in eval mode."""
    from advprune.models import create_model

    tensors, metadata = load_tensors(path, what="model file")
    architecture = metadata.get("architecture")
    if not isinstance(architecture, dict) or set(ARCHITECTURE_KEYS) - set(architecture):
        raise CheckpointError(
            f"model file {path} has no advprune architecture metadata; load its weights into your "
            "own nn.Module with safetensors.torch.load_file"
        )
    args = {key: architecture[key] for key in ARCHITECTURE_KEYS}
    model = create_model(args.pop("name"), **args)
    load_state_strict(model, tensors, path)
    return model.to(device).eval(), metadata
