"""`advprune eval --eps-curve` (security curve, PGD + AutoAttack) and `--transfer-from`."""

import json

import pytest
import torch

from advprune.attacks import pgd
from advprune.cli import main
from advprune.core.errors import ConfigError
from advprune.data import load_dataset
from advprune.evaluation import EvalConfig, accuracy
from advprune.evaluation.sanity import LARGE_EPS, curve_eps_values, gradient_masking_problems
from advprune.evaluation.transfer import TRANSFER_STEPS, transfer_problems
from advprune.models import create_model
from advprune.models.serialization import load_model, save_model
from advprune.training import TrainConfig, train

TEST_EXAMPLES = 200


def trained_run(path, seed: int):
    config = TrainConfig(
        dataset="fashion-mnist",
        model="lenet300-100",
        objective="pgd-at",
        eps=0.1,
        attack_steps=3,
        epochs=1,
        batch_size=64,
        optimizer="adam",
        lr=1e-3,
        limit_train=1024,
        limit_test=64,
        monitor_examples=0,
        seed=seed,
    )
    train(config, str(path), progress=False, log=lambda _: None)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A PGD-AT target and a separately trained PGD-AT source (another seed), both tiny."""
    root = tmp_path_factory.mktemp("runs")
    return trained_run(root / "target", seed=0), trained_run(root / "source", seed=1)


def evaluate(run_dir, *flags: str) -> tuple[int, dict]:
    limits = ["--limit-test", str(TEST_EXAMPLES), "--pgd-steps", "10"]
    code = main(["--quiet", "eval", str(run_dir), *limits, *flags])
    results_file = run_dir / "results.json"
    return code, json.loads(results_file.read_text()) if results_file.exists() else {}


def test_security_curve_falls_with_eps_to_zero(runs, capsys):
    target, _ = runs
    flags = ["--attacks", "clean", "--sanity-examples", "100"]
    # PGD alone on a fine grid of radii…
    code, results = evaluate(
        target, *flags, "--eps-curve", "0.2,0,0.05,0.1", "--curve-autoattack-examples", "0"
    )
    assert code == 0, capsys.readouterr().err
    check = results["gradient_masking_check"]
    curve = check["security_curve"]
    assert [p["eps"] for p in curve] == [0, 0.05, 0.1, 0.2, LARGE_EPS]
    assert check["examples"] == 100 and check["autoattack_examples"] == 0 and check["passed"]
    values = [p["accuracy"] for p in curve]
    assert values == sorted(values, reverse=True) and values[1] > values[3], values
    assert values[0] >= 0.25 and values[-1] <= 0.02, values
    assert all("autoattack" not in p for p in curve)
    assert (target / "security_curve.png").read_bytes().startswith(b"\x89PNG")
    # …and with AutoAttack on a subset, at radii where it ends fast (~25 s a radius otherwise).
    code, results = evaluate(
        target, *flags, "--eps-curve", "0,0.3", "--curve-autoattack-examples", "4"
    )
    assert code == 0, capsys.readouterr().err
    check = results["gradient_masking_check"]
    assert check["autoattack_examples"] == 4 and check["passed"]
    autoattack = [p["autoattack"] for p in check["security_curve"]]
    assert len(autoattack) == 3 and autoattack[0] > 0 and autoattack[1:] == [0, 0], autoattack


def test_autoattack_points_of_the_curve_are_checked_too():
    rising = [
        {"eps": 0.0, "accuracy": 0.9, "autoattack": 0.9},
        {"eps": 0.1, "accuracy": 0.5, "autoattack": 0.3},
        {"eps": 0.2, "accuracy": 0.2, "autoattack": 0.6},
        {"eps": 0.5, "accuracy": 0.0, "autoattack": 0.0},
    ]
    assert gradient_masking_problems(rising) == [
        "AutoAttack accuracy rises from 0.300 at eps 0.1 to 0.600 at eps 0.2"
    ]
    assert curve_eps_values([0.3, 0.1], 0.1) == [0.1, 0.3, LARGE_EPS]


@pytest.mark.parametrize("text", ["0,abc", "0,1.5", "", "nan"])
def test_an_eps_curve_that_cannot_work_is_refused(text):
    with pytest.raises(ConfigError, match="eps_curve"):
        EvalConfig(eps_curve=text).validate()


def test_transfer_crafts_on_the_source_only(runs):
    target, source = runs
    code, results = evaluate(target, "--attacks", "clean,pgd", "--transfer-from", str(source))
    assert code == 0
    accuracies = results["accuracy"]
    assert accuracies["pgd"] <= accuracies["transfer"] < accuracies["clean"]
    assert results["examples"]["transfer"] == TEST_EXAMPLES
    settings = results["attacks"]["transfer"]
    assert settings["steps"] == TRANSFER_STEPS and settings["source_method"] == "pgd-at"
    assert settings["source"] == str(source.resolve())

    # The examples come from PGD-40 on the source alone, with the evaluation's seeded start.
    model, _ = load_model(target / "model.safetensors")
    source_model, _ = load_model(source / "model.safetensors")
    test = load_dataset("fashion-mnist", "test", limit=TEST_EXAMPLES)

    def crafted_on_source(_net, x, y):
        generator = torch.Generator().manual_seed(0)
        return pgd(source_model, x, y, 0.1, steps=TRANSFER_STEPS, generator=generator)

    assert accuracies["transfer"] == accuracy(model, test, crafted_on_source)


def test_a_source_that_does_not_fit_is_a_one_line_error(runs, tmp_path, capsys):
    target, _ = runs
    other = tmp_path / "cifar"
    other.mkdir()
    architecture = {
        "name": "lenet300-100",
        "num_classes": 10,
        "in_channels": 3,
        "image_size": 32,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }
    model = create_model(**architecture)
    save_model(
        other / "model.safetensors",
        model,
        {"architecture": architecture, "config": {"dataset": "cifar10"}},
    )
    before = (target / "results.json").read_text() if (target / "results.json").exists() else ""
    cases = [
        (other, "dataset cifar10 ≠ fashion-mnist, input shape 3×32×32 ≠ 1×28×28"),
        (target, "names the evaluated run itself"),
        (tmp_path, "holds no model.safetensors"),
        (tmp_path / "nowhere", "does not exist"),
    ]
    for source, message in cases:
        code = main(["--quiet", "eval", str(target), "--transfer-from", str(source)])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    after = (target / "results.json").read_text() if (target / "results.json").exists() else ""
    assert after == before


def test_black_box_below_white_box_is_flagged():
    assert transfer_problems({"pgd": 0.40, "transfer": 0.45}) == []
    assert transfer_problems({"clean": 0.9, "transfer": 0.45}) == []
    (problem,) = transfer_problems({"pgd": 0.60, "transfer": 0.45})
    assert "below white-box PGD's 0.600" in problem
