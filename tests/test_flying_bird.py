"""Flying Bird and Flying Bird+ (Chen et al., ICLR 2022), element by element against the official
sparselearning/core.py, igq.py and utils.py of VITA-Group/Sparsity-Win-Robust-Generalization."""

import math

import pytest
import torch
from torch import nn

from advprune.masks import WeightMasks
from advprune.methods.flyingbird import (
    AdaptiveTopologyTraining,
    FlyingBirdPlusSettings,
    FlyingBirdSettings,
    TopologyTraining,
    igq_masks,
)
from advprune.methods.flyingbird_topology import (
    adaptive_decisions,
    death_rate,
    gradient_growth,
    igq_sparsities,
    magnitude_death,
    random_growth,
    random_masks,
    rising_fraction,
    update_interval,
)
from advprune.training.method import StepContext
from advprune.training.objectives import ObjectiveOutput

# ------------------------------------------------------------- where the sparsity is allocated


def test_igq_keeps_one_over_one_plus_f_n_per_layer_at_the_overall_target():
    sizes = [1_728, 36_864, 73_728, 5_120]
    sparsities = igq_sparsities(sizes, 0.9)
    kept = sum(n * (1 - s) for n, s in zip(sizes, sparsities, strict=True))
    assert abs(1 - kept / sum(sizes) - 0.9) < 1 / sum(sizes)
    # one force f for every layer: density_l = 1 / (1 + f·n_l)
    forces = [(1 / (1 - s) - 1) / n for n, s in zip(sizes, sparsities, strict=True)]
    assert max(forces) == pytest.approx(min(forces), rel=1e-9)
    layers = range(len(sizes))  # larger layers are pruned more
    assert sorted(layers, key=sizes.__getitem__) == sorted(layers, key=sparsities.__getitem__)


def test_initial_masks_have_int_s_n_zeros_per_layer_at_random_positions():
    sparsities = [0.5, 0.9]
    shapes = {"a": torch.Size([7, 3]), "b": torch.Size([4, 2, 3, 3])}
    masks = random_masks(shapes, sparsities, torch.Generator().manual_seed(0))
    assert int((~masks["a"]).sum()) == int(0.5 * 21)
    assert int((~masks["b"]).sum()) == int(0.9 * 72)
    other = random_masks(shapes, sparsities, torch.Generator().manual_seed(1))
    assert not torch.equal(masks["b"], other["b"])


# ----------------------------------------------------------- the update fraction and its decay


def test_death_rate_is_the_official_cosine_decay_stepped_once_per_optimiser_step():
    total = 50
    sgd = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    official = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, total, eta_min=0.005)
    assert death_rate(0, total) == pytest.approx(0.5)
    for step in range(1, total + 1):
        sgd.step()
        official.step()
        assert death_rate(step, total) == pytest.approx(sgd.param_groups[0]["lr"], abs=1e-9)
    assert death_rate(total, total) == pytest.approx(0.005)


def test_updates_every_900_steps_then_1200_after_half_the_epochs():
    assert update_interval(100, 200, 900, 1200, dynamic=True) == 900  # epoch > 200/2 only after
    assert update_interval(101, 200, 900, 1200, dynamic=True) == 1200
    assert update_interval(150, 200, 900, 1200, dynamic=False) == 900


# ---------------------------------------------------------------- which weights drop and grow


def test_magnitude_death_removes_ceil_rate_active_of_smallest_magnitude():
    weight = torch.tensor([0.0, 0.5, -0.1, 0.3, 0.0, -0.9, 0.2, 0.05])
    mask = weight != 0
    kept, removed = magnitude_death(weight, mask, rate=0.3)
    assert removed == math.ceil(0.3 * 6) == 2
    assert kept.tolist() == [False, True, False, True, False, True, True, False]
    dense = torch.ones(8, dtype=torch.bool)
    assert magnitude_death(torch.randn(8), dense, 0.5)[1] == 0  # a dense layer is left alone


def test_flying_bird_plus_prunes_ceil_rate_ratio_active_more_and_grows_back_the_regular_count():
    weight = torch.arange(1.0, 11.0)
    mask = torch.ones(10, dtype=torch.bool)
    mask[0] = False
    kept, removed = magnitude_death(weight * mask, mask, rate=0.5, extra=0.4)
    assert removed == math.ceil(0.5 * 9)
    assert int(kept.sum()) == 9 - removed - math.ceil(0.5 * 0.4 * 9)


def test_gradient_growth_switches_on_the_inactive_entries_of_largest_gradient():
    mask = torch.tensor([True, False, False, True, False, False])
    gradient = torch.tensor([9.0, 0.1, -3.0, 8.0, 2.0, -0.5])
    grown = gradient_growth(mask, 2, gradient)
    assert grown.tolist() == [True, False, True, True, True, False]
    more = gradient_growth(mask, 2, gradient, extra=0.5)  # int(2 · 1.5) = 3
    assert more.tolist() == [True, False, True, True, True, True]


def test_random_growth_switches_on_inactive_entries_only_count_in_expectation():
    mask = torch.zeros(20_000, dtype=torch.bool)
    mask[:5_000] = True
    grown = random_growth(mask, 3_000, torch.Generator().manual_seed(0))
    assert bool(grown[:5_000].all())
    new = int(grown.sum()) - 5_000
    assert abs(new - 3_000) < 4 * math.sqrt(3_000)  # Binomial(15,000, 0.2)
    more = int(random_growth(mask, 3_000, torch.Generator().manual_seed(0), extra=0.05).sum())
    assert abs(more - 5_000 - 3_150) < 4 * math.sqrt(3_150)


# --------------------------------------------------------------- Flying Bird+'s adaptive rule


def test_flying_bird_plus_decides_from_the_last_window_of_epochs():
    # gap = train robust acc − validation robust acc: rose in 3 of the last 4 changes
    gaps = [0.9, 0.1, 0.2, 0.3, 0.25, 0.4]
    losses = [2.0, 1.9, 1.8, 1.7, 1.6, 1.5]  # falling every epoch
    decision = adaptive_decisions(losses, gaps, window=4, threshold=0.5, active=True)
    assert decision.prune_more and not decision.grow_more
    assert rising_fraction(gaps, 4, strictly=True) == 0.75
    flat = [1.0, 1.0, 1.0]  # a loss that does not fall counts as rising (≥ 0)
    assert adaptive_decisions(flat, flat, window=4, threshold=0.5, active=True).grow_more
    assert not adaptive_decisions(flat, flat, window=4, threshold=0.5, active=True).prune_more
    assert not adaptive_decisions(losses, gaps, window=4, threshold=0.5, active=False).prune_more
    assert not adaptive_decisions([1.0], [1.0], window=4, threshold=0.5, active=True).grow_more


# ----------------------------------------------------- the updates inside training, in weights


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.fc = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _objective(model, x, y):
    logits = model(x)
    return ObjectiveOutput(nn.functional.cross_entropy(logits, y), logits)


def _train(method: TopologyTraining, model: nn.Module, steps: int, per_epoch: int, watch=None):
    """`steps` optimiser steps of `method` on random batches, `per_epoch` steps an epoch."""
    model = method.prepare(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for index in range(steps):
        x = torch.rand(16, 1, 8, 8, generator=generator)
        y = torch.randint(0, 10, (16,), generator=generator)
        epoch, step = divmod(index, per_epoch)
        context = StepContext(_objective, epoch, step, per_epoch, 0.05, 16 * per_epoch)
        before = dict(method.masks)
        method.step(model, x, y, optimizer, context)
        if watch is not None:
            watch(model, before, method, index + 1, optimizer)
    return model


def test_every_update_keeps_each_layers_count_of_nonzero_weights_and_grows_from_zero():
    torch.manual_seed(0)
    model = Net()
    masks = igq_masks(model, 0.8, seed=0)
    counts = {name: int(mask.sum()) for name, mask in masks.items()}
    settings = FlyingBirdSettings(growth="gradient", update_interval=4, second_update_interval=6)
    method = TopologyTraining(masks, {}, settings, epochs=3, seed=0)
    changed = []

    def watch(model, before, method, step, optimizer):
        weights = dict(model.named_parameters())
        updated = any(not torch.equal(before[n], method.masks[n]) for n in before)
        for name, mask in method.masks.items():
            assert int(mask.sum()) == counts[name]
            nonzero = int((weights[name] != 0).sum())
            # counted in the weights: right after an update the grown ones are still zero,
            # one step later they are not
            grown = int((mask & ~before[name]).sum()) if updated else 0
            assert nonzero == counts[name] - grown
        if updated:
            changed.append(step)

    _train(method, model, 30, 10, watch)
    # epochs 0 and 1 (steps 1-20) every 4 steps, epoch 2 (> 3/2) every 6: as utils.py:283-289
    assert changed == [4, 8, 12, 16, 20, 24, 30]
    assert method.masks.sparsity() == pytest.approx(1 - sum(counts.values()) / (72 + 2_880))


def test_a_grown_weight_starts_at_zero_with_no_momentum():
    torch.manual_seed(0)
    model = Net()
    settings = FlyingBirdSettings(growth="gradient", update_interval=5)
    method = TopologyTraining(igq_masks(model, 0.8, 0), {}, settings, epochs=1, seed=0)
    seen = []
    model = _train(method, model, 5, 5, lambda *args: seen.append((args[1], args[4])))
    before, optimizer = seen[-1]
    grown = {n: method.masks[n] & ~before[n] for n in method.masks}
    weights = dict(model.named_parameters())
    assert sum(int(g.sum()) for g in grown.values()) > 0
    for name, mask in grown.items():
        assert bool((weights[name][mask] == 0).all())
        assert bool((optimizer.state[weights[name]]["momentum_buffer"][mask] == 0).all())


def test_flying_bird_plus_update_lowers_the_density_when_the_gap_widens():
    torch.manual_seed(0)
    model = Net()
    masks = igq_masks(model, 0.5, seed=0)
    settings = FlyingBirdPlusSettings(growth="gradient", update_interval=10, adaptive_from=0.0)
    method = AdaptiveTopologyTraining(masks, {}, settings, None, 0.1, epochs=2, seed=0)
    method.gaps = [0.1, 0.2, 0.3, 0.4, 0.5]  # widening every epoch: prune 40 % more
    method.losses = [3.0, 2.0, 1.0, 0.5, 0.2]  # falling: no extra growth
    active = {name: int(mask.sum()) for name, mask in masks.items()}
    _train(method, model, 10, 10)
    rate = death_rate(10, 20)
    for name, mask in method.masks.items():
        assert int(mask.sum()) == active[name] - math.ceil(rate * 0.4 * active[name])


def test_topology_state_survives_a_checkpoint():
    torch.manual_seed(0)
    model = Net()
    settings = FlyingBirdSettings(update_interval=3)
    method = TopologyTraining(igq_masks(model, 0.8, 0), {}, settings, epochs=2, seed=0)
    _train(method, model, 4, 5)
    again = TopologyTraining(None, {}, settings, epochs=2, seed=0)
    again.load_state_dict(method.state_dict(), model)
    assert again.updates == method.updates == 1
    assert all(torch.equal(again.masks[n], method.masks[n]) for n in method.masks)
    assert torch.equal(again.generator.get_state(), method.generator.get_state())
    assert isinstance(again.masks, WeightMasks)


# ------------------------------------------------------------------------------ end to end

# LeNet-5-Caffe from initialization on 256 Fashion-MNIST images, batch 64 (4 steps an epoch),
# 2 epochs of PGD-1 with a topology update every 3 steps: updates after steps 3 and 6.
TINY = {
    "model": "lenet5-caffe",
    "dataset": "fashion-mnist",
    "eps": 0.1,
    "sparsity": 0.9,
    "limit_train": 256,
    "limit_test": 32,
    "monitor_examples": 0,
    "batch_size": 64,
    "finetune_epochs": 2,
    "finetune_attack_steps": 1,
    "update_interval": 3,
    "allow_chance": True,
}


# The evaluation of a reproduced step, as cheap as it gets: clean accuracy on 32 images.
CHEAP_EVALUATION = {
    "attacks": "clean",
    "limit_test": 32,
    "sanity_examples": 0,
    "indicator_examples": 0,
    "latency_repeats": 0,
}


def _check_sparse_run(run_dir, updates: int, sparsity: float = 0.9):
    from safetensors.torch import load_file

    from advprune.models.serialization import load_model

    final = load_file(run_dir / "model.safetensors")
    masks = load_file(run_dir / "masks.safetensors")
    assert all(bool((final[n][~m.bool()] == 0).all()) for n, m in masks.items())
    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert abs(1 - kept - sparsity) < 0.01  # random growth: the count in expectation
    metadata = load_model(run_dir / "model.safetensors")[1]["method"]
    assert metadata["updates"] == updates


def test_flying_bird_through_advprune_prune(tmp_path, capsys):
    from advprune.cli import main

    flags = [f"--{k.replace('_', '-')}" for k in TINY]
    values = [[] if v is True else [str(v)] for v in TINY.values()]
    args = [part for flag, value in zip(flags, values, strict=True) for part in (flag, *value)]
    run_dir = tmp_path / "fb"
    assert main(["--quiet", "prune", "--method", "flyingbird", *args, "--run-dir",
                 str(run_dir)]) == 0  # fmt: skip
    _check_sparse_run(run_dir, updates=2)
    capsys.readouterr()
    assert main(["prune", "--method", "flyingbird", "--scheme", "layerwise", "--run-dir",
                 str(tmp_path / "x")]) == 2  # fmt: skip
    assert "flyingbird allocates its own sparsity; drop --scheme" in capsys.readouterr().err


def test_flying_bird_plus_through_reproduce(tmp_path, monkeypatch):
    from advprune.reproduction import reproduce

    recipe = {
        "title": "tiny",
        "prune": {k: v for k, v in TINY.items() if k != "sparsity"},
        "evaluate": CHEAP_EVALUATION,
        "steps": [
            {
                "name": "fbp-90",
                "prune": {
                    "method": "flyingbird-plus",
                    "sparsity": 0.9,
                    "update_interval": 4,
                    "adaptive_from": 0.0,
                    "validation_steps": 1,
                },
            },
        ],
    }
    monkeypatch.setattr("advprune.reproduction.plan.load_recipe", lambda name: recipe)
    reproduce("tiny", tmp_path, progress=False, log=lambda _: None)
    # 26 of the 256 images held out for the statistics: 3 steps an epoch, 6 in all, so one
    # update every 4 steps (8 steps, two updates, had it trained on all 256)
    _check_sparse_run(tmp_path / "fbp-90", updates=1, sparsity=0.9)


def test_flying_bird_plus_through_the_python_api_on_a_network_of_ones_own(fashion_slice):
    import advprune

    train = fashion_slice("train", 256)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    pruned = advprune.prune(
        model, (train.images.float() / 255, train.labels), method="flyingbird-plus",
        sparsity=0.8, eps=0.1, batch_size=32, finetune_epochs=2, finetune_attack_steps=1,
        update_interval=2, growth="gradient", validation_steps=1, allow_chance=True,
    )  # fmt: skip
    weights = [pruned[1].weight, pruned[3].weight]
    total = sum(w.numel() for w in weights)
    assert sum(int((w == 0).sum()) for w in weights) >= round(0.8 * total) - 1
