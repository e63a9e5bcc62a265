"""A network's first convolution with an input gradient that is fast on the CPU.

Every attack step needs the gradient of the loss with respect to the image, which runs the first
convolution backwards to its 1 or 3 input channels. oneDNN, PyTorch's CPU convolution, computes
that gradient 1.2–4.5× slower than an explicit one: Wᵀ·G as one matrix product (the gradient of
each input pixel under each kernel offset) and k² strided additions into the image, one per
offset (benchmarks/input_gradient.py; LeNet-5-Caffe's 1→20 5×5 layer, batch 128: 7.2 ms → 1.6 ms,
a fifth of a PGD step). With more input channels oneDNN is the faster one, and on a GPU cuDNN
is kept.

`speed_up_input_gradients(model)` turns each plain `nn.Conv2d` with at most `FEW_CHANNELS` input
channels into a `FewChannelConv2d`, in place: the same object, parameters, hooks and state dict,
an `nn.Conv2d` to every `isinstance`; only its backward to the input differs, by the rounding of
a float sum in another order. `create_model` applies it to every network it builds.

Example: `speed_up_input_gradients(my_net)`; then `torch.autograd.grad(loss, x)` runs the fast
backward wherever `my_net`'s first layer is a Conv2d on 1–3 channels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEW_CHANNELS = 3  # up to RGB; at 4 channels the two are close, at 8 oneDNN is 3× faster
Geometry = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # stride, padding, dilation


def input_gradient(
    grad_output: Tensor,
    weight: Tensor,
    input_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """The gradient of a convolution (groups 1) with respect to its input of spatial size
    `input_size`: each output position sends Wᵀ·g to the input pixels under its kernel."""
    batch, out_channels, out_h, out_w = grad_output.shape
    in_channels, kernel_h, kernel_w = weight.shape[1:]
    # Per image, (in channels·k² × out channels) by (out channels × positions): each offset's
    # slice is then contiguous along the positions. `bmm`, not `matmul`, which copies the
    # gradient when the weight requires grad (to fold it into one `mm`).
    per_image = weight.reshape(out_channels, -1).t().expand(batch, -1, -1)
    per_offset = torch.bmm(per_image, grad_output.reshape(batch, out_channels, -1)).view(
        batch, in_channels, kernel_h, kernel_w, out_h, out_w
    )
    (stride_h, stride_w), (pad_h, pad_w), (dilation_h, dilation_w) = stride, padding, dilation
    height, width = input_size
    # Room for every offset's strided slice; the padding border is cut off at the end.
    padded = grad_output.new_zeros(
        batch, in_channels, height + 2 * pad_h + stride_h, width + 2 * pad_w + stride_w
    )
    for i in range(kernel_h):
        for j in range(kernel_w):
            top, left = i * dilation_h, j * dilation_w
            along_h = slice(top, top + stride_h * out_h, stride_h)
            along_w = slice(left, left + stride_w * out_w, stride_w)
            padded[:, :, along_h, along_w].add_(per_offset[:, :, i, j])
    return padded[:, :, pad_h : pad_h + height, pad_w : pad_w + width]


class _InputGradient(torch.autograd.Function):
    """Gives a convolution's output `y`, computed from the detached input, its gradient path
    back to the input `x` through `input_gradient`: the identity forwards, in place (so that an
    in-place ReLU may follow). The weight's and bias's gradients stay on `y`'s own graph, which
    the autograd engine prunes when they are not wanted (an attack's input gradient); `weight`
    is an input here only so that a double backward sees the input gradient's dependence on it."""

    @staticmethod
    def forward(ctx: Any, y: Tensor, x: Tensor, weight: Tensor, geometry: Geometry) -> Tensor:
        ctx.mark_dirty(y)
        ctx.save_for_backward(weight)
        ctx.input_size = (x.shape[2], x.shape[3])
        ctx.geometry = geometry
        return y

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        (weight,) = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[1]:
            grad_input = input_gradient(grad_output, weight, ctx.input_size, *ctx.geometry)
        return grad_output, grad_input, None, None


class FewChannelConv2d(nn.Conv2d):
    """An `nn.Conv2d` on few input channels whose input gradient is `input_gradient`'s on the
    CPU; made by `speed_up_input_gradients`, not built directly. Where no input gradient is
    wanted, on a GPU, under autocast or in another dtype than float32/float64, it is the plain
    Conv2d."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        fast = (
            input.requires_grad
            and torch.is_grad_enabled()
            and input.device.type == "cpu"
            and input.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu")
        )
        if not fast:
            return super()._conv_forward(input, weight, bias)
        y = F.conv2d(input.detach(), weight, bias, self.stride, self.padding, self.dilation)
        geometry = (self.stride, self.padding, self.dilation)
        return _InputGradient.apply(y, input, weight, geometry)


def _qualifies(module: nn.Module) -> bool:
    """A plain Conv2d (not a subclass with its own forward) on few channels, zero-padded by a
    number (not "same"), ungrouped."""
    return (
        type(module) is nn.Conv2d
        and module.groups == 1
        and module.in_channels <= FEW_CHANNELS
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def speed_up_input_gradients(model: nn.Module) -> nn.Module:
    """`model`, its plain Conv2d layers on ≤ `FEW_CHANNELS` input channels made
    `FewChannelConv2d` in place (the same objects; see the module docstring)."""
    for module in model.modules():
        if _qualifies(module):
            module.__class__ = FewChannelConv2d
    return model
