"""Gradient-masking checks (Athalye et al., 2018; Carlini et al., 2019).

A robust-accuracy number is only trustworthy if the attack behind it works: PGD accuracy must not
rise as ε grows, and at ε = 0.5 (where every image can be moved to uniform grey) it must be near
zero. A model that fails these is masking gradients, and its robust accuracy is inflated.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from advprune.attacks import pgd
from advprune.core.errors import GradientMaskingError
from advprune.data import ImageDataset
from advprune.evaluation.robustness import accuracy

LARGE_EPS = 0.5
MAX_ACCURACY_AT_LARGE_EPS = 0.10
MONOTONICITY_TOLERANCE = 0.01


def default_eps_values(eps: float) -> list[float]:
    """0, ε/2, ε, 2ε, 4ε and 0.5 (capped there): around the training radius, and far past it."""
    return sorted(
        {min(value, LARGE_EPS) for value in (0.0, eps / 2, eps, 2 * eps, 4 * eps, LARGE_EPS)}
    )


def security_curve(
    model: nn.Module,
    dataset: ImageDataset,
    eps_values: Sequence[float],
    *,
    steps: int = 20,
    device: torch.device | str = "cpu",
    batch_size: int = 500,
) -> list[dict[str, float]]:
    """PGD-`steps` accuracy for each ε, as [{"eps": ε, "accuracy": a}, ...] in ascending ε."""
    return [
        {
            "eps": eps,
            "accuracy": accuracy(
                model,
                dataset,
                partial(pgd, eps=eps, steps=steps),
                device=device,
                batch_size=batch_size,
            ),
        }
        for eps in sorted(eps_values)
    ]


def gradient_masking_problems(curve: Sequence[dict[str, float]]) -> list[str]:
    """What is wrong with a security curve; an empty list means it passed."""
    problems = []
    for before, after in itertools.pairwise(curve):
        if after["accuracy"] > before["accuracy"] + MONOTONICITY_TOLERANCE:
            problems.append(
                f"PGD accuracy rises from {before['accuracy']:.3f} at eps {before['eps']:g} to "
                f"{after['accuracy']:.3f} at eps {after['eps']:g}"
            )
    large = [point for point in curve if point["eps"] >= LARGE_EPS]
    if large and large[-1]["accuracy"] > MAX_ACCURACY_AT_LARGE_EPS:
        problems.append(
            f"PGD accuracy is still {large[-1]['accuracy']:.3f} at eps {large[-1]['eps']:g} "
            f"(must be ≤ {MAX_ACCURACY_AT_LARGE_EPS})"
        )
    return problems


def raise_on_gradient_masking(problems: Sequence[str], where: str) -> None:
    if problems:
        raise GradientMaskingError(
            f"gradient masking suspected in {where}: {'; '.join(problems)} — its robust accuracy "
            "cannot be trusted (evaluate a deterministic model, look for non-smooth layers)"
        )
