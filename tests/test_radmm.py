"""RADMM (Ye et al., ICCV 2019): each ADMM element on hand-made tensors, the defaults the official
CIFAR-10 config's, and the method end to end on a small network of the user's own."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import advprune
from advprune.masks.channels import channel_groups
from advprune.methods import get_method
from advprune.methods.radmm import (
    ADMMTraining,
    admm_learning_rate,
    admm_loss,
    dual_update,
    project_channels,
    project_weights,
    rho_at,
)
from advprune.training.method import StepContext
from conftest import SmallCNN


def test_the_projection_keeps_exactly_the_k_largest_magnitudes_of_a_layer():
    w = torch.tensor([[0.5, -3.0, 1.0], [2.0, -0.1, 4.0]])
    assert torch.equal(project_weights(w, 0.5), torch.tensor([[0.0, -3.0, 0.0], [2.0, 0.0, 4.0]]))
    big = torch.randn(40, 25, generator=torch.Generator().manual_seed(0))
    z = project_weights(big, 0.9)
    kept = z != 0
    assert int(kept.sum()) == 100  # n − round(0.9 · 1000)
    assert big.abs()[kept].min() > big.abs()[~kept].max()
    assert torch.equal(z[kept], big[kept])  # kept entries are W's own, not rescaled


def test_the_filter_projection_keeps_each_groups_filters_of_largest_l2_norm():
    # Filters of L2 norm 3, 2, 2.5, 1 and L1 norm 3, 4, 2.5, 2: L2 keeps 0 and 2 (L1: 0, 1).
    net = nn.Sequential(nn.Conv2d(1, 4, 2, bias=False), nn.Flatten(), nn.Linear(4, 3))
    groups = channel_groups(net, torch.zeros(1, 1, 2, 2))
    filters = torch.tensor([[3.0, 0, 0, 0], [1, 1, 1, 1], [2.5, 0, 0, 0], [0.5, 0.5, 0.5, 0.5]])
    tensors = {"0.weight": filters.reshape(4, 1, 2, 2), "2.weight": torch.ones(3, 4)}
    z = project_channels(tensors, groups, 0.5)
    assert [bool(z["0.weight"][c].any()) for c in range(4)] == [True, False, True, False]
    assert torch.equal(z["0.weight"][0], tensors["0.weight"][0])
    assert torch.equal(z["2.weight"], tensors["2.weight"])  # the readers are not constrained


def test_the_dual_update_adds_the_constraint_violation():
    w, z, u = (
        torch.tensor([1.0, -2.0, 3.0]),
        torch.tensor([1.0, 0.0, 3.0]),
        torch.tensor([0.5, 1, 0]),
    )
    assert torch.equal(dual_update(w, z, u), torch.tensor([0.5, -1.0, 0.0]))


def test_z_and_u_start_from_the_projection_and_follow_the_official_update_order():
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[4.0, -1.0, 0.5, -3.0]]))
    admm = ADMMTraining(0.5, rho=1.0, rho_growth=1.3, update_every=2)
    admm.prepare(model)
    admm.update(0)  # Z = Π(W), U = 0
    assert torch.equal(admm.z["0.weight"], torch.tensor([[4.0, 0.0, 0.0, -3.0]]))
    assert torch.equal(admm.u["0.weight"], torch.zeros(1, 4))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.5, -3.0]]))
    admm.update(1)  # Z ← Π(W + U) = Π(W); U ← U + W − Z
    assert torch.equal(admm.z["0.weight"], torch.tensor([[0.0, -2.0, 0.0, -3.0]]))
    assert torch.equal(admm.u["0.weight"], torch.tensor([[1.0, 0.0, 0.5, 0.0]]))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0, 0.0, -3.0]]))
    admm.update(2)  # W + U = [2, −1, 0.5, −3]: Z keeps 2 and −3
    assert torch.equal(admm.z["0.weight"], torch.tensor([[2.0, 0.0, 0.0, -3.0]]))
    assert torch.equal(admm.u["0.weight"], torch.tensor([[0.0, -1.0, 0.5, 0.0]]))


def test_rho_grows_by_its_factor_at_each_update_and_the_rate_restarts_each_cycle():
    assert [rho_at(1e-3, 1.3, c) for c in range(3)] == pytest.approx([1e-3, 1.3e-3, 1.69e-3])
    rates = [admm_learning_rate(0.01, epoch, 20) for epoch in range(40)]
    cycle = [0.01] * 7 + [0.001] * 7 + [0.0001] * 6  # (e mod 20) // (20 / 3)
    assert rates == pytest.approx(cycle + cycle)


def test_the_admm_term_is_half_rho_times_the_squared_distance_and_is_added_to_the_loss():
    w = {"a": torch.tensor([1.0, 2.0], requires_grad=True)}
    z, u = {"a": torch.tensor([1.0, 0.0])}, {"a": torch.tensor([0.5, 0.0])}
    term = admm_loss(w, z, u, rho=2.0)
    assert term.item() == pytest.approx(0.5 * 2.0 * (0.5**2 + 2.0**2))
    term.backward()
    assert torch.allclose(w["a"].grad, 2.0 * (w["a"] - z["a"] + u["a"]).detach())

    model = nn.Sequential(nn.Linear(2, 1, bias=False))
    admm = ADMMTraining(0.5, rho=2.0, rho_growth=1.3, update_every=1)
    admm.prepare(model)
    for epoch, rho in ((0, 2.0), (1, 2.6)):  # the step adds it to the objective's loss
        term = admm.loss_term(model, StepContext(None, epoch, 0, 1, 0.1, 1))
        distance = model[0].weight - admm.z["0.weight"] + admm.u["0.weight"]
        assert term.item() == pytest.approx(0.5 * rho * distance.pow(2).sum().item())
    assert admm.cycle == 1


def test_the_defaults_are_the_official_cifar10_config():
    radmm = get_method("radmm")
    settings = radmm.Settings()
    official = dict(objective="pgd-at", optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4)
    admm = {k: v for k, v in settings.score.to_dict().items() if v is not None}
    assert admm == {**official, "epochs": 200, "schedule": "constant"}
    retrain = {k: v for k, v in settings.finetune.to_dict().items() if v is not None}
    assert retrain == {**official, "epochs": 200, "schedule": "step", "milestones": [0.4, 0.75],
                       "gamma": 0.1}  # fmt: skip
    assert (settings.update_every, settings.rho, settings.rho_growth) == (20, 1e-3, 1.3)
    assert radmm.default_scheme == "layerwise" and radmm.structures == ("weights", "channels")


def test_the_hard_prune_keeps_the_k_largest_weights_of_each_layer(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    admm = ADMMTraining(0.75, rho=1e-3, rho_growth=1.3, update_every=1)
    admm.prepare(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    admm.finish(model, tmp_path)
    for name in ("0.weight", "2.weight"):
        kept = model.state_dict()[name] != 0
        assert int(kept.sum()) == before[name].numel() - round(0.75 * before[name].numel())
        assert before[name].abs()[kept].min() > before[name].abs()[~kept].max()
    assert torch.equal(model[0].bias, before["0.bias"])  # biases are not pruned
    assert (tmp_path / "masks.safetensors").exists()


@pytest.mark.parametrize("structure", ["weights", "channels"])
def test_radmm_prunes_a_network_of_the_users_own(tiny_data, structure, tmp_path):
    torch.manual_seed(0)
    model = SmallCNN()
    pruned = advprune.prune(
        model, tiny_data, method="radmm", eps=0.1, sparsity=0.5, structure=structure,
        score_epochs=2, update_every=1, finetune_epochs=1, attack_steps=1, batch_size=64,
        allow_chance=True, cache_dir=str(tmp_path), run_dir=tmp_path / "run",
    )  # fmt: skip
    assert type(pruned) is SmallCNN
    weights = {n: m.weight for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d)}
    if structure == "weights":
        for name, w in weights.items():
            assert (w == 0).float().mean().item() == pytest.approx(0.5, abs=0.01), name
    else:
        filters = weights["features.0"].flatten(1).abs().sum(1)
        assert int((filters == 0).sum()) == 4
        small = advprune.export(pruned)
        assert sum(p.numel() for p in small.parameters()) < sum(
            p.numel() for p in pruned.parameters()
        )
        x = tiny_data[0][:32]
        with torch.no_grad():
            assert (small(x) - pruned.eval()(x)).abs().max() < 1e-4
    assert (tmp_path / "run" / "scores" / "masks.safetensors").exists()


def test_z_u_and_the_cycle_come_back_with_a_checkpoint():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4, bias=False), nn.ReLU(), nn.Linear(4, 2))
    admm = ADMMTraining(0.5, rho=1e-3, rho_growth=1.3, update_every=1)
    admm.prepare(model)
    admm.update(0)
    with torch.no_grad():
        model[0].weight.add_(0.1)
    admm.update(1)
    resumed = ADMMTraining(0.5, rho=1e-3, rho_growth=1.3, update_every=1)
    resumed.prepare(model)
    resumed.load_state_dict(admm.state_dict(), model)
    assert resumed.cycle == 1 and resumed.current_rho() == admm.current_rho()
    for name in admm.z:
        assert torch.equal(resumed.z[name], admm.z[name])
        assert torch.equal(resumed.u[name], admm.u[name])


def test_settings_radmm_does_not_have_are_refused_before_anything_runs():
    from advprune.core.errors import ConfigError
    from advprune.methods import PruneSettings, create_method

    radmm = create_method("radmm")
    with pytest.raises(ConfigError, match="RADMM prunes layer-wise"):
        radmm.check(PruneSettings(scheme="global"))
    with pytest.raises(ConfigError, match="drop --order and --include-bias"):
        radmm.check(PruneSettings(order="random"))
    with pytest.raises(ConfigError, match="update_every must be"):
        create_method("radmm", {"update_every": 0})
