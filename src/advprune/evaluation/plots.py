"""Plots a person would rather look at than a table: security curve and latent vulnerability."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from advprune.core.io import atomic_write


def plot_security_curve(
    curve: Sequence[dict[str, float]], train_eps: float, title: str, path: str | Path
) -> Path:
    """PGD accuracy (and AutoAttack's, where measured) against ε, with the training ε marked;
    written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.5), dpi=120)
    axes.plot(
        [p["eps"] for p in curve], [100 * p["accuracy"] for p in curve], marker="o", label="PGD"
    )
    measured = [p for p in curve if "autoattack" in p]
    if measured:
        axes.plot(
            [p["eps"] for p in measured],
            [100 * p["autoattack"] for p in measured],
            marker="s",
            label="AutoAttack (subset)",
        )
    axes.axvline(train_eps, color="grey", linestyle="--", linewidth=1, label=f"ε = {train_eps:g}")
    axes.set(
        xlabel="ε (L∞, [0, 1] pixels)", ylabel="robust accuracy (%)", ylim=(0, 100), title=title
    )
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    try:
        return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    finally:
        plt.close(figure)


def plot_vulnerability(per_layer: Mapping[str, float], title: str, path: str | Path) -> Path:
    """Mean |z(x) − z(x̃)| of each latent feature, layers in network order; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = list(per_layer)
    figure, axes = plt.subplots(figsize=(max(4, 0.5 * len(names) + 2), 3.5), dpi=120)
    axes.bar(range(len(names)), [per_layer[name] for name in names])
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set(xlabel="layer", ylabel="vulnerability  mean |z(x) − z(x̃)|", title=title)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    try:
        return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    finally:
        plt.close(figure)
