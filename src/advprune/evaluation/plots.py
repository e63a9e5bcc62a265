"""Plots a person would rather look at than a table: the security curve of a run."""

from __future__ import annotations

from collections.abc import Sequence
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
