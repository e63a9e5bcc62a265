"""Latent features of any network: what each conv or linear layer hands to the next one.

ANP-VS measures vulnerability on these features (Madaan et al., 2020, sec. 3: the vulnerability of
a feature z is E|z(x) − z(x̃)|) and its gates must know which batch norm directly follows a conv.
Both are read off one forward pass: hooks on the leaf layers follow each conv/linear output by
tensor identity through a batch norm applied directly to it and then through an activation applied
directly to that, so the "chain" of a layer is conv → [BN] → [activation] as the network really
computes it, for any `nn.Module` built of standard layers, `nn.Sequential` or not.

A chain's feature is its last tensor: the post-activation output where an activation follows
(LeNet-5-Caffe: conv1-ReLU, conv2-ReLU, dense3-ReLU, as in the paper), else the batch-norm or
layer output (e.g. a residual branch before its addition). The chain of the layer that produces
the network's output (the logits) has no feature.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advprune.models.layer_types import NORMS, PRUNABLE

ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Softplus,
    nn.Tanh,
    nn.Sigmoid,
)


@dataclass(frozen=True)
class LayerChain:
    """A conv/linear layer and the batch norm and activation applied directly to its output."""

    layer: str
    norm: str | None
    activation: str | None
    is_output: bool


@dataclass
class _OpenChain:
    tensor: Tensor  # the chain's latest output; held so that its id() stays unique
    norm: str | None = None
    activation: str | None = None


class _Dataflow:
    """Observes one forward pass and links layer → norm → activation by tensor identity."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.names = {module: name for name, module in model.named_modules()}
        self.chains: dict[str, _OpenChain] = {}
        self.by_tensor: dict[int, str] = {}
        self.order: list[str] = []
        self.output: object = None

    def observe(self, module: nn.Module, args: tuple, output: object) -> None:
        if not isinstance(output, Tensor):
            return
        name = self.names[module]
        if isinstance(module, PRUNABLE):
            self.chains[name] = _OpenChain(output)
            self.by_tensor[id(output)] = name
            self.order.append(name)
            return
        source = args[0] if args and isinstance(args[0], Tensor) else None
        chain_name = self.by_tensor.get(id(source)) if source is not None else None
        if chain_name is None or self.chains[chain_name].tensor is not source:
            return
        chain = self.chains[chain_name]
        if chain.activation is not None:
            return
        if isinstance(module, NORMS) and chain.norm is None:
            chain.norm = name
        elif isinstance(module, ACTIVATIONS):
            chain.activation = name
        else:
            return
        del self.by_tensor[id(source)]
        chain.tensor = output
        self.by_tensor[id(output)] = chain_name

    def finish(self, module: nn.Module, args: tuple, output: object) -> None:
        self.output = output

    def output_layer(self) -> str | None:
        """The chain whose tensor the network returns; else the last layer that ran."""
        for name, chain in self.chains.items():
            if chain.tensor is self.output:
                return name
        return self.order[-1] if self.order else None

    @contextmanager
    def attached(self) -> Iterator[_Dataflow]:
        observed = (*PRUNABLE, *NORMS, *ACTIVATIONS)
        handles = [
            module.register_forward_hook(self.observe)
            for module in self.model.modules()
            if isinstance(module, observed)
        ]
        handles.append(self.model.register_forward_hook(self.finish))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()


def trace_layer_chains(model: nn.Module, example: Tensor) -> dict[str, LayerChain]:
    """Each conv/linear layer's chain, in execution order, from one eval-mode pass on `example`."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _Dataflow(model).attached() as flow:
            model(example)
    finally:
        model.train(was_training)
    output = flow.output_layer()
    return {
        name: LayerChain(name, flow.chains[name].norm, flow.chains[name].activation, name == output)
        for name in dict.fromkeys(flow.order)
    }


@contextmanager
def capture_features(model: nn.Module) -> Iterator[dict[str, Tensor]]:
    """`with capture_features(model) as features: model(x)` fills `features` (layer → tensor).

    The tensors keep their autograd history, so a loss on them (the VS loss) trains the network.
    """
    features: dict[str, Tensor] = {}
    with _Dataflow(model).attached() as flow:
        yield features
    output = flow.output_layer()
    features.update({name: chain.tensor for name, chain in flow.chains.items() if name != output})
