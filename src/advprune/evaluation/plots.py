"""Plots a person would rather look at than a table: security curves (PGD accuracy against ε)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from advprune.core.io import atomic_write


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display needed, safe in threads)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def save_figure(figure: Any, path: str | Path) -> Path:
    """Write `figure` as PNG atomically, then free it."""
    try:
        figure.tight_layout()
        return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    finally:
        pyplot().close(figure)


def plot_security_curve(
    curve: Sequence[dict[str, float]], train_eps: float, title: str, path: str | Path
) -> Path:
    """One run's PGD accuracy against ε, with the training ε marked; written atomically as PNG."""
    return plot_security_curves({"PGD": curve}, train_eps, title, path)


def plot_security_curves(
    curves: Mapping[str, Sequence[dict[str, float]]],
    train_eps: float | None,
    title: str,
    path: str | Path,
) -> Path:
    """Several runs' security curves on one axes (one line per label); `train_eps` marked if set."""
    figure, axes = pyplot().subplots(figsize=(5.5, 3.8), dpi=120)
    for label, curve in curves.items():
        axes.plot(
            [p["eps"] for p in curve], [100 * p["accuracy"] for p in curve], marker="o", label=label
        )
    if train_eps is not None:
        axes.axvline(
            train_eps, color="grey", linestyle="--", linewidth=1, label=f"ε = {train_eps:g}"
        )
    axes.set(xlabel="ε (L∞, [0, 1] pixels)", ylabel="PGD accuracy (%)", ylim=(0, 100), title=title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return save_figure(figure, path)
