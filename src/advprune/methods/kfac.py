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
        patches = F.unfold(
            _padded(layer, inputs), layer.kernel_size, dilation=layer.dilation, stride=layer.stride
        )
        rows = patches.transpose(1, 2).reshape(-1, layer.groups, patches.shape[1] // layer.groups)
    if layer.bias is not None:
        rows = torch.cat([rows, rows.new_ones(*rows.shape[:2], 1)], dim=2)
    return rows


def gradient_rows(layer: nn.Module, output_gradient: Tensor) -> Tensor:
    """Output gradients as (rows, out): one row per example and position, channels last."""
    if isinstance(layer, nn.Conv2d):
        output_gradient = output_gradient.movedim(1, -1)
    return output_gradient.reshape(-1, output_gradient.shape[-1])


InputStatistic = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""`(layer, input, output) -> Σ over the layer's rows a of a statistic of the input vector a`."""


def input_covariance_sum(layer: nn.Module, inputs: Tensor, output: Tensor) -> Tensor:
    """Σ a aᵀ over the layer's rows, per group: (groups, in, in)."""
    rows = input_rows(layer, inputs).transpose(0, 1)
    return rows.mT @ rows


def input_diagonal_sum(layer: nn.Module, inputs: Tensor, output: Tensor) -> Tensor:
    """Σ a ⊙ a over the layer's rows, per group: (groups, in), the diagonal of Σ a aᵀ.

    For a conv, Σ over positions of each patch entry squared is the weight gradient of the conv
    of x ⊙ x with an all-ones output gradient (one output channel per group): no unfold.
    """
    squares = _padded(layer, inputs).square()
    if isinstance(layer, nn.Linear):
        diagonal = squares.reshape(-1, layer.in_features).sum(0, keepdim=True)
    else:
        groups = layer.groups
        ones = squares.new_ones(output.shape[0], groups, *output.shape[2:])
        kernel_shape = (groups, layer.in_channels // groups, *layer.kernel_size)
        diagonal = _conv_weight_gradient(layer, squares, kernel_shape, ones).flatten(1)
    if layer.bias is not None:
        rows = output.numel() // output.shape[_channel_dim(layer)]
        diagonal = torch.cat([diagonal, diagonal.new_full((diagonal.shape[0], 1), rows)], dim=1)
    return diagonal


def input_product_sum(matrix: Tensor) -> InputStatistic:
    """The statistic Σ (M a) aᵀ for an out × in matrix M = [weight | bias] of the layer's shape.

    Divided by the row count it is M A (output row i of group k times A[k]), computed as a pass
    of the layer with weights M and the weight gradient of that output, never forming the
    in × in matrix A: 2·out·in multiply-adds per row instead of in² (for a conv, conv and conv
    weight-gradient kernels instead of an unfold). It equals `M @ input_covariance` up to float
    rounding.
    """

    def statistic(layer: nn.Module, inputs: Tensor, output: Tensor) -> Tensor:
        has_bias = layer.bias is not None
        weight = matrix[:, :-1] if has_bias else matrix
        bias = matrix[:, -1] if has_bias else None
        padded = _padded(layer, inputs)
        if isinstance(layer, nn.Linear):
            rows = padded.reshape(-1, layer.in_features)
            projected = F.linear(rows, weight, bias)  # (rows, out): row n is (M a_n)ᵀ
            product = projected.T @ rows
            projected_sum = projected.sum(0)
        else:
            kernel = weight.reshape(layer.weight.shape)
            projected = F.conv2d(
                padded, kernel, bias, layer.stride, 0, layer.dilation, layer.groups
            )
            product = _conv_weight_gradient(layer, padded, kernel.shape, projected).flatten(1)
            projected_sum = projected.sum((0, 2, 3))
        if has_bias:  # the bias entry of a is 1
            product = torch.cat([product, projected_sum[:, None]], dim=1)
        return product

    return statistic


def _padded(layer: nn.Module, inputs: Tensor) -> Tensor:
    """A conv's input padded as the layer pads it (any mode); a linear layer's input as is."""
    if isinstance(layer, nn.Linear):
        return inputs
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    return F.pad(inputs, layer._reversed_padding_repeated_twice, mode=mode)


def _conv_weight_gradient(
    layer: nn.Conv2d, padded: Tensor, kernel_shape: tuple[int, ...], output_gradient: Tensor
) -> Tensor:
    """Σ over examples and positions of output_gradient ⊗ input patch, for `padded` inputs."""
    return torch.nn.grad.conv2d_weight(
        padded, kernel_shape, output_gradient, layer.stride, 0, layer.dilation, layer.groups
    )


def _channel_dim(layer: nn.Module) -> int:
    return 1 if isinstance(layer, nn.Conv2d) else -1


@dataclass
class KroneckerStatistics:
    """A layer's input statistic over its rows (mean, e.g. A) and its output-gradient one:
    G = 1/N Σ ĝ ĝᵀ (when asked for) and its diagonal."""

    input_statistic: Tensor
    gradient_diagonal: Tensor
    gradient_covariance: Tensor | None = None


def kronecker_statistics(
    layers: dict[str, nn.Module],
    forward: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    input_statistics: dict[str, InputStatistic],
    *,
    full_gradient: bool = True,
) -> dict[str, KroneckerStatistics]:
    """K-FAC's statistics of each layer for CE(forward(x), y), from one forward and one backward.

    `input_statistics[name]` reduces the layer's input during the forward (e.g.
    `input_covariance_sum`), and the sum is divided by the layer's row count (N·L). G is formed
    only with `full_gradient`; its diagonal always. `forward` must run the `layers` themselves
    (the model, or a `functional_call` of it). A layer the pass never reaches gets no entry.
    Nothing is written to any `.grad`.
    """
    check_supported(layers)
    input_sums: dict[str, Tensor] = {}
    row_counts: dict[str, int] = {}
    outputs: dict[str, list[Tensor]] = {}

    def capture(name: str) -> Callable[..., Tensor]:
        def hook(layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
            statistic = input_statistics[name](layer, at_least_float32(inputs[0].detach()), output)
            input_sums[name] = input_sums.get(name, 0) + statistic
            rows = output.numel() // output.shape[_channel_dim(layer)]
            row_counts[name] = row_counts.get(name, 0) + rows
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
    statistics = {}
    for name, layer_outputs in outputs.items():
        layer_gradients = [next(gradients) for _ in layer_outputs]
        covariance, diagonal = _gradient_statistics(
            layers[name], layer_outputs, layer_gradients, full_gradient
        )
        statistics[name] = KroneckerStatistics(
            input_sums[name] / row_counts[name],
            diagonal / len(y),
            covariance / len(y) if full_gradient else None,
        )
    return statistics


def _gradient_statistics(
    layer: nn.Module,
    outputs: list[Tensor],
    gradients: list[Tensor | None],
    full_gradient: bool,
) -> tuple[Tensor | int, Tensor]:
    """Σ gᵀg over the rows of the layer's output gradients (with `full_gradient`; else 0) and
    its diagonal, summed over every call of the layer in the pass."""
    covariance, diagonal = 0, 0
    for output, gradient in zip(outputs, gradients, strict=True):
        gradient = at_least_float32(torch.zeros_like(output) if gradient is None else gradient)
        if full_gradient:
            rows = gradient_rows(layer, gradient)
            covariance = covariance + rows.T @ rows
        else:
            channel = _channel_dim(layer) % gradient.dim()
            dims = [d for d in range(gradient.dim()) if d != channel]
            diagonal = diagonal + gradient.square().sum(dims)
    if full_gradient:
        diagonal = covariance.diagonal()
    return covariance, diagonal


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
    statistics = kronecker_statistics(
        layers, forward, x, y, dict.fromkeys(layers, input_covariance_sum)
    )
    return {
        name: KroneckerFactors(entry.input_statistic, entry.gradient_covariance)
        for name, entry in statistics.items()
    }
