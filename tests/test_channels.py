"""Structured pruning: channel groups, their selection and masks, and the exact export."""

import pytest
import torch
from torch import nn

from advprune.core.errors import ConfigError
from advprune.masks.channels import (
    CONSUMER,
    NORM,
    PRODUCER,
    channel_groups,
    channel_weight_masks,
    describe_channel_pruning,
    filter_norms,
    group_sums,
    parameter_masks,
    removed_channels,
    select_channels,
    unprunable_groups,
)
from advprune.masks.export import channel_sparsity, export_gated
from advprune.methods.magnitude import magnitude_scores
from advprune.models import create_model
from advprune.models.layer_types import NORMS

NETWORKS = {  # name: (in_channels, image_size)
    "lenet5-caffe": (1, 28),
    "vgg16-bn": (3, 32),
    "resnet18": (3, 32),
}


def network(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The zoo network with random weights and batch-norm statistics, and an example input."""
    channels, size = NETWORKS[name]
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=channels, image_size=size).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, NORMS):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
            elif isinstance(module, nn.Linear | nn.Conv2d):  # logits of order 1: the tolerance
                nn.init.kaiming_normal_(module.weight)  # below is small against them
    return model, torch.zeros(1, channels, size, size)


@pytest.fixture(scope="module", params=list(NETWORKS))
def model_and_groups(request):
    model, example = network(request.param)
    return request.param, model, example, channel_groups(model, example)


def test_groups_couple_residual_channels_and_leave_the_output_alone(model_and_groups):
    name, model, _, groups = model_and_groups
    output = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)][-1]
    producers = [layer for group in groups for layer in group.layers(PRODUCER)]
    assert output not in producers and len(producers) == len(set(producers))
    for group in groups:
        for part in group.slices:
            assert part.channel.max() < group.size and part.index.numel() == part.channel.numel()
    if name == "resnet18":
        stem = next(g for g in groups if "conv1" in g.layers(PRODUCER))
        # the stem and every layer1 block's second conv write one residual stream
        assert {"layer1.0.conv2", "layer1.1.conv2"} <= set(stem.layers(PRODUCER))
        assert {"bn1", "layer1.0.bn2", "layer1.1.bn2"} <= set(stem.layers(NORM))
        assert "layer2.0.shortcut.0" in stem.layers(CONSUMER)
    if name == "vgg16-bn":  # the last conv's channels are read as 4 columns each after the pool
        last = next(g for g in groups if "features.40" in g.layers(PRODUCER))
        columns = next(p for p in last.slices if p.parameter == "classifier.0.weight")
        assert columns.index.numel() == 4 * last.size


@pytest.mark.parametrize("sparsity", [0.5, 0.75])
def test_masked_and_exported_networks_compute_the_same(model_and_groups, sparsity):
    _, model, example, groups = model_and_groups
    keep = select_channels(filter_norms(model, groups), sparsity, scheme="layerwise")
    masked = _masked_copy(model, groups, keep)
    exported = export_gated(masked, example, round_to=1)
    x = torch.rand(4, *example.shape[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (masked(x) - exported(x)).abs().max() < 1e-4
        assert masked(x).abs().max() > 0.01  # 1e-4 is at most 1 % of the logits
    widths = {g.name: int(keep[g.name].sum()) for g in groups}
    for group in groups:
        layer = exported.get_submodule(group.layers(PRODUCER)[0])
        assert layer.weight.shape[0] == widths[group.name]
    measured = channel_sparsity(masked, example)
    total = sum(g.size for g in groups)
    assert measured["channels"]["total"] == total
    assert measured["channel_sparsity"] == pytest.approx(1 - sum(widths.values()) / total)
    assert abs(measured["channel_sparsity"] - sparsity) < 0.01


def _masked_copy(model, groups, keep):
    import copy

    masked = copy.deepcopy(model)
    channel_weight_masks(masked, groups, keep).apply(masked)
    return masked


def test_a_pruned_channel_is_zero_in_every_slice():
    model, example = network("resnet18")
    groups = channel_groups(model, example)
    keep = select_channels(filter_norms(model, groups), 0.5, scheme="layerwise")
    masks = channel_weight_masks(model, groups, keep)
    stem = next(g for g in groups if "conv1" in g.layers(PRODUCER))
    dropped = (~keep[stem.name]).nonzero().flatten()
    for part in stem.slices:
        positions = part.index[torch.isin(part.channel, dropped)]
        assert not masks[part.parameter].index_select(part.dim, positions).any(), part.parameter
    # a conv cut by two groups (its filters by one, its input columns by another): the product
    conv = masks["layer1.0.conv2.weight"]
    assert conv.float().mean() == pytest.approx(0.25, abs=0.01)


def test_selection_is_exact_per_group_or_global_and_never_empties_a_group():
    scores = {"a": torch.arange(10.0), "b": torch.arange(100.0, 104.0)}
    layerwise = select_channels(scores, 0.5, scheme="layerwise")
    assert [int(m.sum()) for m in layerwise.values()] == [5, 2]
    assert layerwise["a"][5:].all() and not layerwise["a"][:5].any()
    globally = select_channels(scores, 0.7, scheme="global")  # the 10 lowest are all in "a"…
    assert int(globally["a"].sum()) == 1 and globally["a"][9]  # …but "a" keeps its best one
    assert int(globally["b"].sum()) == 4
    with pytest.raises(ConfigError, match="ranks weights"):
        select_channels(scores, 0.5, scheme="mad")


def test_group_sums_add_every_slice_and_parameter_masks_pass_gradients():
    model, example = network("lenet5-caffe")
    groups = channel_groups(model, example)
    ones = {name: torch.ones_like(p) for name, p in model.named_parameters()}
    sums = group_sums(ones, groups)
    conv2 = next(g for g in groups if "body.3" in g.layers(PRODUCER))
    # per conv2 channel: its 20·5·5 filter, its bias and the 16 fc1 columns that read it
    assert torch.equal(sums[conv2.name], torch.full((50,), 20 * 25 + 1 + 16 * 500.0))
    l1 = filter_norms(model, groups, 1)[conv2.name]
    weight = model.get_submodule("body.3").weight.detach()
    assert torch.allclose(l1, weight.abs().sum(dim=(1, 2, 3)))
    assert torch.allclose(filter_norms(model, groups, 2)[conv2.name], weight.flatten(1).norm(dim=1))
    values = {g.name: torch.rand(g.size, requires_grad=True) for g in groups}
    factors = parameter_masks(groups, values)
    sum(f.sum() for f in factors.values()).backward()
    assert all(v.grad is not None and (v.grad > 0).all() for v in values.values())


def test_magnitude_channel_scores_are_not_the_weight_scores_summed():
    """Magnitude ranks channels by their filters alone; the generic sum also counts readers."""
    model, example = network("lenet5-caffe")
    groups = channel_groups(model, example)
    filters = filter_norms(model, groups, 1)
    everything = group_sums(magnitude_scores(model, include_bias=False), groups)
    assert all((everything[name] > filters[name]).all() for name in filters)


class DepthwiseNet(nn.Module):
    """conv1 → depthwise conv → conv2 → fc1 → fc2: conv1's channels feed a grouped conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.dw(self.conv1(x).relu()).relu()).relu()
        return self.fc2(self.fc1(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)).relu())


def test_a_group_a_depthwise_conv_reads_is_named_and_left_out_of_the_sparsity():
    """Half the channels of every group that can lose one: 50 % channel sparsity, as selected,
    logged and measured after masking, not 37.5 % counted over the depthwise group too."""
    torch.manual_seed(0)
    model, example = DepthwiseNet().eval(), torch.zeros(1, 1, 8, 8)
    groups = channel_groups(model, example)
    assert sorted((group.name, group.size) for group in groups) == [("conv2", 16), ("fc1", 32)]
    unprunable = unprunable_groups(model, example)
    assert unprunable == {"dw": "8 channels: the grouped conv dw ties each to its input"}
    keep = select_channels(filter_norms(model, groups), 0.5)
    masks = channel_weight_masks(model, groups, keep)
    assert removed_channels(groups, masks) == (24, 48)
    line = describe_channel_pruning("magnitude", 24, 48, unprunable)
    assert "pruned 50.00% of the prunable channels (24 of 48" in line
    assert "not prunable, every channel kept: dw (8 channels: the grouped conv dw" in line
    masks.apply(model)
    measured = channel_sparsity(model, example)
    assert measured["channel_sparsity"] == 0.5
    assert measured["channels"]["unprunable"] == unprunable
