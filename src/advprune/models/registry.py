"""The model registry: each network registers itself where it is defined.

As in timm (`timm/models/_registry.py`), `@register_model("name", description=...)` on a factory
is the only place a network is named; `create_model`, `list_models`, the CLI's choices and
`advprune list models` all read the registry, so adding a network is one decorated function.

A factory takes `num_classes`, `in_channels` and `image_size` (keywords) and returns a plain
`nn.Module` that maps [0, 1] images to logits. `normalize=False` marks a network that is defined
without input normalisation (the adversarial-pruning benchmark's, which is fed raw [0, 1] images):
`create_model` then returns the bare network and applies no dataset mean/std.

Example:

    @register_model("tiny-mlp", description="one hidden layer of 64 units")
    def tiny_mlp(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, 64), ...)

    list_models("lenet5*")   # ['lenet5-caffe', 'lenet5-caffe-bn']
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

from torch import nn

from advprune.core.config import closest
from advprune.core.errors import ConfigError

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])
IMPORT_SEPARATOR = ":"  # "package.module:Factory" names a network outside the zoo


@dataclass(frozen=True)
class ModelEntry:
    """A registered network: its factory, its one-line description, whether it normalises."""

    name: str
    factory: Callable[..., nn.Module]
    description: str
    normalize: bool


_REGISTRY: dict[str, ModelEntry] = {}
MODELS: Mapping[str, ModelEntry] = MappingProxyType(_REGISTRY)  # read-only, in registration order


def register_model(
    name: str, *, description: str, normalize: bool = True
) -> Callable[[Factory], Factory]:
    """Decorator: register `factory` under `name` (no ':' — that form is an import path)."""

    def register(factory: Factory) -> Factory:
        if name in _REGISTRY or IMPORT_SEPARATOR in name:
            raise ValueError(f"model name {name!r} is taken or contains {IMPORT_SEPARATOR!r}")
        _REGISTRY[name] = ModelEntry(name, factory, description, normalize)
        return factory

    return register


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching the shell-style `pattern` ("resnet*", "*vgg*"), in
    registration order."""
    return [name for name in _REGISTRY if fnmatch.fnmatchcase(name, pattern)]


def is_import_path(name: str) -> bool:
    """Whether `name` names a network outside the zoo ("mypkg.nets:MyCNN")."""
    return IMPORT_SEPARATOR in name


def model_entry(name: str) -> ModelEntry:
    """The registered network `name`; an unknown name is a one-line `ConfigError`."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ConfigError(
            f"unknown model {name!r}{closest(name, _REGISTRY)} (known: {', '.join(_REGISTRY)}; "
            "or your own nn.Module as package.module:ClassOrFactory)"
        )
    return entry


def check_model_name(name: str) -> None:
    """Raise `model_entry`'s error unless `name` is registered or an import path (a config
    check that imports nothing)."""
    if not is_import_path(name):
        model_entry(name)


def normalizes(name: str) -> bool:
    """Whether `create_model(name, …)` puts the dataset's normalisation in front of the network
    (networks outside the zoo do, like the zoo's default)."""
    return True if is_import_path(name) else model_entry(name).normalize
