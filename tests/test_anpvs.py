"""ANP-VS end to end: the VS loss, `advprune prune --method anpvs`, eval, export, resume."""

import json

import pytest
import torch
from torch import nn

from advprune.attacks import ATTACKS
from advprune.cli import main
from advprune.core.errors import ConfigError
from advprune.masks.gated import find_gates, held_sample, insert_gates
from advprune.methods import PruneSettings, create_method
from advprune.methods.anpvs import vulnerability_suppression_loss
from advprune.models import create_model
from advprune.models.features import capture_features
from advprune.models.serialization import load_model
from advprune.pipelines import prune_run
from advprune.reproduction import make_plan
from advprune.training import TrainConfig
from advprune.training import trainer as trainer_module
from conftest import train_tiny


def features(model, x):
    with capture_features(model) as captured:
        model(x)
    return captured


def test_vs_is_zero_when_the_adversarial_example_is_the_clean_one():
    torch.manual_seed(0)
    model = create_model("lenet5-caffe", 10, 1, image_size=28)
    gates = insert_gates(model, torch.zeros(2, 1, 28, 28))
    model.train()
    x = torch.rand(8, 1, 28, 28)
    with held_sample(gates):  # one gate draw for both passes, as ANP-VS's step uses
        clean, same = features(model, x), features(model, x.clone())
        moved = features(model, (x + 0.1 * torch.randn_like(x)).clamp(0, 1))
    assert list(clean) == ["body.0", "body.3", "body.7"]  # conv1-, conv2-, dense3-ReLU
    assert vulnerability_suppression_loss(clean, same).item() == 0
    assert vulnerability_suppression_loss(clean, moved).item() > 1e-3
    fresh_draw = features(model, x)  # outside the block every pass draws new gates
    assert vulnerability_suppression_loss(clean, fresh_draw).item() > 0


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("dense"), weight_decay=0.0)


def anpvs_flags(dense_run, run_dir, *extra: str) -> list[str]:
    return [
        "--quiet",
        "prune",
        "--method",
        "anpvs",
        "--from",
        str(dense_run),
        "--finetune-epochs",
        "1",
        "--finetune-batch-size",
        "16",
        "--finetune-attack-steps",
        "2",
        "--limit-train",
        "512",
        "--finetune-schedule",
        "constant",
        "--gate-lr",
        "0.2",
        "--beta",
        "0.03",
        "--dense-gate-init",
        "1",
        "--run-dir",
        str(run_dir),
        *extra,
    ]


@pytest.fixture(scope="module")
def anpvs_run(dense_run, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("anpvs")
    assert main(anpvs_flags(dense_run, run_dir)) == 0
    return run_dir


def test_an_anpvs_run_prunes_exports_and_records_its_sizes(anpvs_run):
    results = json.loads((anpvs_run / "results.json").read_text())
    units = results["units"]
    assert units["total"] == 784 + 300 + 100 and 0 < results["unit_sparsity"] < 1
    assert results["unit_sparsity"] == pytest.approx(1 - units["kept"] / units["total"])
    sizes = results["complexity"]
    assert sizes["exported"]["params"] < sizes["dense"]["params"] == 266_610
    assert 0 < results["sparsity"] < 1
    for batch in ("batch_1", "batch_128"):
        latency = results["latency"][batch]
        assert latency["dense"] > 0 and latency["exported"] > 0
    assert results["latency"]["threads"] == 1

    gated, metadata = load_model(anpvs_run / "model.safetensors")
    exported, exported_metadata = load_model(anpvs_run / "exported" / "model.safetensors")
    assert metadata["method"]["name"] == "anpvs" and find_gates(gated)
    assert not find_gates(exported) and "exported" in exported_metadata["method"]["name"]
    x = torch.rand(32, 1, 28, 28)
    with torch.no_grad():
        first, second = gated(x), gated(x)  # eval mode: deterministic gates
        assert torch.equal(first, second)
        assert (first - exported(x)).abs().max() < 1e-4
    summary = json.loads((anpvs_run / "gates.json").read_text())
    assert summary["units"]["kept"] == units["kept"]


def test_eval_reports_the_latent_vulnerability_of_gated_and_dense_models(anpvs_run, dense_run):
    exported = json.loads((anpvs_run / "results.json").read_text())
    for run in (anpvs_run, dense_run):
        flags = ["--quiet", "eval", str(run), "--limit-test", "64", "--sanity-examples", "0"]
        assert main([*flags, "--attacks", "clean,pgd"]) == 0
        results = json.loads((run / "results.json").read_text())
        vulnerability = results["vulnerability"]
        assert list(vulnerability["per_layer"]) == ["body.1", "body.3"]  # post-ReLU of 2 layers
        layers = vulnerability["per_layer"].values()
        assert vulnerability["overall"] == pytest.approx(sum(layers) / 2) and min(layers) > 0
        assert (run / "vulnerability.png").stat().st_size > 0
    exported_run = anpvs_run / "exported"
    assert (
        main(
            [
                "--quiet",
                "eval",
                str(exported_run),
                "--attacks",
                "clean",
                "--limit-test",
                "64",
                "--sanity-examples",
                "0",
            ]
        )
        == 0
    )
    assert json.loads((exported_run / "results.json").read_text())["params"] < 266_610
    gated = json.loads((anpvs_run / "results.json").read_text())
    for key in ("sparsity", "unit_sparsity"):  # eval measures the gated model as export did
        assert gated[key] == exported[key]
    assert gated["accuracy"]["clean"] > 0.4  # pruning left a working classifier


def test_autoattack_on_the_deterministic_gated_model_does_not_beat_pgd():
    torch.manual_seed(0)
    patterns = 0.5 + 0.15 * torch.randn(10, 1, 12, 12)
    y = torch.randint(0, 10, (600,))
    x = (patterns[y] + 0.2 * torch.randn(600, 1, 12, 12)).clamp(0, 1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[:500]), y[:500]).backward()
        optimizer.step()
    gates = insert_gates(model, x[:2])
    with torch.no_grad():  # a third of each layer's units pruned, the rest scaled by E[π]
        for gate in gates:
            gate.a_raw.copy_(torch.linspace(-10, 6, gate.units)[torch.randperm(gate.units)])
    assert 0 < sum(int(g.keep().sum()) for g in gates) < sum(g.units for g in gates)
    model.eval()
    x_test, y_test = x[500:516], y[500:516]
    eps = 0.05
    x_pgd = ATTACKS["pgd"].run(model, x_test, y_test, eps, seed=0)
    x_aa = ATTACKS["autoattack"].run(model, x_test, y_test, eps, seed=0)
    with torch.no_grad():
        pgd_accuracy = (model(x_pgd).argmax(1) == y_test).float().mean().item()
        aa_accuracy = (model(x_aa).argmax(1) == y_test).float().mean().item()
        clean_accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert pgd_accuracy > 0.2 and clean_accuracy > pgd_accuracy  # something left to attack
    assert aa_accuracy <= pgd_accuracy
    assert model.training is False and all(not g.training for g in gates)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(dense_run, tmp_path, monkeypatch):
    own = {
        "finetune_epochs": 2,
        "finetune_batch_size": 32,
        "finetune_attack_steps": 1,
        "finetune_schedule": "constant",
        "gate_lr": 0.2,
        "beta": 0.03,
        "dense_gate_init": 1.0,
    }
    settings = PruneSettings(method="anpvs", from_run=str(dense_run), limit_train=128)

    def run(run_dir, **changes):
        method = create_method("anpvs", {**own, **changes})
        return prune_run(settings, method, run_dir, progress=False, log=lambda _: None)

    run(tmp_path / "whole")
    real_save = trainer_module.save_training_state

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # the process dies right after the epoch-1 checkpoint

    monkeypatch.setattr(trainer_module, "save_training_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed")
    monkeypatch.setattr(trainer_module, "save_training_state", real_save)
    with pytest.raises(ConfigError, match="other settings"):
        run(tmp_path / "resumed", beta=1.0)
    run(tmp_path / "resumed")
    whole, metadata = load_model(tmp_path / "whole" / "model.safetensors")
    assert (metadata["config"]["model"], metadata["config"]["eps"]) == ("lenet300-100", 0.1)
    resumed, _ = load_model(tmp_path / "resumed" / "model.safetensors")
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert any(".gate." in name for name in whole.state_dict())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sparsity", "0.5"], "anpvs learns what to remove; drop --sparsity"),
        (["--no-gates", "--vs-lambda", "0"], "neither pruning nor VS"),
        (["--finetune-objective", "trades"], "ANP-VS sets its own loss"),
        (["--threshold", "2"], "threshold must be in"),
    ],
)
def test_impossible_anpvs_settings_fail_in_one_line(dense_run, tmp_path, capsys, extra, message):
    assert main(anpvs_flags(dense_run, tmp_path, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "checkpoint.safetensors").exists()


def test_anpvs_flags_are_refused_for_the_other_methods(dense_run, tmp_path, capsys):
    flags = ["--quiet", "prune", "--method", "magnitude", "--from", str(dense_run)]
    assert main([*flags, "--vs-lambda", "0.1", "--run-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert (
        "unrecognized arguments: --vs-lambda 0.1 (--vs-lambda is an option of --method anpvs)"
        in error
    )


@pytest.mark.parametrize(
    ("recipe", "dataset", "beta", "vs_lambda"),
    [
        ("anpvs-mnist", "mnist", 4.0, 1e-3),
        ("anpvs-cifar10", "cifar10", 2.0, 1e-4),
        ("anpvs-cifar100", "cifar100", 1.0, 0.1),
    ],
)
def test_the_paper_recipes_hold_the_papers_settings(recipe, dataset, beta, vs_lambda, tmp_path):
    steps = {step.name: step for step in make_plan(recipe, tmp_path).steps}
    (base,) = steps["base"].configs
    assert (base.dataset, base.objective, base.optimizer) == (dataset, "standard", "adam")
    assert base.eps == (0.3 if dataset == "mnist" else 0.03)
    _settings, config = steps["anpvs"].configs
    assert (config.beta, config.vs_lambda, config.gate_lr) == (beta, vs_lambda, 0.01)
    assert steps["anpvs"].needs["from_run"] == "base"
    assert config.finetune.epochs == 200 and config.finetune.lr == 1e-3


def test_the_clean_and_adversarial_passes_draw_their_own_gates():
    """As the official code: every pass of the step samples its gates anew (from the run's
    attack generator, so torchrun ranks agree), not one draw shared by both."""
    from advprune.methods.anpvs import ANPVSSettings, ANPVSTraining
    from advprune.training.method import StepContext
    from advprune.training.objectives import AttackSettings

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    train = TrainConfig(eps=0.05, attack_steps=1, optimizer="adam", lr=1e-3).validate()
    method = ANPVSTraining(ANPVSSettings(vs_lambda=0.1), train, (1, 4, 4))
    method.prepare(model)
    seen = []
    gate = method.gates[0]

    def record(*_):  # after the gate's own hook; the attack's eval-mode passes sample nothing
        if gate._sample is not None:
            seen.append(gate._sample.clone())

    model[1].register_forward_pre_hook(record)
    optimizer = torch.optim.Adam(method.weight_parameters(model), lr=1e-3)
    attack = AttackSettings(0.05, 1, None, torch.Generator().manual_seed(0))
    context = StepContext(None, 0, 0, 1, 1e-3, examples=100, attack=attack)
    x, y = torch.rand(6, 1, 4, 4), torch.randint(0, 3, (6,))
    model.train()
    method.step(model, x, y, optimizer, context)
    assert len(seen) == 2 and not torch.equal(seen[0], seen[1])


def test_vgg16_vs_has_the_official_15_features_dense14_before_and_after_bn():
    """src/model/vgg.py:49,63,66: the 13 conv-BN-ReLU outputs, dense14 before BN and after
    BN-ReLU; the method's passes capture all 15, with the gates in."""
    from advprune.methods.anpvs import ANPVSSettings, ANPVSTraining

    torch.manual_seed(0)
    model = create_model("vgg16-anpvs", 10, 3, image_size=32)
    train = TrainConfig(eps=0.03, attack_steps=1, optimizer="adam", lr=1e-3).validate()
    method = ANPVSTraining(ANPVSSettings(vs_lambda=0.1), train, (3, 32, 32))
    network = method.prepare(model).train()
    dense = next(m for m in model.modules() if hasattr(m, "pre_norm_features")).classifier[2]
    seen = []
    dense.register_forward_hook(lambda module, args, out: seen.append(out))
    _, captured = method._forward(network, torch.rand(4, 3, 32, 32), (None, (0, 1)))
    assert len(captured) == 15
    assert sum(tensor.dim() == 4 for tensor in captured.values()) == 13
    dense_features = [tensor for tensor in captured.values() if tensor.dim() == 2]
    assert any(tensor is seen[0] for tensor in dense_features)  # before BN: negatives too
    assert any((tensor >= 0).all() for tensor in dense_features)  # after BN-ReLU
