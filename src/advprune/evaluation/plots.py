"""Plots a person would rather look at than a table: security curves and latent vulnerability.

Every curve's legend says how many test examples (N) it rests on, and accuracy plots draw the
chance level (1/classes): a curve that ends there, not at 0, is at chance, not robust.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from advprune.core.io import atomic_write
from advprune.evaluation.min_norm import BENCHMARK_EPS


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _save(figure: Any, path: str | Path) -> Path:
    plt = _pyplot()
    try:
        figure.tight_layout()
        return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    finally:
        plt.close(figure)


def draw_chance(axes: Any, chance: float | None) -> None:
    """A dotted horizontal line at chance accuracy (in %), labelled."""
    if chance is not None:
        axes.axhline(
            100 * chance, color="black", linestyle=":", linewidth=1, label=f"chance ({chance:.0%})"
        )


def plot_security_curve(
    curve: Sequence[dict[str, float]],
    train_eps: float,
    title: str,
    path: str | Path,
    *,
    examples: int,
    autoattack_examples: int = 0,
    pgd_steps: int = 20,
    chance: float | None = None,
) -> Path:
    """PGD accuracy (and AutoAttack's, where measured) against ε, with the training ε marked;
    written atomically as PNG."""
    figure, axes = _pyplot().subplots(figsize=(5, 3.5), dpi=120)
    axes.plot(
        [p["eps"] for p in curve],
        [100 * p["accuracy"] for p in curve],
        marker="o",
        label=f"PGD-{pgd_steps} (N={examples})",
    )
    measured = [p for p in curve if "autoattack" in p]
    if measured:
        axes.plot(
            [p["eps"] for p in measured],
            [100 * p["autoattack"] for p in measured],
            marker="s",
            label=f"AutoAttack (N={autoattack_examples})",
        )
    axes.axvline(train_eps, color="grey", linestyle="--", linewidth=1, label=f"ε = {train_eps:g}")
    draw_chance(axes, chance)
    axes.set(
        xlabel="ε (L∞, [0, 1] pixels)", ylabel="robust accuracy (%)", ylim=(0, 100), title=title
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path)


def plot_distance_curve(
    distances: torch.Tensor,
    eps: float,
    title: str,
    path: str | Path,
    *,
    chance: float | None = None,
    attack: str = "FMN",
) -> Path:
    """Robust accuracy against ε from per-example minimal distances (a step down at each
    distance: accuracy(ε) = share of distances > ε), as the Adversarial Pruning Benchmark draws
    it; ε and 8/255 marked."""
    finite = distances[torch.isfinite(distances)].sort().values
    top = max(float(finite.max()) * 1.1 if len(finite) else 0.0, 2 * eps, BENCHMARK_EPS * 1.5)
    radii = torch.linspace(0, top, 400)
    accuracy = (distances.view(1, -1) > radii.view(-1, 1)).float().mean(1)
    figure, axes = _pyplot().subplots(figsize=(5, 3.5), dpi=120)
    axes.plot(radii.tolist(), (100 * accuracy).tolist(), label=f"{attack} (N={len(distances)})")
    axes.axvline(eps, color="grey", linestyle="--", linewidth=1, label=f"ε = {eps:g}")
    if abs(eps - BENCHMARK_EPS) > 1e-4:
        axes.axvline(BENCHMARK_EPS, color="grey", linestyle="-.", linewidth=1, label="8/255")
    draw_chance(axes, chance)
    axes.set(
        xlabel="ε (L∞, [0, 1] pixels)", ylabel="robust accuracy (%)", ylim=(0, 100), title=title
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path)


def plot_vulnerability(per_layer: Mapping[str, float], title: str, path: str | Path) -> Path:
    """Mean |z(x) − z(x̃)| of each latent feature, layers in network order; written as PNG."""
    names = list(per_layer)
    figure, axes = _pyplot().subplots(figsize=(max(4, 0.5 * len(names) + 2), 3.5), dpi=120)
    axes.bar(range(len(names)), [per_layer[name] for name in names])
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set(xlabel="layer", ylabel="vulnerability  mean |z(x) − z(x̃)|", title=title)
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)
