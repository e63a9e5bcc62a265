"""HARP: learnt rates with their floor, straight-through top-k to scores and rates, the
compression loss and its γ schedule, the exact counts, and a tiny run end to end."""

import math

import pytest
import torch
from torch import nn

from advprune.core.errors import ConfigError
from advprune.core.tensor_files import load_tensors, read_metadata
from advprune.masks import WeightMasks, prunable_parameters
from advprune.masks.channels import channel_groups
from advprune.methods import PruneSettings, create_method
from advprune.methods.harp import (
    CompressionRate,
    HarpTraining,
    compression_loss,
    kept_rate,
    pruned_entries,
    rate_logit,
    scaled_to_target,
)
from advprune.methods.harp_flops import ChannelFlops, flops_layers
from advprune.models import create_model
from advprune.models.serialization import load_model
from advprune.reproduction import make_plan
from conftest import prune_tiny, train_tiny

TARGET = 0.01  # the benchmark's k: 99 % of the weights pruned


def lenet(name: str = "lenet300-100") -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, 10, 1, image_size=28)


def prepared(model: nn.Module, **options) -> HarpTraining:
    settings = {"gamma": 0.01, "rate_floor": 0.1, "initial_rate": 0.1, **options}
    method = HarpTraining(TARGET, **settings)
    method.prepare(model)
    return method


def test_rates_start_from_the_strategy_and_stay_above_their_floor():
    floor = 0.1 * TARGET
    assert rate_logit(0.1, floor) == pytest.approx(-2.207, abs=1e-3)  # docs/fidelity.md
    for rate in (0.1, 0.5, 0.9):
        assert kept_rate(torch.tensor(rate_logit(rate, floor)), floor) == pytest.approx(rate)
    # the strategy "original" (1.0) is clipped: sigmoid(±∞) would never move
    assert kept_rate(torch.tensor(rate_logit(1.0, floor)), floor) < 1
    assert kept_rate(torch.tensor(-50.0), floor) == pytest.approx(floor)


def test_top_k_prunes_int_of_1_minus_k_and_sends_the_mask_gradient_to_the_rate():
    model = lenet()
    method = prepared(model)
    network = method.network
    for name, mask in network.masks.items():
        rate = float(network.rate(name).detach())
        assert (
            int((mask == 0).sum())
            == pruned_entries(mask.numel(), rate)
            == int((1 - rate) * mask.numel())
        )
    x = torch.rand(8, 1, 28, 28)
    network(x).square().sum().backward()
    for name, score in method.scores.items():
        rate_score = method.rate_scores[name]
        # d k / d r of k = sigmoid(r)(1 − k_min) + k_min, times Σ over the layer of d loss / d mask
        sigmoid = torch.sigmoid(rate_score.detach())
        slope = sigmoid * (1 - sigmoid) * (1 - method.floor)
        mask_gradient = score.grad * torch.sign(score.detach())  # the scores get g through |s|
        assert rate_score.grad == pytest.approx(float(slope * mask_gradient.sum()), rel=1e-4)
    assert all(p.grad is None for p in model.parameters())  # weights frozen


def test_compression_loss_is_the_hinge_on_the_kept_share_of_weights_or_flops():
    model = lenet()
    method = prepared(model)
    sizes = {n: p.numel() for n, p in prunable_parameters(model, include_bias=False).items()}
    kept = sum(sizes[n] * float(method.network.rate(n).detach()) for n in sizes)
    rate = kept / sum(sizes.values())
    assert float(method.compression_loss().detach()) == pytest.approx(rate / TARGET - 1, rel=1e-5)
    with torch.no_grad():
        for rate_score in method.rate_scores.values():
            rate_score.fill_(-50.0)  # every layer at its floor, below the target
    assert float(method.compression_loss().detach()) == 0
    cnn = lenet("lenet5-caffe")
    example = torch.zeros(1, 1, 28, 28)
    groups = channel_groups(cnn, example)
    flops = ChannelFlops(flops_layers(cnn, example), groups, "registration")
    assert float(flops(lambda _: 1.0)) == pytest.approx(1.0)
    half = float(flops(lambda _: 0.5))  # conv2 and fc1 read and write pruned groups: ×¼
    assert 0.25 < half < 0.5
    assert float(compression_loss(flops, lambda _: 1.0, 0.5)) == pytest.approx(
        1 / flops.target_rate(0.5) - 1
    )


def test_gamma_grows_per_epoch_until_the_target_is_reached_then_stays():
    method = prepared(lenet())
    assert [method.current_gamma(e) for e in range(3)] == pytest.approx([0.01, 0.02, 0.03])
    method.close_epoch(1)  # far above the target: nothing frozen
    assert method.frozen_gamma is None
    with torch.no_grad():
        for rate_score in method.rate_scores.values():
            rate_score.fill_(-50.0)
    method.close_epoch(2)
    assert method.frozen_gamma == pytest.approx(0.03)
    assert method.current_gamma(10) == pytest.approx(0.03)
    assert [h["epoch"] for h in method.history] == [2, 3]


def test_rates_short_of_the_target_are_scaled_to_it_keeping_their_ratios():
    rates = {"a": 0.4, "b": 0.1}
    compression = CompressionRate({"a": 100.0, "b": 300.0})
    scaled = scaled_to_target(rates, 0.001, compression, 0.05)
    assert float(compression(scaled.__getitem__)) == pytest.approx(0.05, rel=1e-6)
    assert scaled["a"] / scaled["b"] == pytest.approx(4)


def test_resumed_state_gives_the_same_masks_and_schedule():
    model = lenet()
    method = prepared(model)
    with torch.no_grad():
        next(iter(method.scores.values())).mul_(-1).add_(0.01)
        next(iter(method.rate_scores.values())).fill_(-3.0)
    method.frozen_gamma, method.epoch = 0.02, 4
    method.history = [{"epoch": 5, "gamma": 0.02, "hw_loss": 0.0, "rate": 0.01}]
    method.network.update_masks()
    again = prepared(lenet())
    again.load_state_dict(method.state_dict(), again.network.network)
    assert (again.frozen_gamma, again.epoch, again.history) == (0.02, 4, method.history)
    assert all(torch.equal(again.network.masks[n], m) for n, m in method.network.masks.items())


def test_harp_at_99_percent_runs_end_to_end_on_fashion_mnist(tmp_path):
    dense = train_tiny(tmp_path / "dense", model="lenet5-caffe")
    run_dir = tmp_path / "harp"
    model = prune_tiny(dense, run_dir, "harp", sparsity=0.99, score_epochs=2, finetune_epochs=1)
    weights = prunable_parameters(model, include_bias=False)
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros / sum(w.numel() for w in weights.values()) >= 0.99 - 1e-3
    _, record = WeightMasks.load(run_dir / "scores" / "masks.safetensors")
    assert record["structure"] == "weights" and set(record["rates"]) == set(weights)
    assert all(0.1 * TARGET <= k < 1 for k in record["rates"].values())
    gammas = [h["gamma"] for h in record["history"]]
    assert gammas == pytest.approx([0.01, 0.02])  # not reached in two tiny epochs
    # the prune phase trained scores and rates only: the dense weights are unchanged
    tensors, _ = load_tensors(run_dir / "scores" / "checkpoint.safetensors")
    dense_model, _ = load_model(dense / "model.safetensors")
    for name, tensor in dense_model.state_dict().items():
        assert torch.equal(tensors[f"model.{name}"], tensor), name
    start = rate_logit(0.1, 0.1 * TARGET)
    assert any(not math.isclose(float(tensors[f"extra.rates.{n}"]), start) for n in weights)
    method = read_metadata(run_dir / "model.safetensors", "model")["method"]
    assert method["label"] == "harp" and method["departures"] == {}


def test_harp_refuses_a_scheme_and_records_no_departure_for_channels():
    harp = create_method("harp")
    with pytest.raises(ConfigError, match="drop --scheme"):
        harp.check(PruneSettings(method="harp", scheme="global"))
    assert harp.departures(PruneSettings(method="harp", structure="channels")) == {}
    tuned = create_method("harp", {"compression_gamma": 0.1})
    assert tuned.label(PruneSettings()) == "harp [compression_gamma=0.1]"
    corrected = create_method("harp", {"channel_flops": "data-flow"})  # the official bug fixed
    assert corrected.label(PruneSettings(structure="channels")) == "harp [channel_flops=data-flow]"
    with pytest.raises(ConfigError, match="not above their floor"):  # log(0) in the official code
        harp.check(PruneSettings(method="harp", sparsity=0.0))


def test_the_suite_compares_harp_and_hydra_at_99_on_the_same_budget(tmp_path):
    plan = make_plan("fashion-mnist-suite", tmp_path, only=["harp-99", "hydra-99"])
    steps = {step.name: step for step in plan.steps}
    harp, hydra = steps["harp-99"], steps["hydra-99"]
    for key in ("from_run", "sparsity", "score_epochs", "finetune_epochs", "limit_train"):
        assert harp.setting(key) == hydra.setting(key), key


class ConvBnConv(nn.Module):
    """conv → BN → ReLU → conv: one channel group, read by the second conv."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 3, 3, padding=1)
        with torch.no_grad():
            self.bn.bias.copy_(torch.tensor([0.5, 0.2, 0.3, 0.4]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.bn(self.conv1(x)))).mean((2, 3))


def test_a_channel_mask_multiplies_only_the_readers_columns_as_the_official_layer():
    """The official [1, C_in, 1, 1] mask: the producer and its BN still run, so a pruned channel's
    score has a task gradient, and a kept one gets exactly the reader's Σ g·w."""
    from advprune.methods.harp import RatedNetwork

    model = ConvBnConv().eval()
    x = torch.rand(2, 2, 5, 5, generator=torch.Generator().manual_seed(1))
    (group,) = channel_groups(model, x)
    scores = {group.name: torch.tensor([0.4, -0.1, 0.3, 0.2], requires_grad=True)}
    rate = {group.name: torch.tensor(rate_logit(0.5, 0.05), requires_grad=True)}
    network = RatedNetwork(model, scores, rate, 0.05, [group])
    hard = network.masks[group.name]
    assert hard.tolist() == [1, 0, 1, 0]
    network(x).square().sum().backward()
    # the official layer: conv2's weight times a [1, C, 1, 1] mask that carries the gradient
    mask = hard.clone().view(1, 4, 1, 1).requires_grad_(True)
    hidden = torch.relu(model.bn(model.conv1(x)))
    out = nn.functional.conv2d(hidden, model.conv2.weight * mask, model.conv2.bias, padding=1)
    out.mean((2, 3)).square().sum().backward()
    official = mask.grad.flatten()
    assert official[1] != 0 and official[3] != 0  # pruned channels still have a gradient
    through_abs = scores[group.name].grad * torch.sign(scores[group.name].detach())
    assert torch.allclose(through_abs, official, rtol=1e-5, atol=1e-7)


def test_channel_scores_start_at_the_official_scale_of_root_six():
    from advprune.methods.hydra import scaled_channel_scores

    model = lenet("lenet5-caffe")
    groups = channel_groups(model, torch.zeros(1, 1, 28, 28))
    scores = scaled_channel_scores(model, groups)
    for name, score in scores.items():  # fan_in of the [C_out, 1, 1, 1] score tensor is 1
        assert float(score.max()) == pytest.approx(math.sqrt(6)), name


class Block(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + self.shortcut(x))


class TinyResNet(nn.Module):
    """A stem, a downsampling block (1×1 shortcut conv) and an identity block, as resnet_cifar."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.block = Block(4, 6, 2)
        self.block2 = Block(6, 6, 1)
        self.linear = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block2(self.block(torch.relu(self.bn1(self.conv1(x)))))
        return self.linear(out.mean((2, 3)))


def count_flops_conv(height, in_channels, out_channels, kernel, stride=1, padding=0):
    """utils/hw.py:17-41, as written (bias and activation on)."""
    n = kernel * kernel * in_channels
    out_height = (height - kernel + 2 * padding) / stride + 1
    instances = out_height * out_height
    return out_channels * instances * (2 * n - 1) + 2 * out_channels * instances


def count_flops_dense(in_features, out_features):
    """utils/hw.py:7-14."""
    return (2 * in_features - 1) * out_features + 2 * out_features


# registration order: (name, C_in, C_out, feature map in, kernel, stride, padding)
TINY_LAYERS = [
    ("conv1", 3, 4, 8, 3, 1, 1),
    ("block.conv1", 4, 6, 8, 3, 2, 1),
    ("block.conv2", 6, 6, 4, 3, 1, 1),
    ("block.shortcut.0", 4, 6, 8, 1, 2, 0),
    ("block2.conv1", 6, 6, 4, 3, 1, 1),
    ("block2.conv2", 6, 6, 4, 3, 1, 1),
    ("linear", 6, 3, 1, 1, 1, 0),
]


def official_flops(inputs, outputs, layer):
    _, _, _, height, kernel, stride, padding = layer
    if kernel == 1 and height == 1:
        return count_flops_dense(inputs, outputs)
    return count_flops_conv(height, inputs, outputs, kernel, stride, padding)


def test_channel_flops_pair_layers_in_registration_order_as_the_official_loss():
    """hw_flops_loss scales each layer's outputs by the next registered layer's rate: in a
    ResNet block conv2's by the shortcut's (the block's input); data-flow uses the stream's."""
    model = TinyResNet()
    example = torch.zeros(1, 3, 8, 8)
    groups = channel_groups(model, example)
    writer = {layer: g.name for g in groups for layer in g.layers("producer")}
    stem, inner, stream, inner2 = 0.7, 0.4, 0.6, 0.3
    rates = {writer["conv1"]: stem, writer["block.conv1"]: inner}
    rates |= {writer["block.conv2"]: stream, writer["block2.conv1"]: inner2}
    assert len(groups) == 4 and writer["block.conv2"] == writer["block.shortcut.0"]
    # each layer's k is the kept share of its input channels (the RGB input: never pruned here)
    k = [1.0, stem, inner, stem, stream, inner2, stream]
    total = sum(official_flops(layer[1], layer[2], layer) for layer in TINY_LAYERS)
    official = sum(
        official_flops(layer[1] * k[i], layer[2] * (k[i + 1] if i + 1 < len(k) else 1), layer)
        for i, layer in enumerate(TINY_LAYERS)
    )
    layers = flops_layers(model, example)
    assert [layer.name for layer in layers] == [layer[0] for layer in TINY_LAYERS]
    registration = ChannelFlops(layers, groups, "registration")
    assert float(registration(rates.__getitem__)) == pytest.approx(official / total)
    # the data flow: block.conv2 writes the stream (rate 0.6), not the block's input (0.7)
    conv2 = TINY_LAYERS[2]
    corrected = official - official_flops(6 * inner, 6 * stem, conv2)
    corrected += official_flops(6 * inner, 6 * stream, conv2)
    data_flow = ChannelFlops(layers, groups, "data-flow")
    assert float(data_flow(rates.__getitem__)) == pytest.approx(corrected / total)
    assert corrected != pytest.approx(official)


@pytest.mark.parametrize("target", [0.3, 0.1])
def test_the_channel_flops_target_rounds_every_layers_inputs_and_outputs(target):
    """hw.py:204,209: round(C·k) on both sides of every layer, the RGB input and classes too."""
    model = TinyResNet()
    example = torch.zeros(1, 3, 8, 8)
    flops = ChannelFlops(flops_layers(model, example), channel_groups(model, example), "data-flow")
    total = sum(official_flops(layer[1], layer[2], layer) for layer in TINY_LAYERS)
    kept = sum(
        official_flops(round(layer[1] * target), round(layer[2] * target), layer)
        for layer in TINY_LAYERS
    )
    assert flops.target_rate(target) == pytest.approx(kept / total)


@pytest.mark.parametrize(
    ("name", "table"),
    [
        ("vgg16-bn", [32, 32, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2, 1, 1, 1]),
        ("resnet18", [32, 32, 32, 32, 32, 32, 16, 32, 16, 16, 16, 8, 16, 8, 8, 8, 4, 8, 4, 4, 1]),
    ],
)
def test_traced_feature_maps_are_the_official_table(name, table):
    """`fmap_dict` (hw.py:186-189): each layer's input size, in registration order."""
    from test_channels import network

    model, example = network(name)
    layers = flops_layers(model, example)
    assert len(layers) == len(table)
    for layer, size in zip(layers, table, strict=True):
        if layer.kernel == 1 and layer.positions == 1.0 and size == 1:
            continue  # a linear layer
        module = model.get_submodule(layer.name)
        side = (size - module.kernel_size[0] + 2 * module.padding[0]) / module.stride[0] + 1
        assert layer.positions == pytest.approx(side * side), layer.name


@pytest.mark.parametrize(("sparsity", "options"), [(0.5, {"initial_rate": 1.0}), (0.9, {})])
def test_harp_prunes_the_requested_sparsity_of_the_weights(tmp_path, sparsity, options):
    """The official 010_uni start (0.1 kept) fits targets of 90 % and more; below, the run is
    refused unless --initial-rate starts the rates at or above the target (issue 34, row 6)."""
    dense = train_tiny(tmp_path / "dense", model="lenet5-caffe")
    if options:
        with pytest.raises(ConfigError, match="--initial-rate"):
            prune_tiny(dense, tmp_path / "refused", "harp", sparsity=sparsity, score_epochs=1)
        assert not (tmp_path / "refused").exists()
    model = prune_tiny(
        dense, tmp_path / "harp", "harp", sparsity=sparsity, score_epochs=2, finetune_epochs=1,
        **options,
    )  # fmt: skip
    weights = prunable_parameters(model, include_bias=False)
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros / sum(w.numel() for w in weights.values()) == pytest.approx(sparsity, abs=0.01)
