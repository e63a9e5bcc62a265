"""FewChannelConv2d computes every gradient nn.Conv2d does, to float64 rounding, and is applied
only where it pays (few input channels, plain zero-padded ungrouped convolutions)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from advprune.models import create_model
from advprune.models.few_channel_conv import (
    FewChannelConv2d,
    input_gradient,
    speed_up_input_gradients,
)

GEOMETRIES = [  # in channels, kernel, stride, padding, dilation, bias
    (1, 5, 1, 0, 1, True),
    (3, 3, 1, 1, 1, False),
    (3, 7, 2, 3, 1, True),
    (1, 3, 2, 0, 2, True),
    (2, 4, 3, 2, 1, False),
]


def pair(in_channels: int, kernel: int, stride: int, padding: int, dilation: int, bias: bool):
    torch.manual_seed(0)
    plain = nn.Conv2d(in_channels, 6, kernel, stride, padding, dilation, bias=bias).double()
    fast = speed_up_input_gradients(copy.deepcopy(plain))
    return plain, fast


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_every_gradient_equals_the_plain_convolutions(geometry, channels_last):
    plain, fast = pair(*geometry)
    assert isinstance(fast, FewChannelConv2d)
    x = torch.rand(4, geometry[0], 13, 11, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        plain, fast = (m.to(memory_format=torch.channels_last) for m in (plain, fast))
    grads = []
    for module in (plain, fast):
        x_leaf = x.clone().requires_grad_()
        out = module(x_leaf)
        (out.square() * torch.arange(out.numel()).view_as(out)).sum().backward()
        grads.append([x_leaf.grad, *(p.grad for p in module.parameters())])
    for expected, got in zip(*grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("geometry", GEOMETRIES[:3])
def test_the_input_gradient_alone_and_its_double_backward(geometry):
    """An attack asks for the input's gradient only; a gradient penalty differentiates it again,
    with respect to the weights too."""
    plain, fast = pair(*geometry)
    x = torch.rand(3, geometry[0], 12, 12, dtype=torch.float64, requires_grad=True)
    results = []
    for module in (plain, fast):
        (grad_x,) = torch.autograd.grad(module(x).tanh().sum(), x, create_graph=True)
        second = torch.autograd.grad(grad_x.square().sum(), [x, module.weight])
        results.append([grad_x, *second])
    for expected, got in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_input_gradient_is_the_transposed_convolution():
    torch.manual_seed(1)
    weight = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    grad_output = torch.randn(2, 5, 7, 7, dtype=torch.float64)
    expected = F.conv_transpose2d(grad_output, weight, stride=2, padding=1)
    got = input_gradient(grad_output, weight, (13, 13), (2, 2), (1, 1), (1, 1))
    torch.testing.assert_close(got, expected)


def test_a_substituted_weight_gets_its_gradient():
    """MAD and HYDRA run the network through `functional_call` with masked weights."""
    plain, fast = pair(1, 3, 1, 1, 1, True)
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    grads = []
    for module in (plain, fast):
        masked = module.weight * (torch.arange(9.0).view(1, 1, 3, 3) % 2)
        out = functional_call(module, {"weight": masked}, (x,))
        grads.append(torch.autograd.grad(out.sum(), [x, masked]))
    for expected, got in zip(*grads, strict=True):
        torch.testing.assert_close(got, expected)


def test_applied_only_where_it_pays_and_nothing_else_changes():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.Conv2d(8, 8, 3),
        nn.Conv2d(3, 3, 3, groups=3),
        nn.Conv2d(3, 8, 3, padding="same"),
        nn.Conv2d(1, 8, 3, padding=1, padding_mode="reflect"),
    )
    before = {key: value.clone() for key, value in model.state_dict().items()}
    first = model[0]
    speed_up_input_gradients(model)
    assert [type(m).__name__ for m in model] == ["FewChannelConv2d"] + ["Conv2d"] * 4
    assert model[0] is first and isinstance(first, nn.Conv2d)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_create_model_speeds_up_the_first_layer_and_an_in_place_relu_may_follow():
    model = create_model("lenet5-caffe", 10, 1, image_size=28)
    assert isinstance(model.body[0], FewChannelConv2d)
    assert not isinstance(model.body[3], FewChannelConv2d)  # 20 input channels
    assert isinstance(model.body[1], nn.ReLU) and model.body[1].inplace
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    (grad,) = torch.autograd.grad(model(x).logsumexp(1).sum(), x)
    model.body[0].__class__ = nn.Conv2d
    (expected,) = torch.autograd.grad(model(x).logsumexp(1).sum(), x)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)


def test_without_gradients_it_is_the_plain_forward():
    plain, fast = pair(3, 3, 1, 1, 1, True)
    x = torch.rand(2, 3, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(fast(x), plain(x))
    assert fast(x.requires_grad_()).grad_fn.name() == "_InputGradientBackward"
