"""HYDRA: scaled score init, straight-through top-k, frozen weights, exact k, resumable phases."""

import pytest
import torch
from torch import nn

from advprune.core.errors import ConfigError
from advprune.core.tensor_files import load_tensors
from advprune.masks import WeightMasks, prunable_parameters, pruned_count, select
from advprune.methods import PruneSettings, create_method
from advprune.methods.hydra import (
    ScoredNetwork,
    ScoreTraining,
    hydra_masks,
    scaled_scores,
    top_k_mask,
)
from advprune.models import create_model
from advprune.models.serialization import load_model
from advprune.training import TrainConfig, train
from conftest import prune_tiny, quiet, tiny_config

SPARSITY = 0.9


HYDRA = dict(sparsity=SPARSITY, score_epochs=1, finetune_epochs=1)


def hydra(dense_run, run_dir, log=quiet, **overrides):
    return prune_tiny(dense_run, run_dir, "hydra", log=log, **{**HYDRA, **overrides})


def lenet() -> nn.Module:
    torch.manual_seed(0)
    return create_model("lenet300-100", 10, 1, image_size=28)


def test_scaled_init_starts_from_layerwise_magnitude_pruning():
    model = lenet()
    scores = scaled_scores(model)
    weights = prunable_parameters(model, include_bias=False)
    assert list(scores) == list(weights)
    for name, score in scores.items():
        bound = (6 / weights[name][0].numel()) ** 0.5
        assert score.abs().max() == pytest.approx(bound)
        assert torch.equal(torch.sign(score), torch.sign(weights[name]))
    magnitude = select(
        {n: w.detach().abs() for n, w in weights.items()}, SPARSITY, scheme="layerwise"
    )
    learnt = hydra_masks(scores, SPARSITY)
    assert all(torch.equal(learnt[name], magnitude[name]) for name in weights)


@pytest.mark.parametrize("levels", [3, 1000])  # many ties at the threshold, few
def test_top_k_prunes_what_a_stable_sort_of_the_magnitudes_prunes(levels):
    generator = torch.Generator().manual_seed(levels)
    scores = torch.randint(-levels, levels + 1, (7, 11), generator=generator).float()
    for pruned in range(scores.numel() + 1):
        lowest = scores.abs().flatten().argsort(stable=True)[:pruned]
        expected = torch.ones(scores.numel()).index_fill_(0, lowest, 0).view_as(scores)
        assert torch.equal(top_k_mask(scores, pruned), expected), pruned


def test_top_k_keeps_exactly_k_per_layer_and_passes_gradients_straight_through():
    model = lenet()
    scores = {n: nn.Parameter(s) for n, s in scaled_scores(model).items()}
    network = ScoredNetwork(model.requires_grad_(False), scores, SPARSITY)
    for mask in network.masks.values():
        size = mask.numel()
        assert int(mask.sum()) == size - pruned_count(size, SPARSITY) == size - round(0.9 * size)
    x = torch.rand(8, 1, 28, 28)
    reference = lenet()
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if name in network.masks:
                parameter.mul_(network.masks[name])
    assert torch.allclose(network(x), reference(x), atol=1e-6)
    network(x).square().sum().backward()
    assert all(p.grad is None for p in model.parameters())
    # d loss / d s = (d loss / d w_eff) ⊙ w ⊙ sign(s): pruned entries get gradient too.
    for name, score in scores.items():
        pruned = network.masks[name] == 0
        assert score.grad is not None and score.grad[pruned].abs().sum() > 0, name
    assert set(network.state_dict()) == set(model.state_dict())


def test_score_training_moves_the_scores_only(dense_run, tmp_path):
    dense_model, _ = load_model(dense_run / "model.safetensors")
    method = ScoreTraining(SPARSITY)
    train(
        tiny_config(optimizer="sgd", lr=0.1, schedule="cosine", allow_chance=True),
        str(tmp_path),
        progress=False,
        log=quiet,
        initial_weights=dense_model.state_dict(),
        method=method,
    )
    tensors, metadata = load_tensors(tmp_path / "checkpoint.safetensors")
    assert metadata["epoch"] == 1
    # The checkpoint holds the frozen weights under the model's own keys, unchanged…
    for name, tensor in dense_model.state_dict().items():
        assert torch.equal(tensors[f"model.{name}"], tensor), name
    # …and the scores, which moved.
    initial = scaled_scores(dense_model)
    assert any(not torch.equal(tensors[f"extra.{n}"], initial[n]) for n in initial)
    # The final masks are the top-k the forward pass used; the model file holds w ⊙ mask.
    masks, saved = WeightMasks.load(tmp_path / "masks.safetensors")
    assert saved["sparsity"] == SPARSITY
    for name, mask in masks.items():
        assert torch.equal(mask, method.network.masks[name].bool().cpu()), name
        assert int(mask.sum()) == mask.numel() - round(SPARSITY * mask.numel()), name
    pruned, _ = load_model(tmp_path / "model.safetensors")
    for name, weight in pruned.named_parameters():
        expected = dense_model.state_dict()[name]
        if name in masks:
            expected = expected * masks[name]
        assert torch.equal(weight, expected), name


def test_hydra_prune_keeps_exactly_k_weights_per_layer_at_zero(dense_run, tmp_path):
    model = hydra(dense_run, tmp_path / "run")
    tmp_path = tmp_path / "run"
    masks, _ = WeightMasks.load(tmp_path / "masks.safetensors")
    learnt, _ = WeightMasks.load(tmp_path / "scores" / "masks.safetensors")
    parameters = dict(model.named_parameters())
    assert set(masks) == {n for n in parameters if n.endswith("weight")}
    for name, keep in masks.items():
        assert torch.equal(keep, learnt[name])
        assert int(keep.sum()) == keep.numel() - round(SPARSITY * keep.numel()), name
        assert torch.count_nonzero(parameters[name][~keep]) == 0, name
    _, metadata = load_model(tmp_path / "model.safetensors")
    assert metadata["method"]["name"] == "hydra"
    assert metadata["method"]["settings"]["score"]["epochs"] == 1
    assert metadata["method"]["settings"]["score"]["objective"] == "trades"
    assert metadata["config"]["objective"] == "trades" and metadata["config"]["beta"] == 6.0
    scores_config = TrainConfig.load(tmp_path / "scores" / "config.yaml")
    assert (scores_config.objective, scores_config.beta) == ("trades", 6.0)
    assert (scores_config.schedule, scores_config.weight_decay) == ("cosine", 1e-4)


def stop_at_epoch(count: int):
    """A log that interrupts the run at its `count`-th epoch line (before that epoch is saved)."""
    seen = []

    def log(message: str) -> None:
        if message.startswith("epoch"):
            seen.append(message)
            if len(seen) == count:
                raise KeyboardInterrupt

    return log


@pytest.fixture(scope="module")
def uninterrupted(dense_run, tmp_path_factory):
    """HYDRA with two epochs in each phase, run without a stop: what a resumed run must equal."""
    settings = dict(score_epochs=2, finetune_epochs=2)
    return settings, hydra(dense_run, tmp_path_factory.mktemp("whole") / "run", **settings)


@pytest.mark.parametrize(("stop", "phase"), [(2, "scores"), (4, "fine-tuning")])
def test_prune_resumes_exactly_in_either_phase(dense_run, uninterrupted, tmp_path, stop, phase):
    settings, whole = uninterrupted
    with pytest.raises(KeyboardInterrupt):
        hydra(dense_run, tmp_path / "cut", log=stop_at_epoch(stop), **settings)
    scores_done = (tmp_path / "cut" / "scores" / "model.safetensors").exists()
    assert scores_done == (phase == "fine-tuning")
    messages = []
    resumed = hydra(dense_run, tmp_path / "cut", log=messages.append, **settings)
    assert any("resuming" in m for m in messages)
    for name, tensor in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name


def test_hydra_settings_that_cannot_work(dense_run, tmp_path):
    for overrides, message in (
        ({"scheme": "global"}, "HYDRA prunes layer-wise"),
        ({"order": "largest"}, "drop --order"),
    ):
        with pytest.raises(ConfigError, match=message):
            create_method("hydra").check(PruneSettings.from_dict(overrides))
    for overrides, message in (
        ({"score_epochs": 0}, "epochs must be ≥ 1"),
        ({"score_lr": 0.0}, "lr must be > 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            create_method("hydra", overrides)
    with pytest.raises(KeyboardInterrupt):
        hydra(dense_run, tmp_path / "run", log=stop_at_epoch(1))
    with pytest.raises(ConfigError, match=r"other settings \(sparsity\)"):
        hydra(dense_run, tmp_path / "run", sparsity=0.5)


def test_the_score_phase_trains_scores_and_batchnorm_as_the_official_code():
    """inspire-group/hydra: freeze_vars skips BatchNorm unless --freeze-bn (off by default)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 26 * 26, 10))  # fmt: skip
    method = ScoreTraining(0.5)
    network = method.prepare(model)
    trained = {id(p) for p in method.weight_parameters(network)}
    assert {id(p) for p in model[1].parameters()} <= trained  # BN's γ and β learn
    assert not any(id(p) in trained for layer in (model[0], model[4]) for p in layer.parameters())
    assert all(id(s) in trained for s in method.scores.values())
    frozen = ScoreTraining(0.5, train_batchnorm=False)
    frozen.prepare(copy_of(model))
    assert len(frozen.weight_parameters(frozen.network)) == len(frozen.scores)


def copy_of(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).requires_grad_(True)
