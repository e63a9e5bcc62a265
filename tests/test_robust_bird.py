"""Robust Bird (Chen et al., ICLR 2022), element by element against the official
Robust-Bird/train_eb.py and Robust-Bird/utils/early_bird.py of
VITA-Group/Sparsity-Win-Robust-Generalization."""

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from advprune.core.errors import ConfigError
from advprune.methods.robustbird import (
    EarlyBirdSearch,
    early_bird_emerged,
    early_bird_mask,
    mask_distance,
)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 2, bias=False)
        self.fc = nn.Linear(4, 2, bias=False)


def _net(conv: list[float], fc: list[float]) -> Net:
    net = Net()
    with torch.no_grad():
        net.conv.weight.copy_(torch.tensor(conv).view(2, 1, 2, 2))
        net.fc.weight.copy_(torch.tensor(fc).view(2, 4))
    return net


def test_the_early_bird_mask_ranks_conv_weights_only_by_global_magnitude():
    net = _net([0.1, -0.8, 0.3, 0.0, -0.5, 0.2, 0.7, -0.05], [9.0] * 4 + [-9.0] * 4)
    # 8 conv weights at 50 %: above the sorted magnitude at index int(8 · 0.5) = 4 (0.3)
    mask = early_bird_mask(net, 0.5)
    assert mask.tolist() == [False, True, False, False, True, False, True, False]
    with pytest.raises(ConfigError, match="no Conv2d"):
        early_bird_mask(nn.Linear(3, 2), 0.5)


def test_mask_distance_is_the_fraction_of_entries_that_differ():
    a = torch.tensor([True, True, False, False])
    assert mask_distance(a, torch.tensor([True, False, False, True])) == 0.5
    assert mask_distance(a, a) == 0.0


def _masks(*flips: int, size: int = 100) -> list[torch.Tensor]:
    """A mask per epoch, each differing from the last one (the newest) in `flips` entries."""
    newest = torch.zeros(size, dtype=torch.bool)
    masks = []
    for flip in flips:
        mask = newest.clone()
        mask[:flip] = True
        masks.append(mask)
    return [*masks, newest]


def test_the_ticket_emerges_when_the_newest_mask_is_within_0_08_of_the_four_before():
    assert early_bird_emerged(_masks(8, 2, 5, 0), window=5, tolerance=0.08)
    assert not early_bird_emerged(_masks(9, 2, 5, 0), window=5, tolerance=0.08)  # 0.09 > 0.08
    assert not early_bird_emerged(_masks(2, 5, 0), window=5, tolerance=0.08)  # four masks only
    # only the last five count, and distances are to the newest only
    assert early_bird_emerged(_masks(50, 8, 2, 5, 0), window=5, tolerance=0.08)


def test_the_search_stops_training_at_the_epoch_the_ticket_emerges():
    search = EarlyBirdSearch(0.5, window=3, tolerance=0.0, ticket_masks=None)
    net = _net([0.1, -0.8, 0.3, 0.0, -0.5, 0.2, 0.7, -0.05], [1.0] * 8)
    for epoch in (1, 2):
        search.epoch_ended(net, {"epoch": epoch})
        assert not search.complete
    search.epoch_ended(net, {"epoch": 3})
    assert search.complete and search.metadata() == {"early_bird_epoch": 3}
    again = EarlyBirdSearch(0.5, window=3, tolerance=0.0, ticket_masks=None)
    again.load_state_dict(search.state_dict(), net)
    assert again.complete and len(again.masks) == 3


# ------------------------------------------------------------------------------ end to end

# LeNet-5-Caffe on 256 Fashion-MNIST images: the ticket phase stops once two masks are in
# (window 2, tolerance 1), then one epoch of PGD-1 at a learning rate that leaves the weights
# where the ticket put them.
TINY = {
    "model": "lenet5-caffe",
    "dataset": "fashion-mnist",
    "eps": 0.1,
    "sparsity": 0.9,
    "limit_train": 256,
    "limit_test": 32,
    "monitor_examples": 0,
    "batch_size": 64,
    "ticket_epochs": 4,
    "window": 2,
    "tolerance": 1.0,
    "finetune_epochs": 1,
    "finetune_attack_steps": 1,
    "finetune_lr": 1e-9,
    "allow_chance": True,
}


def _flags(settings: dict) -> list[str]:
    """Command-line flags for flat settings (True: a bare flag)."""
    flags = []
    for key, value in settings.items():
        flags += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return flags


# The evaluation of a reproduced step, as cheap as it gets: clean accuracy on 32 images.
CHEAP_EVALUATION = {
    "attacks": "clean",
    "limit_test": 32,
    "sanity_examples": 0,
    "indicator_examples": 0,
    "latency_repeats": 0,
}


def _check_ticket_run(run_dir):
    """The ticket stopped at the emergence; the network was pruned globally by magnitude over
    its conv and linear weights and adversarially trained from the ticket's weights as they were
    (train_eb.py:183-195: no rewinding)."""
    assert len((run_dir / "ticket" / "metrics.jsonl").read_text().splitlines()) == 2
    ticket = load_file(run_dir / "ticket" / "model.safetensors")
    final = load_file(run_dir / "model.safetensors")
    masks = load_file(run_dir / "masks.safetensors")
    total = sum(m.numel() for m in masks.values())
    assert sum(int((m == 0).sum()) for m in masks.values()) == round(0.9 * total)
    kept = torch.cat([ticket[n][m.bool()].abs() for n, m in masks.items()])
    pruned = torch.cat([ticket[n][~m.bool()].abs() for n, m in masks.items()])
    assert kept.min() >= pruned.max()
    for name, mask in masks.items():
        torch.testing.assert_close(final[name], ticket[name] * mask, atol=1e-6, rtol=0)


def test_robust_bird_through_advprune_prune(tmp_path, capsys):
    from advprune.cli import main

    run_dir = tmp_path / "rb"
    assert main(["--quiet", "prune", "--method", "robustbird", *_flags(TINY), "--run-dir",
                 str(run_dir)]) == 0  # fmt: skip
    _check_ticket_run(run_dir)
    capsys.readouterr()
    assert main(["prune", "--method", "robustbird", "--from", str(run_dir), "--run-dir",
                 str(tmp_path / "x")]) == 2  # fmt: skip
    assert "trains from initialization, not from a trained run" in capsys.readouterr().err
    assert main(["prune", "--method", "magnitude", "--model", "lenet5-caffe", "--run-dir",
                 str(tmp_path / "y")]) == 2  # fmt: skip
    assert "pass --from RUN_DIR and drop --model" in capsys.readouterr().err


def test_robust_bird_through_reproduce(tmp_path, monkeypatch):
    from advprune.reproduction import reproduce

    recipe = {
        "title": "tiny",
        "prune": {k: v for k, v in TINY.items() if k != "sparsity"},
        "evaluate": CHEAP_EVALUATION,
        "steps": [{"name": "rb-90", "prune": {"method": "robustbird", "sparsity": 0.9}}],
    }
    monkeypatch.setattr("advprune.reproduction.plan.load_recipe", lambda name: recipe)
    plan = reproduce("tiny", tmp_path, progress=False, log=lambda _: None)
    assert [step.describe() for step in plan.steps] == [
        "prune with robustbird to 90% (from initialization)"
    ]
    _check_ticket_run(tmp_path / "rb-90")


def test_robust_bird_through_the_python_api_on_a_network_of_ones_own(fashion_slice):
    import advprune

    train = fashion_slice("train", 256)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)
    )
    pruned = advprune.prune(
        model, (train.images.float() / 255, train.labels), method="robustbird", sparsity=0.9,
        eps=0.1, batch_size=64, ticket_epochs=3, window=2, tolerance=1.0, finetune_epochs=1,
        finetune_attack_steps=1, allow_chance=True,
    )  # fmt: skip
    weights = [pruned[0].weight, pruned[4].weight]
    total = sum(w.numel() for w in weights)
    assert sum(int((w == 0).sum()) for w in weights) == round(0.9 * total)


def test_a_network_without_convolutions_is_refused_before_any_work(fashion_slice, tmp_path):
    import advprune

    train = fashion_slice("train", 128)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(ConfigError, match="no Conv2d layer"):
        advprune.prune(
            model, (train.images.float() / 255, train.labels), method="robustbird", eps=0.1,
            run_dir=tmp_path / "rb",
        )  # fmt: skip
    assert not (tmp_path / "rb" / "ticket").exists()
