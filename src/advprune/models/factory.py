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
from advprune.models.normalization import (
    DATASET_STATISTICS,
    NO_NORMALIZATION,
    normalization_values,
    with_normalization,
)
from advprune.models.output_index import OutputIndex
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
    except Exception as err:  # the user's module raised while it was imported
        raise ConfigError(
            f"importing {module_name!r} for model {path!r} raised {type(err).__name__}: "
            f"{_first_line(err)}; fix the module (`python -c 'import {module_name}'` shows where)"
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


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0]


def _required_arguments(factory: Callable[..., Any], offered: dict[str, int]) -> list[str]:
    """The parameters of `factory` without a default that advprune does not offer."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return []
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [
        p.name
        for p in parameters
        if p.default is inspect.Parameter.empty and p.kind not in variadic and p.name not in offered
    ]


def _build_imported(path: str, **offered: int) -> nn.Module:
    factory = _import_factory(path)
    missing = _required_arguments(factory, offered)
    given = ", ".join(offered)
    if missing and not isinstance(factory, type):
        raise ConfigError(
            f"{path} is not an nn.Module class but a function that needs {', '.join(missing)}, "
            f"which advprune cannot give (it passes only {given}); name your network's class or "
            "a factory that builds it from those"
        )
    if missing:
        raise ConfigError(
            f"{path} needs the constructor argument(s) {', '.join(missing)}, which advprune "
            f"cannot give (it passes only {given}); give them defaults or name a factory "
            "function that builds the network"
        )
    try:
        network = factory(**_accepted_arguments(factory, offered))
    except Exception as err:  # the user's constructor failed: say so in one line
        raise ConfigError(
            f"building {path} raised {type(err).__name__}: {_first_line(err)}; fix its "
            f"constructor (it is called with {given} where it accepts them)"
        ) from err
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
    output_index: int | None = None,
) -> nn.Module:
    """Build network `name`: a registered name or "package.module:ClassOrFactory".

    A network that normalises (the zoo's default, and every import path) comes back as
    `nn.Sequential(normalize=Normalize(mean, std), body=<network>)`, so attacks work on [0, 1]
    pixels; without mean/std that normalisation is the identity. A network registered with
    `normalize=False` (vgg16-bn, resnet18: the adversarial-pruning benchmark feeds its networks
    raw [0, 1] images) comes back bare, with the benchmark's state-dict keys, and mean/std must
    be unset (or the identity): the dataset's statistics are not applied to it. `output_index`
    appends `OutputIndex` for a network whose forward returns a tuple.

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
    if normalization is None:
        return network
    return with_layers_around(network, *normalization, output_index=output_index)


def with_layers_around(
    network: nn.Module,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    output_index: int | None = None,
) -> nn.Sequential:
    """`network` behind its `Normalize`, and before `OutputIndex` when its forward returns a
    tuple: the layout every run of a normalising network has, built from the CLI or the API."""
    model = with_normalization(network, mean, std)
    if output_index is not None:
        model.add_module("output", OutputIndex(output_index))
    return model


def default_normalize(name: str) -> str:
    """`--normalize` unset: the dataset's statistics for a zoo network that normalises; none
    for a network of one's own and for the benchmark's bare networks."""
    return NO_NORMALIZATION if is_import_path(name) or not normalizes(name) else DATASET_STATISTICS


def check_normalize_for(name: str, normalize: str) -> None:
    """The benchmark's bare networks have no normalisation layer to put values in."""
    if normalize != NO_NORMALIZATION and not normalizes(name):
        raise ConfigError(
            f"model {name} takes raw [0, 1] images, as the adversarial-pruning benchmark feeds "
            f"them, and has no normalisation layer; leave --normalize unset or pass none"
        )


def architecture(
    name: str, spec: DatasetSpec, normalize: str | None = None, output_index: int | None = None
) -> dict[str, Any]:
    """`create_model`'s arguments for a dataset, as stored with every saved model:
    `create_model(**architecture("resnet18", get_spec("cifar10")))`. `normalize` is the
    `--normalize` value (default: `default_normalize(name)`); a network without normalisation
    records mean/std as None. `output_index` is recorded only when set."""
    normalize = normalize or default_normalize(name)
    check_normalize_for(name, normalize)
    mean: list[float] | None = None
    std: list[float] | None = None
    if normalizes(name):
        values = normalization_values(normalize, spec.in_channels, spec.mean, spec.std)
        mean, std = list(values[0]), list(values[1])
    recorded = {
        "name": name,
        "num_classes": spec.num_classes,
        "in_channels": spec.in_channels,
        "image_size": spec.image_size,
        "mean": mean,
        "std": std,
    }
    return recorded if output_index is None else {**recorded, "output_index": output_index}


def input_shape(architecture: dict[str, Any]) -> tuple[int, int, int]:
    """(channels, height, width) of one input of a saved architecture."""
    size = architecture["image_size"]
    return (architecture["in_channels"], size, size)
