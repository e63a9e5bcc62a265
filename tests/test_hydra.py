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


@pytest.mark.parametrize("tied", [False, True])
def test_the_fine_tuned_channel_mask_is_the_one_the_score_phase_trained(tied):
    """int(p·C) channels pruned, ties by position, in the score phase and in the fixed mask."""
    from advprune.masks.channels import channel_groups

    torch.manual_seed(0)
    model = create_model("lenet5-caffe", 10, 1, image_size=28)
    groups = channel_groups(model, torch.zeros(1, 1, 28, 28))
    generator = torch.Generator().manual_seed(4)
    scores = {
        g.name: torch.ones(g.size) if tied else torch.rand(g.size, generator=generator)
        for g in groups
    }
    sparsity = 0.33  # 20 → int 6 pruned (round would give 7)
    trained = ScoredNetwork(model, scores, sparsity, groups).masks
    fixed = hydra_masks(scores, sparsity, model=model, groups=groups)
    for group in groups:
        rows = fixed[f"{group.layers('producer')[0]}.weight"].flatten(1).any(1).float()
        assert torch.equal(rows, trained[group.name]), group.name
        assert int((rows == 0).sum()) == int(sparsity * group.size)


def batchnorm_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)
    )


def phase_training(kind: str, passes):
    from advprune.methods.harp import HarpTraining
    from advprune.methods.hydra import OfficialFinetuning

    if kind == "scores":
        return ScoreTraining(0.5, passes=passes)
    if kind == "harp":
        return HarpTraining(0.5, gamma=0.01, rate_floor=0.1, initial_rate=0.5, passes=passes)
    weights = prunable_parameters(batchnorm_network(), include_bias=False)
    masks = select({n: w.detach().abs() for n, w in weights.items()}, 0.5, scheme="layerwise")
    return OfficialFinetuning(masks, {}, passes)


@pytest.mark.parametrize("kind", ["scores", "harp", "finetune"])
@pytest.mark.parametrize(("objective", "expected"), [("trades", "xxax"), ("pgd-at", "xa")])
def test_each_batch_runs_the_official_train_mode_passes(kind, objective, expected):
    """HYDRA's and HARP's trainer/adv.py: one clean train-mode pass before the loss, and TRADES's
    x, x̃, x; BN's running statistics are those of exactly these passes, in this order."""
    import copy

    from advprune.methods.hydra import TrainModePasses
    from advprune.training.method import StepContext
    from advprune.training.objectives import OBJECTIVE_FUNCTIONS, AttackSettings

    method = phase_training(kind, TrainModePasses(objective))
    network = method.prepare(batchnorm_network()).train()
    before = copy.deepcopy(network)
    seen = []
    network.register_forward_pre_hook(lambda m, a: seen.append(a[0]) if m.training else None)
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8)
    attack = AttackSettings(eps=0.1, steps=2, step_size=0.05)
    loss = OBJECTIVE_FUNCTIONS[objective]
    context = StepContext(lambda m, a, b: loss(m, a, b, attack, 6.0), 0, 0, 1, 0.1, 8, attack)
    optimizer = torch.optim.SGD(method.weight_parameters(network), lr=0.1)
    method.step(network, x, y, optimizer, context)
    assert "".join("x" if torch.equal(t, x) else "a" for t in seen) == expected
    with torch.no_grad():
        for inputs in seen:
            before(inputs)
    unwrap = (lambda n: n[1]) if kind == "finetune" else (lambda n: n.network[1])
    norm, official = unwrap(network), unwrap(before)
    assert int(norm.num_batches_tracked) == len(expected)
    assert torch.allclose(norm.running_mean, official.running_mean)
    assert torch.allclose(norm.running_var, official.running_var)


@pytest.mark.parametrize(("method", "objective"), [("hydra", "trades"), ("harp", "pgd-at")])
def test_hydra_and_harp_fine_tune_with_their_trainers_passes(method, objective):
    from types import SimpleNamespace

    from advprune.methods.hydra import OfficialFinetuning

    context = SimpleNamespace(source=TrainConfig(objective="standard"), settings=PruneSettings())
    finetuning = create_method(method).finetuning(None, {}, context)
    assert isinstance(finetuning, OfficialFinetuning)
    assert finetuning.passes.objective == objective
