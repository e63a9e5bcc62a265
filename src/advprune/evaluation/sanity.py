"""Gradient-masking checks (Athalye et al., 2018; Carlini et al., 2019) and the chance check.

A robust-accuracy number is only trustworthy if the attack behind it works: PGD accuracy must not
rise as ε grows, and at ε = 0.5 (where every image can be moved to uniform grey) it must be near
zero. A model that fails these is masking gradients, and its robust accuracy is inflated. The
security curve (accuracy against ε) that the check reads is also a result of its own (the
Adversarial Pruning Benchmark's); on request AutoAttack joins PGD at every ε, on a subset.

A model at chance (clean accuracy ≤ 1.5/classes), or one with every unit of a layer removed (its
output no longer depends on its input), passes every attack check vacuously; it fails the chance
check instead, so that its row is never read as a robust one.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from advprune.attacks import ATTACKS, autoattack
from advprune.core.errors import GradientMaskingError
from advprune.data import ImageDataset
from advprune.evaluation.complexity import PRUNABLE
from advprune.evaluation.robustness import accuracy
from advprune.masks.gated import find_gates

LARGE_EPS = 0.5
MAX_ACCURACY_AT_LARGE_EPS = 0.10
MONOTONICITY_TOLERANCE = 0.01
CHANCE_FACTOR = 1.5  # clean accuracy ≤ 1.5/classes is at chance


def default_eps_values(eps: float) -> list[float]:
    """0, ε/2, ε, 2ε, 4ε and 0.5 (capped there): around the training radius, and far past it."""
    return sorted(
        {min(value, LARGE_EPS) for value in (0.0, eps / 2, eps, 2 * eps, 4 * eps, LARGE_EPS)}
    )


def curve_eps_values(requested: Sequence[float], eps: float) -> list[float]:
    """The requested radii with LARGE_EPS added (the check needs it), or the default set."""
    if not requested:
        return default_eps_values(eps)
    return sorted({*requested, LARGE_EPS})


def security_curve(
    model: nn.Module,
    dataset: ImageDataset,
    eps_values: Sequence[float],
    *,
    steps: int = 20,
    device: torch.device | str = "cpu",
    batch_size: int = 500,
    autoattack_examples: int = 0,
    seed: int = 0,
) -> list[dict[str, float]]:
    """PGD-`steps` accuracy for each ε, as [{"eps": ε, "accuracy": a}, ...] in ascending ε.

    PGD's random starts come from `seed` alone, as the evaluation's attacks' do, so a curve
    measured in a resumed evaluation is the one an uninterrupted run gives. With
    `autoattack_examples`, each point also holds "autoattack": AutoAttack's accuracy on the
    first that many examples (AutoAttack costs far more than PGD, so a subset).
    """
    subset = dataset.take(autoattack_examples) if autoattack_examples else None
    curve = []
    for eps in sorted(eps_values):
        point = {
            "eps": eps,
            "accuracy": accuracy(
                model,
                dataset,
                partial(ATTACKS["pgd"].run, eps=eps, steps=steps, seed=seed),
                device=device,
                batch_size=batch_size,
            ),
        }
        if subset is not None:
            attack = partial(autoattack, eps=eps, seed=seed, batch_size=batch_size)
            point["autoattack"] = accuracy(
                model, subset, attack, device=device, batch_size=len(subset)
            )
        curve.append(point)
    return curve


def gradient_masking_problems(curve: Sequence[dict[str, float]]) -> list[str]:
    """What is wrong with a security curve (PGD's, and AutoAttack's where measured); an empty list
    means it passed."""
    problems = _curve_problems(curve, "accuracy", "PGD")
    measured = [point for point in curve if "autoattack" in point]
    return problems + _curve_problems(measured, "autoattack", "AutoAttack")


def _curve_problems(curve: Sequence[dict[str, float]], key: str, attack: str) -> list[str]:
    problems = []
    for before, after in itertools.pairwise(curve):
        if after[key] > before[key] + MONOTONICITY_TOLERANCE:
            problems.append(
                f"{attack} accuracy rises from {before[key]:.3f} at eps {before['eps']:g} to "
                f"{after[key]:.3f} at eps {after['eps']:g}"
            )
    large = [point for point in curve if point["eps"] >= LARGE_EPS]
    if large and large[-1][key] > MAX_ACCURACY_AT_LARGE_EPS:
        problems.append(
            f"{attack} accuracy is still {large[-1][key]:.3f} at eps {large[-1]['eps']:g} "
            f"(must be ≤ {MAX_ACCURACY_AT_LARGE_EPS})"
        )
    return problems


def empty_layers(model: nn.Module) -> list[str]:
    """Layers every unit of which is removed: a gate that keeps none, or a conv/linear layer whose
    weights are all zero (its output is a constant)."""
    empty = [f"{gate.layers[0]} (gate)" for gate in find_gates(model) if not gate.keep().any()]
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE) and module.weight.numel() and not module.weight.any():
            empty.append(name)
    return empty


def chance_check(clean_accuracy: float | None, classes: int, model: nn.Module) -> dict:
    """{"passed", "clean_accuracy", "chance", "limit", "empty_layers", "problems"}: fails on a
    model at chance or with a layer emptied (see the module docstring)."""
    limit = CHANCE_FACTOR / classes
    empty = empty_layers(model)
    problems = []
    if clean_accuracy is not None and clean_accuracy <= limit:
        problems.append(
            f"clean accuracy {clean_accuracy:.3f} is at chance (≤ 1.5/{classes} = {limit:.3f}), "
            "so every robust accuracy is vacuous"
        )
    if empty:
        problems.append(
            f"every unit of {', '.join(empty[:3])} is removed, so the output ignores the input"
        )
    return {
        "passed": not problems,
        "clean_accuracy": clean_accuracy,
        "chance": 1 / classes,
        "limit": limit,
        "empty_layers": empty,
        "problems": problems,
    }


def raise_on_gradient_masking(problems: Sequence[str], where: str) -> None:
    """A failed check, after the results are written: exit code 3 from the CLI."""
    if problems:
        raise GradientMaskingError(
            f"the robust accuracy of {where} cannot be trusted: {'; '.join(problems)} (results "
            "written; look for non-smooth or random layers, a model at chance, or attack "
            "settings too weak)"
        )
