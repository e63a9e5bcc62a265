"""TwinRep (Li et al., AAAI 2023): the reparameterisation, its implicit sparsity term, the mask
read-out on hand-made factors (twin and channel), the schedule, the defaults the official
train.py's, and the method end to end on a small network of the user's own."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import advprune
from advprune.masks.channels import channel_groups
from advprune.methods import get_method
from advprune.methods.twinrep import (
    CHANNEL,
    TWIN,
    TwinTraining,
    channel_keep,
    effective_weight,
    initial_factor,
    twin_masks,
    twin_penalty,
)
from advprune.training.method import StepContext
from conftest import SmallCNN


def test_each_weight_is_the_product_of_its_factors():
    u, v = torch.tensor([[2.0, -1.0]]), torch.tensor([[0.5, 3.0]])
    assert torch.equal(effective_weight(u, v, TWIN), torch.tensor([[1.0, -3.0]]))
    w = torch.arange(8.0).view(2, 1, 2, 2)
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # A · W': filter p = Σ_q A[p, q] · filter q
    assert torch.equal(effective_weight(w, swap, CHANNEL), w.flip(0))
    mix = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    assert torch.equal(effective_weight(w, mix, CHANNEL)[0], w[0] + 2 * w[1])


def test_the_second_factor_starts_as_the_official_layers_draw_it():
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3)
    factor = initial_factor(w, TWIN)
    assert factor.shape == w.shape
    assert factor.abs().max() <= 1 / 27**0.5  # kaiming_uniform_(a=√5): U(±1/√fan_in)
    assert factor.abs().max() > 0.9 / 27**0.5  # and not a narrower law
    channel = initial_factor(w, CHANNEL)
    assert channel.shape == (6, 6) and channel.abs().max() <= 1 / 6**0.5


def test_the_factors_are_not_the_weights_a_seeded_network_started_with():
    torch.manual_seed(0)  # as the trainer seeds before it builds the network
    net = small_net()
    twin = TwinTraining(0.5, prune_epoch=1, seed=0)
    twin.prepare(net)
    for name, weight in net.named_parameters():
        if name in twin.factors:
            assert not torch.allclose(twin.factors[name], weight.detach()), name


def test_weight_decay_on_both_factors_is_an_l1_penalty_on_their_product():
    generator = torch.Generator().manual_seed(1)
    u, v = torch.randn(50, generator=generator), torch.randn(50, generator=generator)
    l1 = 2e-4 * (u * v).abs().sum()
    assert twin_penalty(u, v, 2e-4) >= l1
    balanced = (u * v).abs().sqrt()
    assert twin_penalty(balanced * (u * v).sign(), balanced, 2e-4) == pytest.approx(l1.item())


def test_the_mask_is_read_from_the_products_over_all_layers_together():
    u = {
        "a.weight": torch.tensor([4.0, 1.0, 2.0, 0.5]),
        "b.weight": torch.tensor([0.1, 0.2, 0.3, 0.35]),
    }
    v = {"a.weight": torch.tensor([0.1, 3.0, 1.0, 8.0]), "b.weight": torch.ones(4)}
    products = {n: effective_weight(u[n], v[n], TWIN) for n in u}  # a: .4 3 2 4, b: .1 .2 .3 .35
    masks = twin_masks(products, 0.5)
    # global: the four smallest |u ⊙ v| are all of b; by |u| alone a would lose 1 and 0.5
    assert masks["a.weight"].tolist() == [True, True, True, True]
    assert masks["b.weight"].tolist() == [False, False, False, False]
    masks = twin_masks(products, 0.75)
    assert masks["a.weight"].tolist() == [False, True, False, True]


def test_the_channel_mask_keeps_the_filters_of_largest_norm_of_a_times_w():
    net = nn.Sequential(
        nn.Conv2d(1, 4, 2, bias=False), nn.Flatten(), nn.Linear(4, 4, bias=False), nn.Linear(4, 3)
    )  # fmt: skip
    groups = channel_groups(net, torch.zeros(1, 1, 2, 2))
    w = torch.tensor([[3.0, 0, 0, 0], [1, 1, 1, 1], [2.5, 0, 0, 0], [0.5, 0.5, 0.5, 0.5]])
    a = torch.eye(4)[[3, 2, 1, 0]]  # A reverses the filters: L2 norms become 1, 2.5, 2, 3
    effective = {
        "0.weight": effective_weight(w.view(4, 1, 2, 2), a, CHANNEL),
        "2.weight": torch.diag(torch.tensor([0.1, 0.2, 0.3, 0.4])),
    }
    keep = channel_keep(effective, groups, 0.5)
    # one threshold over both groups: the four smallest norms are fc1's, which keeps one unit
    assert keep["0"].tolist() == [True, True, True, True]
    assert keep["2"].tolist() == [False, False, False, True]
    keep = channel_keep(effective, groups, 0.3)  # 2 of 8: fc1's two smallest
    assert keep["0"].all() and keep["2"].tolist() == [False, False, True, True]
    conv_only = {"0.weight": effective["0.weight"]}
    keep = channel_keep(conv_only, [g for g in groups if g.name == "0"], 0.5)
    assert keep["0"].tolist() == [False, True, False, True]  # by W' alone: 0 and 2


def small_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3),
    )  # fmt: skip


def context(epoch: int) -> StepContext:
    return StepContext(None, epoch, 0, 1, 0.1, 1)


@pytest.mark.parametrize("structure", ["weights", "channels"])
def test_the_mask_is_read_at_the_start_of_the_pruning_epoch_and_folded_at_the_end(
    structure, tmp_path
):
    torch.manual_seed(0)
    net = small_net().eval()
    x = torch.rand(5, 1, 6, 6)
    groups = channel_groups(net, x[:1]) if structure == "channels" else None
    twin = TwinTraining(0.5, prune_epoch=3, groups=groups)
    network = twin.prepare(net)
    factors = set(twin.factors)
    assert factors == {"0.weight", "5.weight", "7.weight"}
    assert {id(p) for p in twin.weight_parameters(network)} >= {
        id(f) for f in twin.factors.values()
    }
    twin.batch_context(context(1))  # 1-based epoch 2: not yet
    assert not network.masks
    twin.batch_context(context(2))  # epoch 3: the mask is read
    assert network.masks
    effective = network.effective_weights()
    with torch.no_grad():
        trained = network(x)
        pruned = {n: effective[n] * network.masks[n] for n in factors}
    twin.finish(network, tmp_path)
    folded = dict(net.named_parameters())
    for name in factors:
        assert torch.allclose(folded[name], pruned[name])
    with torch.no_grad():
        assert torch.allclose(net(x), trained, atol=1e-6)  # the plain network computes the same
    if structure == "weights":  # the products of largest |u ⊙ v| over all layers are kept
        zeros = sum(int((folded[n] == 0).sum()) for n in factors)
        assert zeros == round(0.5 * sum(folded[n].numel() for n in factors))
        kept = torch.cat([effective[n].abs()[network.masks[n].bool()] for n in factors])
        dropped = torch.cat([effective[n].abs()[~network.masks[n].bool()] for n in factors])
        assert kept.min() > dropped.max()


def test_the_defaults_are_the_official_train_py():
    twinrep = get_method("twinrep")
    settings = twinrep.Settings()
    phase = {k: v for k, v in settings.finetune.to_dict().items() if v is not None}
    assert phase == dict(
        objective="pgd-at", epochs=100, attack_steps=10, optimizer="sgd", lr=0.1, momentum=0.9,
        weight_decay=2e-4, schedule="step", milestones=[0.69, 0.84], gamma=0.1,
    )  # fmt: skip
    assert settings.prune_epoch == 10 and twinrep.starts_from_initialization


@pytest.mark.parametrize("structure", ["weights", "channels"])
def test_twinrep_prunes_a_network_of_the_users_own(tiny_data, structure, tmp_path):
    torch.manual_seed(0)
    model = SmallCNN()
    pruned = advprune.prune(
        model, tiny_data, method="twinrep", eps=0.1, sparsity=0.5, structure=structure,
        prune_epoch=2, finetune_epochs=2, attack_steps=1, batch_size=64,
        allow_chance=True, cache_dir=str(tmp_path), run_dir=tmp_path / "run",
    )  # fmt: skip
    assert type(pruned) is SmallCNN
    weights = [m.weight for m in pruned.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    if structure == "weights":
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        assert zeros == pytest.approx(0.5, abs=0.01)
    else:
        small = advprune.export(pruned)
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        assert count(small) < count(pruned)
        x = tiny_data[0][:32]
        with torch.no_grad():
            assert (small(x) - pruned.eval()(x)).abs().max() < 1e-4
    assert (tmp_path / "run" / "masks.safetensors").exists()


def test_the_factors_and_a_read_mask_come_back_with_a_checkpoint():
    torch.manual_seed(0)
    twin = TwinTraining(0.5, prune_epoch=1)
    network = twin.prepare(small_net())
    twin.batch_context(context(0))
    state = twin.state_dict()
    resumed = TwinTraining(0.5, prune_epoch=1, seed=1)
    again = resumed.prepare(small_net())
    resumed.load_state_dict(state, again)
    for name, factor in twin.factors.items():
        assert torch.equal(resumed.factors[name], factor)
        assert torch.equal(again.masks[name], network.masks[name])


def test_settings_twinrep_does_not_have_are_refused_before_anything_runs():
    from advprune.core.errors import ConfigError
    from advprune.methods import PruneSettings, create_method

    twinrep = create_method("twinrep")
    with pytest.raises(ConfigError, match="twinrep ranks every layer's weights together; drop"):
        twinrep.check(PruneSettings(scheme="layerwise"))
    with pytest.raises(ConfigError, match="prune_epoch is 1-based"):
        create_method("twinrep", {"prune_epoch": 0})
    twinrep.check(PruneSettings(structure="channels", sparsity=0.5))  # both structures published
