"""Save and load models as safetensors with their architecture in the metadata.

The architecture is `create_model`'s arguments (`models.architecture`): a zoo name or the import
path of a network outside the zoo ("package.module:ClassOrFactory", importable when loading),
and mean/std, None for a network without normalisation.

Two extensions of a zoo architecture can be recorded: `architecture["layer_shapes"]` (layer name →
weight shape) for an exported pruned network, whose layers are narrower than the zoo model's, and
`metadata["method"]["gates"]` for a network trained with ANP-VS gates, which are put back before
the weights load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advprune.core.errors import CheckpointError
from advprune.core.tensor_files import load_tensors, save_tensors
from advprune.models.layer_types import CONVS, NORMS

ARCHITECTURE_KEYS = ("name", "num_classes", "in_channels", "image_size", "mean", "std")


def architecture_arguments(architecture: dict[str, Any]) -> dict[str, Any]:
    """`create_model`'s keyword arguments from a saved architecture (its extensions left out)."""
    arguments = {key: architecture[key] for key in ARCHITECTURE_KEYS}
    if architecture.get("output_index") is not None:
        arguments["output_index"] = architecture["output_index"]
    return arguments


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


def _resized(module: nn.Module, shape: list[int]) -> nn.Module:
    """A fresh layer like `module` (same kernel, stride, padding, …) with weight shape `shape`."""
    if isinstance(module, nn.Linear):
        return nn.Linear(shape[1], shape[0], bias=module.bias is not None)
    if isinstance(module, CONVS) and module.groups == 1:
        return type(module)(
            shape[1],
            shape[0],
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
        )
    if isinstance(module, NORMS):
        return type(module)(
            shape[0],
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        )
    raise CheckpointError(f"cannot resize a {type(module).__name__}; only conv, linear and BN")


def resize_layers(model: nn.Module, shapes: dict[str, list[int]]) -> nn.Module:
    """Replace, in place, each named layer whose shape differs by a plain layer of that shape."""
    for name, shape in shapes.items():
        try:
            module = model.get_submodule(name)
        except AttributeError as err:
            raise CheckpointError(
                f"the saved layer shapes name {name}, which this architecture lacks"
            ) from err
        current = [module.num_features] if hasattr(module, "num_features") else None
        if current is None:
            current = list(module.weight.shape)
        if current != list(shape):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, _resized(module, shape))
    return model


def save_model(path: str | os.PathLike, model: nn.Module, metadata: dict[str, Any]) -> Path:
    """Weights of `model` plus `metadata` (which must hold `architecture` to be reloadable)."""
    return save_tensors(path, model.state_dict(), metadata)


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict]:
    """Rebuild a model (zoo name or import path) from a file written by `save_model`, in eval
    mode."""
    from advprune.models import create_model

    tensors, metadata = load_tensors(path, what="model file")
    architecture = metadata.get("architecture")
    if not isinstance(architecture, dict) or set(ARCHITECTURE_KEYS) - set(architecture):
        raise CheckpointError(
            f"model file {path} has no advprune architecture metadata; load its weights into your "
            "own nn.Module with safetensors.torch.load_file"
        )
    model = create_model(**architecture_arguments(architecture))
    if architecture.get("layer_shapes"):
        resize_layers(model, architecture["layer_shapes"])
    gates = metadata.get("method", {}).get("gates")
    if gates:
        # Imported here: gates are a masks/ concept, and models/ stays below masks/.
        from advprune.masks.gated import insert_gates_from_spec

        insert_gates_from_spec(model, gates)
    load_state_strict(model, tensors, path)
    return model.to(device).eval(), metadata
