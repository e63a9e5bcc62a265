"""`create_model`: a network by registered name or by import path, with its input normalisation.

As timm's `_factory.py`, one entry point builds every network. A name containing ':' is a network
outside the zoo, "package.module:ClassOrFactory": the module is imported and the class or factory
is called with those of `num_classes`, `in_channels` and `image_size` that its signature accepts
(none if it takes none). Saved models record the name either way, so `load_model` rebuilds both.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from advprune.core.errors import ConfigError
from advprune.data import DatasetSpec
from advprune.models.few_channel_conv import speed_up_input_gradients
from advprune.models.normalization import with_normalization
from advprune.models.registry import is_import_path, model_entry, normalizes


def _import_factory(path: str) -> Callable[..., Any]:
    """The class or function that "package.module:Attribute" names, checked to build modules."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"model {path!r} is not of the form package.module:ClassOrFactory")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is not None and (module_name + ".").startswith(err.name + "."):
            raise ConfigError(
                f"cannot import module {module_name!r} for model {path!r}; it must be "
                "importable: on PYTHONPATH or installed"
            ) from None
        raise ConfigError(  # the module is there, but one of its own imports is not
            f"importing {module_name!r} for model {path!r} failed: {err}; install what it needs"
        ) from err
    factory: Any = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise ConfigError(
                f"module {module_name!r} has no attribute {attribute!r} (model {path!r}); name "
                "the nn.Module class or the function that builds it"
            )
        factory = getattr(factory, part)
    problem = _why_not_a_factory(factory)
    if problem:
        raise ConfigError(
            f"{path} is {problem}, not an nn.Module class or a function returning one; name the "
            "class or factory instead"
        )
    return factory


def _why_not_a_factory(factory: object) -> str | None:
    """What `factory` is, if it cannot build a network; None if it may."""
    if isinstance(factory, nn.Module):
        return "an nn.Module instance"
    if isinstance(factory, type) and not issubclass(factory, nn.Module):
        return f"the class {factory.__name__}"
    return None if callable(factory) else f"a {type(factory).__name__}"


def _accepted_arguments(factory: Callable[..., Any], offered: dict[str, int]) -> dict[str, int]:
    """The entries of `offered` that `factory`'s signature takes (all of them for **kwargs)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): call it bare
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return offered
    keywords = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = {p.name for p in parameters if p.kind in keywords}
    return {key: value for key, value in offered.items() if key in named}


def _build_imported(path: str, **offered: int) -> nn.Module:
    factory = _import_factory(path)
    network = factory(**_accepted_arguments(factory, offered))
    if not isinstance(network, nn.Module):
        raise ConfigError(
            f"{path} returned a value of type {type(network).__name__}, not an nn.Module; the "
            "factory must return the network"
        )
    return network


def _normalization(
    name: str, in_channels: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) to put in front of network `name`, or None for a bare network."""
    mean = tuple(mean) if mean is not None else (0.0,) * in_channels
    std = tuple(std) if std is not None else (1.0,) * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise ConfigError(f"mean/std need {in_channels} values (one per input channel)")
    if normalizes(name):
        return mean, std
    if any(value != 0 for value in mean) or any(value != 1 for value in std):
        raise ConfigError(
            f"model {name} has no input normalisation (it takes raw [0, 1] images, as the "
            "adversarial-pruning benchmark feeds them); leave mean/std unset"
        )
    return None


def create_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    image_size: int = 32,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """Build network `name`: a registered name or "package.module:ClassOrFactory".

    A network that normalises (the zoo's default, and every import path) comes back as
    `nn.Sequential(normalize=Normalize(mean, std), body=<network>)`, so attacks work on [0, 1]
    pixels; without mean/std that normalisation is the identity. A network registered with
    `normalize=False` (vgg16-bn, resnet18: the adversarial-pruning benchmark feeds its networks
    raw [0, 1] images) comes back bare, with the benchmark's state-dict keys, and mean/std must
    be unset (or the identity): the dataset's statistics are not applied to it.

    Example: `create_model("resnet18")` is a `ResNet` with keys "conv1.weight", …;
    `create_model("lenet5-caffe", 10, 1, image_size=28, mean=[0.29], std=[0.35])` has
    "normalize.mean", "body.0.weight", ….
    Its first convolutions backpropagate to the image faster on the CPU (`few_channel_conv`).
    """
    normalization = _normalization(name, in_channels, mean, std)
    sizes = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    if is_import_path(name):
        network = _build_imported(name, **sizes)
    else:
        network = model_entry(name).factory(**sizes)
    speed_up_input_gradients(network)
    return network if normalization is None else with_normalization(network, *normalization)


def architecture(name: str, spec: DatasetSpec) -> dict[str, Any]:
    """`create_model`'s arguments for a dataset, as stored with every saved model:
    `create_model(**architecture("resnet18", get_spec("cifar10")))`. A network without
    normalisation records mean/std as None: the dataset's statistics are not part of it."""
    normalize = normalizes(name)
    return {
        "name": name,
        "num_classes": spec.num_classes,
        "in_channels": spec.in_channels,
        "image_size": spec.image_size,
        "mean": list(spec.mean) if normalize else None,
        "std": list(spec.std) if normalize else None,
    }


def input_shape(architecture: dict[str, Any]) -> tuple[int, int, int]:
    """(channels, height, width) of one input of a saved architecture."""
    size = architecture["image_size"]
    return (architecture["in_channels"], size, size)
