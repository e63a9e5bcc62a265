"""The Python API on a network advprune does not know: a small CNN with a residual block and
BatchNorm, data as float tensors, every method through `advprune.prune`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import advprune
from advprune.core.errors import DataError
from advprune.masks.gated import find_gates
from advprune.models.serialization import load_model


class ResidualCNN(nn.Module):
    """conv-BN-ReLU, a residual block (two convs added to their input), pooling, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.BatchNorm2d(16),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(x)
        return self.head(torch.relu(out + self.block(out)))


EPS = 0.1
FAST = {"attack_steps": 2, "optimizer": "adam", "lr": 1e-3, "batch_size": 64}


@pytest.fixture(scope="module")
def data(fashion_slice_module):
    train = fashion_slice_module("train", 1024)
    test = fashion_slice_module("test", 256)
    as_floats = lambda split: (split.images.float() / 255, split.labels)  # noqa: E731
    return as_floats(train), as_floats(test)


@pytest.fixture(scope="module")
def fashion_slice_module():
    from advprune.data import load_dataset

    return lambda split, limit: load_dataset("fashion-mnist", split, limit=limit)


@pytest.fixture(scope="module")
def robust(data):
    torch.manual_seed(0)
    model = ResidualCNN()
    return advprune.adversarial_train(model, data[0], eps=EPS, epochs=2, **FAST)


def test_adversarial_training_returns_the_users_class_trained(robust, data):
    assert type(robust) is ResidualCNN
    results = advprune.evaluate(robust, data[1], eps=EPS, attacks=["clean", "pgd"])
    assert results["accuracy"]["clean"] > 0.25  # learnt: chance is 0.1
    assert results["accuracy"]["pgd"] < results["accuracy"]["clean"]


@pytest.mark.parametrize(
    ("method", "settings"),
    [
        ("magnitude", {"sparsity": 0.8}),
        ("mad", {"sparsity": 0.5, "mask_steps": 2, "saliency_fraction": 0.25}),
        ("hydra", {"sparsity": 0.8, "score_epochs": 1}),
    ],
)
def test_scored_methods_prune_the_users_network(robust, data, method, settings, tmp_path):
    pruned = advprune.prune(
        robust,
        data[0],
        method=method,
        eps=EPS,
        finetune_epochs=1,
        allow_chance=True,
        cache_dir=str(tmp_path),
        **{**FAST, **settings},
    )
    assert type(pruned) is ResidualCNN
    weights = [m.weight for m in pruned.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(settings["sparsity"], abs=0.02)
    original = dict(robust.named_parameters())
    assert any(not torch.equal(p, original[n]) for n, p in pruned.named_parameters())


def test_anpvs_prunes_units_and_exports_a_smaller_network_with_the_same_outputs(
    robust, data, tmp_path
):
    pruned = advprune.prune(
        robust,
        data[0],
        method="anpvs",
        eps=EPS,
        run_dir=tmp_path / "anpvs",
        finetune_epochs=2,
        finetune_batch_size=64,
        finetune_attack_steps=2,
        beta=2.0,
        gate_lr=0.5,
        conv_gate_init=1.0,
        dense_gate_init=1.0,
        allow_chance=True,  # what is checked is the export, not how well 32 steps prune
    )
    assert type(pruned) is ResidualCNN and not find_gates(pruned)
    small = advprune.export(pruned)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(small) < count(pruned)
    gated, _ = load_model(tmp_path / "anpvs" / "model.safetensors")
    assert find_gates(gated)
    x = data[1][0][:64]
    with torch.no_grad():
        assert (small(x) - gated(x)).abs().max() < 1e-4
        assert (pruned(x) - gated(x)).abs().max() < 1e-4


def test_data_the_api_cannot_read_is_a_clear_error(robust):
    with pytest.raises(DataError, match=r"float images must be in \[0, 1\]"):
        advprune.evaluate(robust, (torch.rand(8, 1, 28, 28) * 255, torch.zeros(8)), eps=EPS)
    with pytest.raises(DataError, match="pass \\(images, labels\\) tensors"):
        advprune.evaluate(robust, 42, eps=EPS)
