"""HARP: learnt rates with their floor, straight-through top-k to scores and rates, the
compression loss and its γ schedule, the exact counts, and a tiny run end to end."""

import math

import pytest
import torch
from torch import nn

from advprune.core.errors import ConfigError
from advprune.core.tensor_files import load_tensors, read_metadata
from advprune.masks import WeightMasks, prunable_parameters
from advprune.masks.channels import channel_groups, layer_macs
from advprune.methods import PruneSettings, create_method
from advprune.methods.harp import (
    CompressionRate,
    HarpTraining,
    kept_rate,
    pruned_entries,
    rate_logit,
    scaled_to_target,
)
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
    flops = CompressionRate.of_channels(layer_macs(cnn, example), groups)
    assert float(flops(lambda _: 1.0)) == pytest.approx(1.0)
    half = float(flops(lambda _: 0.5))  # conv2 and fc1 read and write pruned groups: ×¼
    assert 0.25 < half < 0.5
    assert float(flops.loss(lambda _: 0.5, 0.5)) == 0
    assert float(flops.loss(lambda _: 1.0, 0.5)) == pytest.approx(1 / half - 1)


def test_gamma_grows_per_epoch_until_the_target_is_reached_then_stays():
    method = prepared(lenet())
    assert [method.current_gamma(e) for e in range(3)] == pytest.approx([0.01, 0.02, 0.03])
    method.end_epoch(1)  # far above the target: nothing frozen
    assert method.frozen_gamma is None
    with torch.no_grad():
        for rate_score in method.rate_scores.values():
            rate_score.fill_(-50.0)
    method.end_epoch(2)
    assert method.frozen_gamma == pytest.approx(0.03)
    assert method.current_gamma(10) == pytest.approx(0.03)
    assert [h["epoch"] for h in method.history] == [2, 3]


def test_rates_short_of_the_target_are_scaled_to_it_keeping_their_ratios():
    rates = {"a": 0.4, "b": 0.1}
    compression = CompressionRate({"a": 100.0, "b": 300.0}, [])
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
    with pytest.raises(ConfigError, match="not above their floor"):  # log(0) in the official code
        harp.check(PruneSettings(method="harp", sparsity=0.0))


def test_the_suite_compares_harp_and_hydra_at_99_on_the_same_budget(tmp_path):
    plan = make_plan("fashion-mnist-suite", tmp_path, only=["harp-99", "hydra-99"])
    steps = {step.name: step for step in plan.steps}
    harp, hydra = steps["harp-99"], steps["hydra-99"]
    for key in ("from_run", "sparsity", "score_epochs", "finetune_epochs", "limit_train"):
        assert harp.setting(key) == hydra.setting(key), key
