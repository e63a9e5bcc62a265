"""The memory layout a model computes in, so that its inputs can be given the same one."""

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def input_memory_format(model: nn.Module) -> torch.memory_format:
    """`torch.channels_last` when the model's 4-D weights are stored channels_last, else
    `torch.contiguous_format`.

    A batch in the other layout than the weights makes every convolution convert it, and NCHW
    max-pooling on the CPU is several times slower than channels_last (docs/benchmarks.md).

    Example: `x = x.contiguous(memory_format=input_memory_format(model))`.
    """
    for parameter in model.parameters():
        if parameter.dim() == 4 and not parameter.is_contiguous():
            channels_last = parameter.is_contiguous(memory_format=torch.channels_last)
            return torch.channels_last if channels_last else torch.contiguous_format
    return torch.contiguous_format


def in_trained_layout(model: nn.Module, metadata: Mapping[str, Any]) -> nn.Module:
    """`model`, loaded from a run's file with `metadata`, in the layout it trained in: attacks on a
    model trained with `--channels-last` run 1.5× faster in it on a CPU (docs/benchmarks.md).

    Example: `model = in_trained_layout(*load_model(path))`.
    """
    if metadata.get("config", {}).get("channels_last"):
        return model.to(memory_format=torch.channels_last)
    return model
