"""`WeightMasks`: the binary masks every unstructured method ends in, and how they act on a model.

A mask is a bool tensor shaped like its parameter, True where the entry is kept. The model itself
is never wrapped or reparametrised: pruned entries are plain zeros in plain tensors, kept at zero
by zeroing their gradients before each optimiser step (`mask_gradients`) and the weights after it
(`apply`), since momentum and weight decay could otherwise move them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advprune.core.errors import CheckpointError
from advprune.core.tensor_files import load_tensors, save_tensors
from advprune.masks.layers import layer_of

FILE_KIND = "weight-masks"


class WeightMasks(Mapping[str, Tensor]):
    """Keep-masks by parameter name ("body.0.weight" → bool tensor, True = kept)."""

    def __init__(self, masks: Mapping[str, Tensor]) -> None:
        self._masks = {name: mask.detach().bool() for name, mask in masks.items()}

    def __getitem__(self, name: str) -> Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def _bind(self, model: nn.Module) -> Iterator[tuple[nn.Parameter, Tensor]]:
        """Each masked parameter of `model` with its mask, moved to the parameter's device once."""
        parameters = dict(model.named_parameters())
        for name, mask in self._masks.items():
            parameter = parameters.get(name)
            if parameter is None or parameter.shape != mask.shape:
                found = "missing" if parameter is None else f"shaped {tuple(parameter.shape)}"
                raise CheckpointError(
                    f"mask {name} {tuple(mask.shape)} does not fit the model ({found} there); the "
                    "masks were made for another architecture — prune this model again"
                )
            if mask.device != parameter.device:
                mask = self._masks[name] = mask.to(parameter.device)
            yield parameter, mask

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Set every pruned entry of `model` to exactly zero, in place."""
        for parameter, mask in self._bind(model):
            parameter.masked_fill_(~mask, 0)

    @torch.no_grad()
    def mask_gradients(self, model: nn.Module) -> None:
        """Zero the gradients of pruned entries (call between `backward` and `step`)."""
        for parameter, mask in self._bind(model):
            if parameter.grad is not None:
                parameter.grad.masked_fill_(~mask, 0)

    @torch.no_grad()
    def mask_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Zero the optimizer's buffers (momentum, Adam's moments) of pruned entries, for training
        whose gradients stay dense: a pruned weight then carries nothing into its regrowth, as
        when its gradients are masked (the official sparselearning `apply_mask` does this)."""
        for parameter, mask in self._bind(model):
            for value in optimizer.state.get(parameter, {}).values():
                if isinstance(value, Tensor) and value.shape == mask.shape:
                    value.masked_fill_(~mask, 0)

    def fold(self, model: nn.Module) -> nn.Module:
        """The final pruned model: masks applied; nothing to remove, the tensors are plain."""
        self.apply(model)
        return model

    def sparsity(self) -> float:
        """Fraction of pruned entries over all masked tensors together."""
        total = sum(mask.numel() for mask in self._masks.values())
        kept = sum(int(mask.sum()) for mask in self._masks.values())
        return 1 - kept / total if total else 0.0

    def per_layer(self) -> dict[str, float]:
        """Fraction pruned in each layer ("body.0"), its weight and bias counted together."""
        totals: dict[str, list[int]] = {}
        for name, mask in self._masks.items():
            counts = totals.setdefault(layer_of(name), [0, 0])
            counts[0] += mask.numel() - int(mask.sum())
            counts[1] += mask.numel()
        return {layer: pruned / total for layer, (pruned, total) in totals.items()}

    def emptied_layers(self) -> dict[str, int]:
        """Layers whose every masked weight is pruned, with their number of weights (biases do
        not count: a bias alone is a constant, and nothing of the input passes the layer)."""
        weights: dict[str, list[Tensor]] = {}
        for name, mask in self._masks.items():
            if name.rpartition(".")[2] != "bias":
                weights.setdefault(layer_of(name), []).append(mask)
        return {
            layer: sum(mask.numel() for mask in masks)
            for layer, masks in weights.items()
            if not any(bool(mask.any()) for mask in masks)
        }

    def state_dict(self) -> dict[str, Tensor]:
        """The masks as bool tensors, for a checkpoint that stores them under its own prefix."""
        return dict(self._masks)

    @classmethod
    def from_state_dict(cls, tensors: Mapping[str, Tensor]) -> WeightMasks:
        """Inverse of `state_dict`; non-bool tensors count nonzero entries as kept."""
        return cls({name: tensor != 0 for name, tensor in tensors.items()})

    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
        """One safetensors file; the name order (which schemes rely on) goes in the metadata."""
        header = {**(metadata or {}), "kind": FILE_KIND, "order": list(self._masks)}
        return save_tensors(path, self._masks, header)

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple[WeightMasks, dict[str, Any]]:
        """Masks and metadata from a file written by `save`, in their original order."""
        tensors, metadata = load_tensors(path, what="mask file")
        if metadata.get("kind") != FILE_KIND:
            raise CheckpointError(
                f"{path} is not a mask file (kind {metadata.get('kind')!r}); pass the masks file "
                "that pruning wrote"
            )
        return cls.from_state_dict({name: tensors[name] for name in metadata["order"]}), metadata
