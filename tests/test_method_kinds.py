"""The kinds of method (advprune.methods.kinds): a toy method of each kind, one file each in
tests/plugins/, runs through `advprune prune`; `advprune list methods` names each method's kind;
the hooks the kinds give (`TrainingMethod.loss_term`, `DynamicMaskTraining.update_masks`) do
what they say, and a run whose masks change resumes exactly.

The kinds that start from the initialization (MaskFindingMethod, DynamicMaskMethod) run from the
network `--model` and `--dataset` name (the tiny run's), the others from the tiny `--from` run."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from advprune.core.seeding import seed_everything
from advprune.core.tensor_files import load_tensors
from advprune.data import get_spec
from advprune.masks import WeightMasks, random_scores, select
from advprune.masks.gated import find_gates
from advprune.methods import INITIALIZATION, TRAINED, PruningMethod, get_method, register_method
from advprune.methods.magnitude import magnitude_scores
from advprune.models import architecture, create_model
from advprune.models.serialization import load_model
from advprune.training.method import StepContext, TrainingMethod
from advprune.training.objectives import ObjectiveOutput

PLUGINS = Path(__file__).parent / "plugins"
SRC = Path(__file__).parents[1] / "src"
TOYS = ("toy_method", "toy_learnt", "toy_ticket", "toy_dynamic", "toy_gates")
KINDS = {
    "magnitude": "scores once",
    "random": "scores once",
    "mad": "scores once",
    "mad-obd": "scores once",
    "toy": "scores once",
    "hydra": "learns masks in a phase",
    "harp": "learns masks in a phase",
    "toy-learnt": "learns masks in a phase",
    "toy-ticket": "finds a mask before training",
    "toy-dynamic": "changes its masks while it trains",
    "anpvs": "learns gates",
    "toy-gates": "learns gates",
}
FROM_INITIALIZATION = {"toy-ticket", "toy-dynamic"}


def load_toys() -> None:
    sys.path.insert(0, str(PLUGINS))
    try:
        for module in TOYS:
            __import__(module)
    finally:
        sys.path.remove(str(PLUGINS))


def advprune_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": f"{SRC}{os.pathsep}{PLUGINS}",
        "ADVPRUNE_PLUGINS": ",".join(TOYS),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "advprune", "--quiet", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_advprune_list_methods_names_each_methods_kind(tmp_path):
    listed = advprune_cli("list", "methods", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split(None, 1)[1] for line in listed.stdout.splitlines()}
    for name, kind in KINDS.items():
        assert rows[name].startswith(f"{kind}  "), f"{name}: {rows[name]}"


def test_each_kind_declares_what_its_methods_start_from():
    load_toys()
    for name in KINDS:
        expected = INITIALIZATION if name in FROM_INITIALIZATION else TRAINED
        assert get_method(name).starts_from == expected, name


def test_a_method_must_subclass_a_kind():
    class Bare(PruningMethod):
        pass

    with pytest.raises(TypeError, match="kind of method"):
        register_method("bare", description="no kind")(Bare)


# The tiny run's network and data, for a method that trains from its initialization.
START = ["--model", "lenet300-100", "--dataset", "fashion-mnist", "--eps", "0.1", "--limit-train",
         "512", "--limit-test", "64", "--monitor-examples", "0", "--batch-size", "64",
         "--finetune-attack-steps", "2"]  # fmt: skip


def pruned_by_cli(dense_run: Path, cwd: Path, method: str, *flags: str) -> Path:
    start = START if method in FROM_INITIALIZATION else ["--from", dense_run]
    done = advprune_cli(
        "prune", "--method", method, *map(str, start), "--finetune-epochs", "1",
        "--allow-chance", "--run-dir", "run", *flags, cwd=cwd,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return cwd / "run"


def initialization() -> nn.Module:
    """The network those runs start from: the one `advprune train` builds with seed 0."""
    seed_everything(0)
    return create_model(**architecture("lenet300-100", get_spec("fashion-mnist")))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors(path)[0]


def assert_pruned_at_zero(run: Path, masks: WeightMasks) -> None:
    final = weights(run / "model.safetensors")
    for name, keep in masks.items():
        assert (final[name][~keep] == 0).all(), name


def test_a_mask_learning_toy_learns_its_masks_in_a_phase_then_fine_tunes(dense_run, tmp_path):
    run = pruned_by_cli(
        dense_run, tmp_path, "toy-learnt", "--sparsity", "0.5", "--score-epochs", "1"
    )
    masks, _ = WeightMasks.load(run / "masks.safetensors")
    learnt, _ = WeightMasks.load(run / "scores" / "masks.safetensors")
    phase, dense = (
        weights(run / "scores" / "model.safetensors"),
        weights(dense_run / "model.safetensors"),
    )
    for name, keep in masks.items():
        assert torch.equal(keep, learnt[name])
        assert torch.equal(keep, phase[name] != 0)  # the phase's largest weights, applied
        assert not torch.equal(phase[name], dense[name])  # the phase trained
        assert abs((~keep).float().mean().item() - 0.5) < 0.01
    assert_pruned_at_zero(run, masks)


def test_a_mask_finding_toy_finds_its_mask_in_a_phase_and_trains_under_it(dense_run, tmp_path):
    run = pruned_by_cli(
        dense_run, tmp_path, "toy-ticket", "--sparsity", "0.5", "--ticket-epochs", "1"
    )
    masks, _ = WeightMasks.load(run / "masks.safetensors")
    ticket, start = weights(run / "ticket" / "model.safetensors"), initialization().state_dict()
    moved = {name: (ticket[name] - start[name]).abs() for name in masks}
    expected = select(moved, 0.5, scheme="layerwise")
    assert all(torch.equal(masks[name], expected[name]) for name in masks)
    assert_pruned_at_zero(run, masks)


def test_a_dynamic_mask_toy_changes_its_masks_and_keeps_each_layers_sparsity(dense_run, tmp_path):
    run = pruned_by_cli(dense_run, tmp_path, "toy-dynamic", "--sparsity", "0.5")
    masks, _ = WeightMasks.load(run / "masks.safetensors")
    start_scores = random_scores(magnitude_scores(initialization()), 0)
    initial = select(start_scores, 0.5, scheme="layerwise", seed=0)
    assert any(not torch.equal(masks[name], initial[name]) for name in masks)
    for name, keep in masks.items():
        assert int((~keep).sum()) == int((~initial[name]).sum()), name  # counted in weights
    assert_pruned_at_zero(run, masks)


def test_a_gate_learning_toy_learns_its_gates_and_exports(dense_run, tmp_path):
    run = pruned_by_cli(dense_run, tmp_path, "toy-gates")
    model, metadata = load_model(run / "model.safetensors")
    gates = find_gates(model)
    assert gates and metadata["method"]["gates"]
    assert any(not torch.equal(gate.a_raw, torch.full_like(gate.a_raw, -1.0)) for gate in gates)
    assert (run / "exported" / "model.safetensors").exists()


def test_prune_refuses_selection_settings_of_a_method_that_decides_them(dense_run, tmp_path):
    done = advprune_cli(
        "prune", "--method", "toy-dynamic", "--from", str(dense_run), "--scheme", "global",
        "--run-dir", "run", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert "toy-dynamic allocates its own sparsity; drop --scheme" in done.stderr
    assert not (tmp_path / "run").exists()


# ---- the hooks, on a tiny network -------------------------------------------------------------


def tiny_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(16, 12, generator=generator), torch.randint(0, 3, (16,), generator=generator)


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> ObjectiveOutput:
    logits = model(x)
    return ObjectiveOutput(nn.functional.cross_entropy(logits, y), logits)


def step_context(step: int, steps_per_epoch: int = 4) -> StepContext:
    epoch, within = divmod(step, steps_per_epoch)
    return StepContext(cross_entropy, epoch, within, steps_per_epoch, 0.1, 64)


def tiny_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))


class WeightPenalty(TrainingMethod):
    def loss_term(self, model: nn.Module, context: StepContext) -> torch.Tensor:
        return 0.5 * model[0].weight.square().sum()


def test_a_loss_term_is_added_to_the_objective_and_logged_with_it():
    network, reference = tiny_network(), tiny_network()
    x, y = tiny_batch(0)
    out = WeightPenalty().step(
        network, x, y, torch.optim.SGD(network.parameters(), lr=0.0), step_context(0)
    )
    loss = cross_entropy(reference, x, y).loss + 0.5 * reference[0].weight.square().sum()
    loss.backward()
    assert torch.equal(out.loss, loss.detach())
    assert torch.equal(network[0].weight.grad, reference[0].weight.grad)
    assert not out.loss.requires_grad


def dynamic_run(steps: range, state=None):
    """Steps of toy-dynamic's training on the tiny network, from `state` (network, method,
    optimizer state dicts) or from random masks; returns the state after the last step."""
    load_toys()
    from toy_dynamic import SwapTraining

    network = tiny_network()
    masks = select(random_scores(magnitude_scores(network), 0), 0.5, scheme="layerwise")
    method = SwapTraining(None if state else masks, {"name": "toy-dynamic"}, every=3, swap=0.25)
    network = method.prepare(network)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    if state:
        network.load_state_dict(state[0])
        method.load_state_dict(copy.deepcopy(state[1]), network)
        optimizer.load_state_dict(state[2])
    changed = []
    for step in steps:
        before = dict(method.masks.items())
        method.step(network, *tiny_batch(step), optimizer, step_context(step))
        changed.append(any(not torch.equal(before[n], method.masks[n]) for n in before))
        for name, parameter in network.named_parameters():
            if name in method.masks:
                keep = method.masks[name]
                assert int((~keep).sum()) == int((~masks[name]).sum())  # sparsity stays exact
                assert (parameter[~keep] == 0).all()
                assert (optimizer.state[parameter]["momentum_buffer"][~keep] == 0).all()
    return (network.state_dict(), method.state_dict(), optimizer.state_dict()), changed


def test_dynamic_masks_change_after_the_update_and_a_resume_is_exact():
    (network, method, _), changed = dynamic_run(range(8))
    assert changed == [step % 3 == 2 for step in range(8)]  # every third step
    assert int(method["updates"]) == 2
    halfway, _ = dynamic_run(range(4))
    resumed, _ = dynamic_run(range(4, 8), copy.deepcopy(halfway))
    for name, tensor in network.items():
        assert torch.equal(tensor, resumed[0][name]), name
    assert method.keys() == resumed[1].keys()
    assert all(torch.equal(method[key], resumed[1][key]) for key in method)


def test_a_growth_criterion_sees_the_dense_gradients_of_pruned_weights():
    load_toys()
    from toy_dynamic import SwapTraining

    class Recording(SwapTraining):
        def update_masks(self, model, optimizer, context):
            pruned = ~self.masks["0.weight"]
            self.gradient = model[0].weight.grad[pruned].clone()
            return None

    network = tiny_network()
    masks = select(random_scores(magnitude_scores(network), 0), 0.5, scheme="layerwise")
    method = Recording(masks, {}, every=1, swap=0.25)
    network = method.prepare(network)
    method.step(
        network, *tiny_batch(0), torch.optim.SGD(network.parameters(), lr=0.1), step_context(0)
    )
    assert method.gradient.abs().sum() > 0
