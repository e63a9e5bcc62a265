"""Robust Bird's, Flying Bird's and Flying Bird+'s published settings: the defaults are the official
code's (VITA-Group/Sparsity-Win-Robust-Generalization@6e9a862, lines in docs/fidelity.md), the
benchmark recipe runs them without departures and quotes the benchmark's leaderboard, and the
Fashion-MNIST suite runs them on the other rows' budget."""

from fractions import Fraction

import pytest

from advprune.methods import get_method
from advprune.reproduction import make_plan

# main_adv.py:43-48 (batch 128, lr 0.1, ×0.1 at epochs 100 and 150 of 200, momentum 0.9, wd 5e-4)
# and :52-55 (PGD-10, ε 8/255, step 2/255 = our default 2.5·ε/10).
FLYING_BIRD_TRAINING = dict(
    objective="pgd-at", epochs=200, attack_steps=10, optimizer="sgd", lr=0.1, momentum=0.9,
    weight_decay=5e-4, schedule="step", milestones=[0.5, 0.75], gamma=0.1,
)  # fmt: skip
# Robust-Bird/train_eb.py:35-39 (×0.1 at epochs 50 and 150 of 200), both stages.
ROBUST_BIRD_OPTIMISER = dict(
    epochs=200, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="step",
    milestones=[0.25, 0.75], gamma=0.1,
)  # fmt: skip
# The benchmark's leaderboard (README, "CIFAR-10 US pruning" and "SVHN US pruning", ResNet18).
LEADERBOARD = {
    "cifar10-robustbird": [(78.16, 43.35), (79.27, 44.60), (69.36, 37.08)],
    "cifar10-flyingbird": [(80.69, 46.49), (77.42, 46.10), (75.40, 42.02)],
    "svhn-robustbird": [(91.00, 46.23), (90.18, 47.26), (86.12, 42.62)],
    "svhn-flyingbird": [(92.60, 39.81), (91.14, 47.43), (92.15, 41.80)],
}


def phase(settings) -> dict:
    return {k: v for k, v in settings.to_dict().items() if v is not None}


def test_flying_bird_defaults_are_the_official_codes():
    settings = get_method("flyingbird").Settings()
    assert phase(settings.finetune) == FLYING_BIRD_TRAINING
    # main_adv.py:66 --growth random, :73 --update_frequency 900, :84-85 --dynamic_fre 1200
    assert (settings.growth, settings.update_interval) == ("random", 900)
    assert (settings.second_update_interval, settings.dynamic_interval) == (1200, True)
    plus = get_method("flyingbird-plus").Settings()
    assert phase(plus.finetune) == FLYING_BIRD_TRAINING
    # main_adv.py:78-81, :71 (epoch 100 of 200); datasets.py:23-24 (5,000 of 50,000 held out);
    # utils.py test_adv with --test_step 20 (main_adv.py:57)
    assert (plus.window, plus.prune_ratio, plus.growth_ratio, plus.threshold) == (4, 0.4, 0.05, 0.5)
    assert (plus.adaptive_from, plus.validation_fraction, plus.validation_steps) == (0.5, 0.1, 20)


def test_robust_bird_defaults_are_the_official_codes():
    robust = get_method("robustbird")
    settings = robust.Settings()
    assert phase(settings.ticket) == {"objective": "standard", **ROBUST_BIRD_OPTIMISER}
    assert phase(settings.finetune) == {
        "objective": "pgd-at", "attack_steps": 10, **ROBUST_BIRD_OPTIMISER
    }  # fmt: skip
    assert (settings.window, settings.tolerance) == (5, 0.08)  # early_bird.py:13, :129
    # function.py:336-342: global L1 over conv and linear weights, round(amount · n)
    assert (robust.default_scheme, robust.scores_bias, robust.rule.rounding) == (
        "global", False, "round"
    )  # fmt: skip


def test_the_benchmark_recipe_runs_each_method_as_published(tmp_path):
    plan = make_plan("birds-benchmark", tmp_path)
    assert len(plan.steps) == 18
    for step in plan.steps:
        settings, own, start = step.configs
        assert get_method(step.method)(own).departures(settings) == {}, step.name
        assert (start.model, start.batch_size) == ("preact-resnet18", 128)
        assert Fraction(start.eps).limit_denominator(1000) == Fraction(8, 255)
        assert start.dataset == step.name.split("-")[0]
        assert step.evaluate.eps == 0.031 and "autoattack" in step.evaluate.attacks
    rows = plan.paper["rows"]
    for prefix, figures in LEADERBOARD.items():
        for sparsity, (clean, autoattack) in zip((90, 95, 99), figures, strict=True):
            row = rows[f"{prefix}-{sparsity}"]
            assert (row["clean"], row["autoattack"], row["sparsity"]) == pytest.approx(
                (clean, autoattack, sparsity)
            )


def test_the_suite_runs_the_birds_on_the_other_rows_budget(tmp_path):
    names = [f"{m}-{s}" for m in ("robustbird", "flyingbird", "flyingbird-plus") for s in (90, 99)]
    plan = make_plan("fashion-mnist-suite", tmp_path, only=["dense", "magnitude-90", *names])
    steps = {step.name: step for step in plan.steps}
    dense, magnitude = steps["dense"].configs[0], steps["magnitude-90"]
    for name in names:
        settings, own, start = steps[name].configs
        # the dense run's network, data and ε; its epochs plus the fine-tuning's, its PGD steps
        assert (start.model, start.dataset, start.eps) == (dense.model, dense.dataset, dense.eps)
        assert own.finetune.epochs == dense.epochs + magnitude.setting("finetune_epochs")
        assert own.finetune.attack_steps == dense.attack_steps
        assert get_method(steps[name].method)(own).departures(settings) == {
            "finetune_attack_steps": dense.attack_steps
        }
        assert steps[name].evaluate == steps["magnitude-90"].evaluate
        assert settings.sparsity == int(name.rsplit("-", 1)[1]) / 100
