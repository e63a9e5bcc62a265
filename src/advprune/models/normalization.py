"""Input normalisation as the first layer, so every attack works in [0, 1] pixel space."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std per channel; buffers, so they move with the model and are checkpointed."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def is_identity(self) -> bool:
        """mean 0 and std 1 everywhere: the layer changes nothing and can be dropped."""
        return bool((self.mean == 0).all() and (self.std == 1).all())


def with_normalization(
    body: nn.Module, mean: Sequence[float], std: Sequence[float]
) -> nn.Sequential:
    """Prepend `Normalize` to a network; the result is a plain `nn.Sequential(normalize, body)`."""
    return nn.Sequential(OrderedDict(normalize=Normalize(mean, std), body=body))
