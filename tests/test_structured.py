"""`--structure channels` end to end: every scored method prunes whole channels of LeNet-5-Caffe,
the run exports a smaller network that computes what the masked one does, with its speed-up."""

import json

import pytest
import torch
from torch import nn

from advprune.cli import main
from advprune.core.errors import ConfigError
from advprune.evaluation.latency import first_near_fastest
from advprune.methods import PruneSettings, create_method
from advprune.models.serialization import load_model
from advprune.pipelines.export import PADDING_MUST_SAVE
from conftest import prune_tiny, quiet, train_tiny

SPARSITY = 0.5
# One epoch of everything, the cheapest settings of each method.
BUDGET = {
    "magnitude": {},
    "random": {},
    "mad": {"mask_steps": 2, "saliency_fraction": 0.25},
    "hydra": {"score_epochs": 1},
    "harp": {"score_epochs": 1},
    "radmm": {"score_epochs": 1},
}


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("dense"), model="lenet5-caffe")


def outputs_match(run_dir) -> float:
    masked, _ = load_model(run_dir / "model.safetensors")
    exported, _ = load_model(run_dir / "exported" / "model.safetensors")
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return (masked(x) - exported(x)).abs().max().item()


@pytest.mark.parametrize("method", list(BUDGET))
def test_each_method_prunes_channels_and_exports_a_smaller_equal_network(
    lenet_run, tmp_path, method
):
    run_dir = tmp_path / method
    prune_tiny(
        lenet_run, run_dir, method, structure="channels", sparsity=SPARSITY, finetune_epochs=1,
        **BUDGET[method],
    )  # fmt: skip
    check_exported_run(run_dir, method)


def check_exported_run(run_dir, method: str) -> None:
    """The run ended exported: outputs equal to the masked network's, smaller, the channel share
    asked for, a paired batch-1 and batch-128 speed-up, the structure recorded as published."""
    results = json.loads((run_dir / "results.json").read_text())
    assert outputs_match(run_dir) < 1e-4
    sizes = results["complexity"]
    assert sizes["exported"]["params"] < sizes["dense"]["params"]
    assert results["flops_speedup"] > 1
    if method == "harp":  # its target is in FLOPs; the channel share follows the learnt rates
        assert 0 < results["channel_sparsity"] < 1
    else:
        assert results["channel_sparsity"] == pytest.approx(SPARSITY, abs=0.01)
    for batch in ("batch_1", "batch_128"):
        speedup = results["measured_speedup"][batch]
        assert 0 < speedup["min"] <= speedup["median"] <= speedup["max"]
    metadata = load_model(run_dir / "model.safetensors")[1]["method"]
    departures = metadata["departures"]
    assert ("structure" in departures) == (method in ("mad", "hydra"))  # published unstructured


def test_twinrep_trains_channels_from_initialization_and_exports(tmp_path):
    from advprune.methods.base import start_config
    from advprune.pipelines import prune_run

    prune = PruneSettings.from_dict(
        {"method": "twinrep", "structure": "channels", "sparsity": SPARSITY, "limit_train": 512,
         "allow_chance": True, "cache_dir": str(tmp_path / "cache")}
    )  # fmt: skip
    start = start_config(
        {"model": "lenet5-caffe", "dataset": "fashion-mnist", "eps": 0.1, "batch_size": 64,
         "limit_test": 64, "monitor_examples": 0},
        prune,
        "test",
    )  # fmt: skip
    method = create_method("twinrep", {"finetune_epochs": 1, "prune_epoch": 1,
                                       "finetune_attack_steps": 2})  # fmt: skip
    prune_run(prune, method, tmp_path / "twinrep", start=start, progress=False, log=quiet)
    check_exported_run(tmp_path / "twinrep", "twinrep")


def test_the_cli_prunes_channels_then_exports_again(lenet_run, tmp_path, capsys):
    run_dir = tmp_path / "magnitude"
    common = ["--quiet", "prune", "--method", "magnitude", "--from", str(lenet_run)]
    flags = ["--structure", "channels", "--sparsity", "0.75", "--finetune-epochs", "1"]
    assert main([*common, *flags, "--allow-chance", "--run-dir", str(run_dir)]) == 0
    first = json.loads((run_dir / "results.json").read_text())
    assert main(["export", str(run_dir), "--repeats", "3", "--round-to", "1"]) == 0
    again = json.loads((run_dir / "results.json").read_text())
    assert again["channel_sparsity"] == first["channel_sparsity"] == pytest.approx(0.75, abs=0.01)
    assert again["measured_speedup"]["pairs"] == 3
    timed = first["round_to_ms"]  # by default every distinct rounding is timed
    fastest = min(timed.values())
    assert len(timed) >= 2 and timed[str(first["round_to"])] <= fastest * (1 + PADDING_MUST_SAVE)
    smaller = [ms for key, ms in timed.items() if int(key) < first["round_to"]]
    assert all(ms > fastest * (1 + PADDING_MUST_SAVE) for ms in smaller)  # none near the fastest
    assert again["round_to"] == 1 and again["round_to_ms"] == {}  # as asked, nothing timed
    assert "measured speed-up" in capsys.readouterr().out
    assert outputs_match(run_dir) < 1e-4


def test_an_export_is_padded_only_where_the_padding_buys_speed():
    # the rule fastest_export hands fastest_model, the exports listed smallest first
    assert first_near_fastest({1: 6.09, 8: 6.08, 16: 6.07}, PADDING_MUST_SAVE) == 1  # a tie
    assert first_near_fastest({1: 7.0, 8: 6.9, 16: 6.0}, PADDING_MUST_SAVE) == 16
    assert first_near_fastest({1: 7.0, 8: 6.1, 16: 6.0}, PADDING_MUST_SAVE) == 8
    assert first_near_fastest({1: 6.0, 8: 7.0, 16: 5.0}, 0.25) == 1


def test_structure_is_refused_where_it_has_no_meaning():
    anpvs = create_method("anpvs")
    with pytest.raises(ConfigError, match="drop --structure"):
        anpvs.check(PruneSettings(method="anpvs", structure="channels"))
    with pytest.raises(ConfigError, match="unknown structure"):
        PruneSettings(structure="filters").validate()


def test_the_mad_scheme_has_no_channel_form_and_nothing_is_written(lenet_run, tmp_path):
    with pytest.raises(ConfigError, match="ranks weights"):
        prune_tiny(
            lenet_run, tmp_path / "r", "random", structure="channels", scheme="mad", log=quiet
        )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", ["lenet5-caffe", "vgg16-bn", "resnet18"])
@pytest.mark.parametrize("method", ["radmm", "twinrep"])
def test_admm_and_twin_channel_masks_export_exactly(tmp_path, name, method):
    """RADMM's ADMM phase and TwinRep's Channel-Rep run on the benchmark's networks (random
    weights, one step on random images, the mask read before it): the channels they remove
    export to a network that computes what the masked one does."""
    from advprune.masks.channels import channel_groups
    from advprune.masks.export import channel_sparsity, export_gated
    from advprune.methods.radmm import ADMMTraining
    from advprune.methods.twinrep import TwinTraining
    from advprune.training.method import StepContext
    from advprune.training.objectives import ObjectiveOutput
    from test_channels import network

    model, example = network(name)
    groups = channel_groups(model, example)
    if method == "radmm":
        training = ADMMTraining(0.5, rho=1e-3, rho_growth=1.3, update_every=1, groups=groups)
    else:
        training = TwinTraining(0.5, prune_epoch=1, groups=groups)
    net = training.prepare(model.train())
    optimizer = torch.optim.SGD(training.weight_parameters(net), lr=0.01)
    x = torch.rand(4, *example.shape[1:], generator=torch.Generator().manual_seed(2))

    def loss(m, images, labels):
        logits = m(images)
        return ObjectiveOutput(nn.functional.cross_entropy(logits, labels), logits)

    training.step(
        net, x, torch.tensor([0, 1, 2, 3]), optimizer, StepContext(loss, 0, 0, 1, 0.01, 4)
    )
    training.finish(net.eval(), tmp_path)
    masked = training.trained_model(net).eval()
    exported = export_gated(masked, example, round_to=1)
    with torch.no_grad():
        assert (masked(x) - exported(x)).abs().max() < 1e-4
    assert 0.3 < channel_sparsity(masked, example)["channel_sparsity"] < 0.7


@pytest.mark.parametrize("name", ["vgg16-bn", "resnet18"])
@pytest.mark.parametrize("learner", ["hydra", "harp"])
def test_learnt_channel_scores_step_and_export_exactly(tmp_path, name, learner):
    """HYDRA's and HARP's channel phases on the benchmark's networks (random weights, one step on
    random images): the scores move, and the masks they leave export to an equal network."""
    from advprune.masks.channels import channel_groups
    from advprune.masks.export import channel_sparsity, export_gated
    from advprune.methods.harp import HarpTraining
    from advprune.methods.harp_flops import flops_layers
    from advprune.methods.hydra import ScoreTraining
    from test_channels import network

    model, example = network(name)
    groups = channel_groups(model, example)
    if learner == "hydra":
        method = ScoreTraining(0.5, groups=groups)
    else:
        flops = flops_layers(model, example)
        method = HarpTraining(0.5, gamma=0.01, rate_floor=0.1, initial_rate=1.0, groups=groups,
                              flops=flops)  # fmt: skip
    scored = method.prepare(model.train())
    before = {n: s.detach().clone() for n, s in method.scores.items()}
    optimizer = torch.optim.SGD(method.weight_parameters(scored), lr=0.1)
    x = torch.rand(4, *example.shape[1:], generator=torch.Generator().manual_seed(2))
    loss = nn.functional.cross_entropy(scored(x), torch.tensor([0, 1, 2, 3]))
    if learner == "harp":
        loss = loss + method.compression_loss()
    loss.backward()
    optimizer.step()
    method.after_update(scored)
    assert any(not torch.equal(before[n], s) for n, s in method.scores.items())
    method.finish(scored.eval(), tmp_path)
    masked = method.network.network.eval()
    exported = export_gated(masked, example, round_to=1)
    with torch.no_grad():
        assert (masked(x) - exported(x)).abs().max() < 1e-4
    removed = channel_sparsity(masked, example)["channel_sparsity"]
    assert 0.3 < removed < 0.7 if learner == "hydra" else 0 < removed < 1
