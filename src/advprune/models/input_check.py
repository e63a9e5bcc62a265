"""One check of the user's network and data on one batch, before any work.

Every command that builds a model (train, prune, eval, the steps of reproduce) and every
function of the Python API runs `check_network_and_data` before it writes a file: a network that
returns a tuple, takes other channels, has too few outputs, lives on the meta device or in
float64, and data with NaN, negative labels or channels-last images are each one `AdvpruneError`
naming the fix, not a traceback from deep inside an attack an hour later.
"""

from __future__ import annotations

import torch
from torch import nn

from advprune.core.errors import ConfigError, DataError
from advprune.data import ImageDataset
from advprune.models.layer_types import CONVS

CHECKED_EXAMPLES = 2  # two rows, so a network that squeezes the batch dimension shows it
IMAGE_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: a last dimension of this size looks like channels


def check_images(images: torch.Tensor, split: str = "") -> None:
    """Refuse (N, H, W, C) images and NaN pixels: both pass a shape check and fail much later."""
    last, second = images.shape[-1], images.shape[1] if images.dim() == 4 else None
    if second is not None and last in IMAGE_CHANNELS and second not in IMAGE_CHANNELS:
        raise DataError(
            f"input images{_of(split)} look channels-last (N, H, W, C) = "
            f"{tuple(images.shape)}; permute to (N, C, H, W): images.permute(0, 3, 1, 2)"
        )
    if images.is_floating_point():
        rows = torch.isnan(images.flatten(1)).any(1).nonzero()
        if len(rows):
            raise DataError(
                f"input images contain NaN (first at index {int(rows[0])}{_of(split)}); drop "
                "or repair those images before training or evaluating"
            )


def _of(split: str) -> str:
    return f" of the {split} set" if split else ""


def check_labels(labels: torch.Tensor, num_classes: int, split: str = "") -> None:
    """Labels are class indices 0 … num_classes - 1."""
    outside = ((labels < 0) | (labels >= num_classes)).nonzero()
    if len(outside):
        index = int(outside[0])
        raise DataError(
            f"labels must be class indices 0 to {num_classes - 1}; found {int(labels[index])} "
            f"(first at index {index}{_of(split)}); map the labels to 0 … {num_classes - 1}"
        )


def network_name(model: nn.Module) -> str:
    """The user's class, not advprune's wrapper around it."""
    body = model.body if isinstance(model, nn.Sequential) and hasattr(model, "body") else model
    return type(body).__name__


def _output_option(api: bool, index: int) -> str:
    return f"output_index={index}" if api else f"--output-index {index}"


def check_parameters(model: nn.Module) -> None:
    """Weights that hold values, in float32 (half precision is `--precision`'s business)."""
    name = network_name(model)
    tensors = [*model.parameters(), *model.buffers()]
    if any(tensor.is_meta for tensor in tensors):
        raise ConfigError(
            f"{name}'s weights are on the meta device (shapes without values); build it on the "
            "CPU, or call model.to_empty(device='cpu') and load its weights"
        )
    other = {t.dtype for t in tensors if t.is_floating_point() and t.dtype != torch.float32}
    if other:
        raise ConfigError(
            f"{name} is {', '.join(sorted(map(str, other)))}; call model.float() — advprune trains "
            "and attacks in float32 (--precision for mixed precision)"
        )


def _forward(model: nn.Module, x: torch.Tensor) -> object:
    """The model's output on `x`; a failure is one line naming what is wrong where we can tell."""
    name = network_name(model)
    called: list[nn.Module] = []
    hooks = [
        module.register_forward_pre_hook(lambda m, _: called.append(m))
        for module in model.modules()
        if isinstance(module, CONVS)
    ]
    try:
        with torch.no_grad():
            return model(x)
    except ConfigError:
        raise
    except Exception as err:
        first = called[0] if called else None
        channels = x.shape[1]
        if first is not None and first is called[-1] and first.in_channels != channels:
            raise ConfigError(
                f"{name}'s first convolution takes {first.in_channels} channels but the images "
                f"have {channels}; build it with in_channels={channels} (advprune passes "
                "in_channels to a constructor that accepts it)"
            ) from err
        message = (str(err).strip().splitlines() or [""])[0]
        raise ConfigError(
            f"{name} fails on a batch of shape {tuple(x.shape)} ({type(err).__name__}: "
            f"{message}); it must map (N, C, H, W) images in [0, 1] to (N, classes) logits"
        ) from err
    finally:
        for hook in hooks:
            hook.remove()


def check_network(model: nn.Module, x: torch.Tensor, num_classes: int, *, api: bool) -> None:
    """`model` maps the batch `x` to (N, ≥ num_classes) logits (run in eval mode, so no
    BatchNorm statistics move; its own mode is restored)."""
    check_parameters(model)
    name = network_name(model)
    was_training = model.training
    model.eval()
    try:
        output = _forward(model, x)
    finally:
        model.train(was_training)
    if isinstance(output, tuple | list):
        raise ConfigError(
            f"{name}.forward returns a {type(output).__name__}; return the logits (or pass "
            f"{_output_option(api, 0)} if they come first)"
        )
    if not isinstance(output, torch.Tensor):
        raise ConfigError(
            f"{name}.forward returns a {type(output).__name__}, not a tensor of logits; return "
            f"the (N, {num_classes}) logits"
        )
    if output.dim() != 2 or output.shape[0] != len(x):
        raise ConfigError(
            f"{name} returns shape {tuple(output.shape)} for {len(x)} images; it must return "
            f"(N, {num_classes}) logits (flatten before the classifier)"
        )
    if output.shape[1] < num_classes:
        raise ConfigError(
            f"{name} gives {output.shape[1]} outputs for {num_classes} classes; build its last "
            f"layer with {num_classes} outputs (advprune passes num_classes to a constructor "
            "that accepts it)"
        )


def check_network_and_data(
    model: nn.Module,
    data: ImageDataset,
    num_classes: int,
    device: torch.device | str = "cpu",
    *,
    split: str = "",
    api: bool = False,
) -> None:
    """The data (NaN, labels, layout), then the network on its first examples. Raises a one-line
    `AdvpruneError` naming the fix; `api` spells options as the Python API does.

    Example:
        check_network_and_data(model, test_set, 10)   # before an evaluation writes anything
    """
    check_images(data.images, split)
    check_labels(data.labels, num_classes, split)
    x = data.images[:CHECKED_EXAMPLES].to(device)
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    parameter = next(model.parameters(), None)
    if parameter is not None and parameter.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    check_network(model, x, num_classes, api=api)
