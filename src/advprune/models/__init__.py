"""The model zoo: plain `nn.Module`s built by name, with input normalisation inside.

`create_model("lenet5-caffe", num_classes=10, in_channels=1)` returns
`nn.Sequential(normalize=Normalize(mean, std), body=<network>)`, so attacks always work on [0, 1]
pixels. Any user `nn.Module` that takes [0, 1] images works with advprune just as well.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from advprune.core.errors import ConfigError
from advprune.data import DatasetSpec
from advprune.models.lenet import lenet5_caffe, lenet300_100
from advprune.models.normalization import Normalize, with_normalization
from advprune.models.resnet import resnet18
from advprune.models.vgg import vgg16
from advprune.models.wide_resnet import wrn28_10, wrn34_10

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet300-100": lenet300_100,
    "lenet5-caffe": lenet5_caffe,
    "vgg16": vgg16,
    "resnet18": resnet18,
    "wrn28-10": wrn28_10,
    "wrn34-10": wrn34_10,
}


def create_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    image_size: int = 32,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Sequential:
    """Build a registered network; without mean/std the normalisation is the identity."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    body = MODELS[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    mean = tuple(mean) if mean is not None else (0.0,) * in_channels
    std = tuple(std) if std is not None else (1.0,) * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise ConfigError(f"mean/std need {in_channels} values (one per input channel)")
    return with_normalization(body, mean, std)


def architecture(name: str, spec: DatasetSpec) -> dict[str, Any]:
    """`create_model`'s arguments for a dataset, as stored with every saved model:
    `create_model(**architecture("resnet18", get_spec("cifar10")))`."""
    return {
        "name": name,
        "num_classes": spec.num_classes,
        "in_channels": spec.in_channels,
        "image_size": spec.image_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
    }


def input_shape(architecture: dict[str, Any]) -> tuple[int, int, int]:
    """(channels, height, width) of one input of a saved zoo architecture."""
    size = architecture["image_size"]
    return (architecture["in_channels"], size, size)


__all__ = [
    "MODELS",
    "Normalize",
    "architecture",
    "create_model",
    "input_shape",
    "with_normalization",
]
