"""Kronecker factors of each layer's curvature, from one forward/backward pass (K-FAC).

K-FAC (Martens & Grosse, 2015) approximates a layer's block of the Fisher/Hessian by G ⊗ A, with
A = E[a aᵀ] the covariance of the layer input a and G = E[g gᵀ] that of the gradient g of the loss
w.r.t. the layer output. For a conv, a is each unfolded k×k input patch and g the output gradient
at that position (KFC, Grosse & Martens, 2016). When the layer has a bias, a gets a constant 1 as
its last entry, so the bias is the last column of the weight matrix W (out × in).

Normalisation (the official MAD code's, up to how it splits a constant between the factors):
with N examples, L output positions per example (1 for a linear layer) and ĝ the per-example
gradient (of the summed loss),
    A = 1/(N·L) Σ_{n,l} a aᵀ        G = 1/N Σ_{n,l} ĝ ĝᵀ = L · E_{n,l}[ĝ ĝᵀ],
so that G ⊗ A is KFC's estimate of the per-example Fisher E[vec ∇W vec ∇Wᵀ] (spatially
uncorrelated derivatives). A layer called several times in one pass (shared weights) pools its
calls like extra positions.

A grouped conv has one input covariance per group: A is stored as (groups, in, in) — groups = 1 for
linear layers and ordinary convs — and output rows of group k see only A[k].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advprune.core.errors import ConfigError

SUPPORTED = (nn.Linear, nn.Conv2d)


@dataclass
class KroneckerFactors:
    """A: (groups, in, in) input covariance (bias entry last); G: (out, out) output-gradient one."""

    input_covariance: Tensor
    gradient_covariance: Tensor


def check_supported(layers: dict[str, nn.Module]) -> None:
    for name, layer in layers.items():
        if not isinstance(layer, SUPPORTED):
            raise ConfigError(
                f"K-FAC factors are implemented for Linear and Conv2d layers, but {name!r} is a "
                f"{type(layer).__name__}; leave it out of the scored layers"
            )


def at_least_float32(tensor: Tensor) -> Tensor:
    """Covariances of half-precision activations lose too much: accumulate in float32 or better."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def input_rows(layer: nn.Module, inputs: Tensor) -> Tensor:
    """The layer's input as (rows, groups, in) vectors a, one row per example and position.

    Conv patches come from `F.unfold` on the input padded as the layer pads it (any padding mode,
    "same" included), with the layer's stride and dilation; their (channel, kh, kw) order matches
    `weight.flatten(1)`.
    """
    if isinstance(layer, nn.Linear):
        rows = inputs.reshape(-1, 1, layer.in_features)
    else:
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        padded = F.pad(inputs, layer._reversed_padding_repeated_twice, mode=mode)
        patches = F.unfold(padded, layer.kernel_size, dilation=layer.dilation, stride=layer.stride)
        rows = patches.transpose(1, 2).reshape(-1, layer.groups, patches.shape[1] // layer.groups)
    if layer.bias is not None:
        rows = torch.cat([rows, rows.new_ones(*rows.shape[:2], 1)], dim=2)
    return rows


def gradient_rows(layer: nn.Module, output_gradient: Tensor) -> Tensor:
    """Output gradients as (rows, out): one row per example and position, channels last."""
    if isinstance(layer, nn.Conv2d):
        output_gradient = output_gradient.movedim(1, -1)
    return output_gradient.reshape(-1, output_gradient.shape[-1])


def kfac_factors(
    layers: dict[str, nn.Module],
    forward: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
) -> dict[str, KroneckerFactors]:
    """A and G of each layer for the loss CE(forward(x), y), from one forward and one backward.

    `forward` must run the `layers` themselves (the model, or a `functional_call` of it). A layer
    the pass never reaches gets no entry. Nothing is written to any `.grad`.
    """
    check_supported(layers)
    input_sums: dict[str, Tensor] = {}
    row_counts: dict[str, int] = {}
    outputs: dict[str, list[Tensor]] = {}

    def capture(name: str) -> Callable[..., Tensor]:
        def hook(layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
            rows = input_rows(layer, at_least_float32(inputs[0].detach())).transpose(0, 1)
            input_sums[name] = input_sums.get(name, 0) + rows.mT @ rows
            row_counts[name] = row_counts.get(name, 0) + rows.shape[1]
            outputs.setdefault(name, []).append(output)
            # Later in-place ops (ReLU(inplace=True)) then change the copy, not `output`, whose
            # gradient stays the gradient w.r.t. this layer's output.
            return output.clone()

        return hook

    handles = [layer.register_forward_hook(capture(name)) for name, layer in layers.items()]
    try:
        with torch.enable_grad():
            # An input that requires grad makes every output differentiable even when no
            # parameter does; its own gradient is never computed.
            logits = forward(x.detach().requires_grad_())
            loss = F.cross_entropy(at_least_float32(logits), y, reduction="sum")
    finally:
        for handle in handles:
            handle.remove()
    captured = [output for name in outputs for output in outputs[name]]
    gradients = iter(torch.autograd.grad(loss, captured, allow_unused=True))
    factors = {}
    for name, layer_outputs in outputs.items():
        layer = layers[name]
        gradient_sum = 0
        for output in layer_outputs:
            gradient = next(gradients)
            if gradient is None:
                gradient = torch.zeros_like(output)
            rows = gradient_rows(layer, at_least_float32(gradient))
            gradient_sum = gradient_sum + rows.T @ rows
        factors[name] = KroneckerFactors(input_sums[name] / row_counts[name], gradient_sum / len(y))
    return factors
