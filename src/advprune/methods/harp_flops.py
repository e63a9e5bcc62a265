"""HARP's channel compression rate: the kept share of FLOPs as the official `utils/hw.py` counts it.

`count_flops_conv` counts (2·K·C_in − 1) operations per output, plus a bias and an activation
term, over (h − k + 2p)/s + 1 output positions per side for the layer's input size h: so a layer
costs C_out·P·(2·K·C_in + 1) (`count_flops_dense`: C_out·(2·C_in + 1)). The official input sizes
are a table per architecture (`fmap_dict`, `hw.py:186-189`) in the modules' registration order;
here they are traced once, which gives that table on the benchmark's 32×32 networks.

Each layer's kept fraction of input channels is its rate k. `hw_flops_loss` (`hw.py:224-254`)
scales a layer's output channels by the rate of the layer *registered next*: right for a chain
(VGG), but in a ResNet block it scales conv2's output by the shortcut's rate, i.e. by the block's
input stream instead of the stream conv2 writes. That bug is in the numbers the paper reports,
so `--method harp` keeps it ("registration"); `--channel-flops data-flow` scales each output by
the rate of the group the layer writes, and the run records the choice.

The target (`hw.py:198-216`) is every layer at round(C·k) input and output channels, the RGB
input and the classes included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advprune.masks.channels import CONSUMER, PRODUCER, ChannelGroup
from advprune.models.layer_types import CONVS, PRUNABLE

PAIRINGS = ("registration", "data-flow")


@dataclass(frozen=True)
class FlopsLayer:
    """One conv/linear layer as `count_flops_conv` and `count_flops_dense` see it."""

    name: str
    inputs: int  # C_in (per group of a grouped conv)
    outputs: int  # C_out
    kernel: int  # kernel area, 1 for a linear layer
    positions: float  # output positions per channel, 1 for a linear layer

    def flops(self, inputs: Tensor | float, outputs: Tensor | float) -> Tensor | float:
        return outputs * self.positions * (2 * self.kernel * inputs + 1)


def _positions(module: nn.Module, height: int, width: int) -> float:
    """The official (size − k + 2p)/s + 1 per side, not floored (`hw.py:30-31`)."""
    (kh, kw), (sh, sw), (ph, pw) = module.kernel_size, module.stride, module.padding
    return ((height - kh + 2 * ph) / sh + 1) * ((width - kw + 2 * pw) / sw + 1)


def flops_layers(model: nn.Module, example: Tensor) -> list[FlopsLayer]:
    """Every conv/linear layer of `model` in registration order, sized on one input of
    `example`'s shape (the official feature-map table)."""
    sizes: dict[str, tuple[int, int]] = {}
    handles = []
    modules = [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE)]
    for name, module in modules:

        def record(module: nn.Module, args: tuple, name: str = name) -> None:
            sizes[name] = tuple(args[0].shape[-2:])

        handles.append(module.register_forward_pre_hook(record))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    layers = []
    for name, module in modules:
        weight = module.weight
        if isinstance(module, CONVS):
            kernel, positions = weight[0, 0].numel(), _positions(module, *sizes[name])
        else:
            kernel, positions = 1, 1.0
        layers.append(FlopsLayer(name, weight.shape[1], weight.shape[0], kernel, positions))
    return layers


class ChannelFlops:
    """The kept share of FLOPs under per-group rates, differentiable in them (`hw_flops_loss`)."""

    def __init__(self, layers: list[FlopsLayer], groups: list[ChannelGroup], pairing: str):
        """`pairing`: which rate scales a layer's output channels, the rate of the layer
        registered next ("registration", the official code) or of the group it writes."""
        reads = {layer: g.name for g in groups for layer in g.layers(CONSUMER)}
        writes = {layer: g.name for g in groups for layer in g.layers(PRODUCER)}
        self.layers = layers
        self.reads = [reads.get(layer.name) for layer in layers]
        if pairing == "registration":
            self.writes = [*self.reads[1:], None]  # the last layer's outputs are the classes
        else:
            self.writes = [writes.get(layer.name) for layer in layers]
        self.pairing = pairing
        self.total = sum(layer.flops(layer.inputs, layer.outputs) for layer in layers)

    def __call__(self, rates: Callable[[str], Tensor | float]) -> Tensor:
        """The kept share under `rates` (group name → kept fraction)."""
        kept = sum(
            layer.flops(layer.inputs * _rate(rates, read), layer.outputs * _rate(rates, write))
            for layer, read, write in zip(self.layers, self.reads, self.writes, strict=True)
        )
        return torch.as_tensor(kept / self.total)

    def target_rate(self, target: float) -> float:
        """Every layer at round(C·k) input and output channels (`hw.py:204,209`)."""
        kept = sum(
            layer.flops(round(layer.inputs * target), round(layer.outputs * target))
            for layer in self.layers
        )
        return kept / self.total


def _rate(rates: Callable[[str], Tensor | float], group: str | None) -> Tensor | float:
    return 1.0 if group is None else rates(group)
