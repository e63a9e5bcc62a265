"""The memory layout a model computes in, so that its inputs can be given the same one."""

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
