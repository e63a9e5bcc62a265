"""Input normalisation as the first layer, so every attack works in [0, 1] pixel space.

One rule for the CLI and the Python API (`--normalize`, `normalize=`): `dataset` puts the
dataset's per-channel mean/std in front of the network, `none` feeds it [0, 1] pixels as they
are, `MEAN,STD` the given values. Unset, a zoo network that normalises gets `dataset`; a network
of your own (`--model pkg:Class`, or an `nn.Module` passed to the API) and the benchmark's bare
networks (vgg16-bn, resnet18) get `none`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from advprune.core.config import parse_number
from advprune.core.errors import ConfigError

DATASET_STATISTICS, NO_NORMALIZATION = "dataset", "none"


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


def _numbers(normalize: str) -> list[float]:
    """The numbers of a "MEAN,STD" value, checked: an even count, every std positive."""
    try:
        numbers = [parse_number(part) for part in normalize.split(",")]
    except ConfigError:
        numbers = []
    half = len(numbers) // 2
    if not numbers or len(numbers) % 2 or any(std <= 0 for std in numbers[half:]):
        raise ConfigError(
            f"--normalize {normalize!r} is not dataset, none or MEAN,STD; pass e.g. --normalize "
            "0.5,0.25 (one mean and std for every channel) or C means then C positive stds"
        )
    return numbers


def check_normalize(normalize: str) -> None:
    """Refuse a `--normalize` value that no number of channels can use."""
    if normalize not in (DATASET_STATISTICS, NO_NORMALIZATION):
        _numbers(normalize)


def normalization_values(
    normalize: str, channels: int, dataset_mean: Sequence[float], dataset_std: Sequence[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) per channel that a `--normalize` value means for `channels` channels.

    Example: `normalization_values("0.5,0.25", 3, ...)` is ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).
    """
    if normalize == DATASET_STATISTICS:
        return tuple(dataset_mean), tuple(dataset_std)
    if normalize == NO_NORMALIZATION:
        return (0.0,) * channels, (1.0,) * channels
    numbers = _numbers(normalize)
    if len(numbers) == 2:
        return (numbers[0],) * channels, (numbers[1],) * channels
    if len(numbers) != 2 * channels:
        raise ConfigError(
            f"--normalize {normalize!r} gives {len(numbers) // 2} means for {channels}-channel "
            f"images; pass one MEAN,STD or {channels} means then {channels} stds"
        )
    return tuple(numbers[:channels]), tuple(numbers[channels:])
