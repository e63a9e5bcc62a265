"""The report's figures, each comparing runs: robust accuracy against sparsity and against the
measured speed-up, security curves, and per-layer values (sparsity, vulnerability). A run's own
security curve is drawn by `eval`. A summary that is the mean over seeds (report.seeds) is drawn
at its mean with an error bar of ± one standard deviation over its runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from advprune.core.io import atomic_write
from advprune.report.runs import RunSummary
from advprune.report.seeds import spread
from advprune.report.table import ATTACK_HEADERS
from advprune.training.config import OBJECTIVES

ROBUST_ATTACKS = ("pgd", "autoattack", "transfer")


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
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


def draw_chance(axes: Any, summaries: Sequence[RunSummary]) -> None:
    """A dotted line at chance accuracy when the runs agree on their number of classes."""
    classes = {s.num_classes for s in summaries if s.num_classes}
    if len(classes) == 1:
        chance = 1 / classes.pop()
        axes.axhline(
            100 * chance, color="black", linestyle=":", linewidth=1, label=f"chance ({chance:.0%})"
        )


def examples_label(counts: Sequence[int | None], seeds: int = 0) -> str:
    """ "N=10000", "N=500–10000" or "" : how many test examples a curve's points rest on; with
    ", 3 seeds" when the points are means over seeds (± one standard deviation drawn)."""
    known = sorted({n for n in counts if n})
    label = "" if not known else f"N={known[0]}" if len(known) == 1 else f"N={known[0]}–{known[-1]}"
    if seeds > 1:
        label += f"{', ' if label else ''}mean ± std of {seeds} seeds"
    return label


def is_dense(summary: RunSummary) -> bool:
    """A run whose method is a training objective (pgd-at, trades…) rather than a pruning method."""
    return summary.method in OBJECTIVES


def series(summary: RunSummary) -> str:
    """A method's line; runs that removed whole channels get their own (their weight sparsity
    says little next to unstructured runs')."""
    structured = summary.channel_sparsity is not None
    return f"{summary.method} (channels)" if structured else summary.method


def plot_robust_vs_sparsity(
    summaries: Sequence[RunSummary], title: str, path: str | Path
) -> Path | None:
    """One panel per robust attack present: a line per pruning method through its runs' (sparsity,
    accuracy), dense runs as dashed horizontal lines. None when no run has both numbers."""
    attacks = [a for a in ROBUST_ATTACKS if any(a in s.accuracy for s in summaries)]
    pruned = [s for s in summaries if not is_dense(s) and s.method and s.sparsity is not None]
    if not attacks or not any(a in s.accuracy for s in pruned for a in attacks):
        return None
    plt = pyplot()
    figure, panels = plt.subplots(
        1, len(attacks), figsize=(4.5 * len(attacks), 3.8), dpi=120, squeeze=False
    )
    for axes, attack in zip(panels[0], attacks, strict=True):
        for method in sorted({series(s) for s in pruned}):
            runs = [s for s in pruned if series(s) == method and attack in s.accuracy]
            points = sorted(
                (100 * s.sparsity, 100 * s.accuracy[attack], _percent_spread(s, attack))
                for s in runs
            )
            if points:
                n = examples_label(
                    [s.examples.get(attack) for s in runs], max(len(s.members) for s in runs)
                )
                x, y, error = zip(*points, strict=True)
                axes.errorbar(
                    x, y, yerr=error_bars(error), marker="o", capsize=3, label=f"{method} ({n})"
                )
        for dense in (s for s in summaries if is_dense(s) and attack in s.accuracy):
            n = examples_label([dense.examples.get(attack)], len(dense.members))
            accuracy, error = 100 * dense.accuracy[attack], _percent_spread(dense, attack)
            line = axes.axhline(
                accuracy,
                color="grey",
                linestyle="--",
                linewidth=1,
                label=f"dense ({dense.method}, {n})",
            )
            if error:
                axes.axhspan(accuracy - error, accuracy + error, color=line.get_color(), alpha=0.15)
        draw_chance(axes, summaries)
        axes.set(
            xlabel="weight sparsity (%)",
            ylabel=f"{ATTACK_HEADERS[attack]} accuracy (%)",
            title=f"{title}: {ATTACK_HEADERS[attack]}",
        )
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    return save_figure(figure, path)


def plot_robust_vs_speedup(
    summaries: Sequence[RunSummary], title: str, path: str | Path, batch: str = "batch_128"
) -> Path | None:
    """One panel per robust attack present: a point per exported run (structured or ANP-VS) at
    its measured speed-up over the dense network (median of the paired ratios, bars min–max),
    labelled with its run directory's name; dense runs at 1×. Over seeds: the mean of the
    medians, bars from the lowest to the highest ratio of any run and ± one standard deviation
    of the accuracy. None when no run has both."""
    exported = [s for s in summaries if batch in s.measured_speedup]
    attacks = [a for a in ROBUST_ATTACKS if any(a in s.accuracy for s in exported)]
    if not attacks:
        return None
    plt = pyplot()
    figure, panels = plt.subplots(
        1, len(attacks), figsize=(4.5 * len(attacks), 3.8), dpi=120, squeeze=False
    )
    for axes, attack in zip(panels[0], attacks, strict=True):
        for summary in (s for s in exported if attack in s.accuracy):
            spread = summary.measured_speedup[batch]
            accuracy = 100 * summary.accuracy[attack]
            low, high = spread["median"] - spread["min"], spread["max"] - spread["median"]
            axes.errorbar(
                spread["median"], accuracy, xerr=[[low], [high]],
                yerr=error_bars([_percent_spread(summary, attack)]), marker="o", capsize=3,
                label=summary.path.name or summary.method,
            )  # fmt: skip
        for dense in (s for s in summaries if is_dense(s) and attack in s.accuracy):
            error = error_bars([_percent_spread(dense, attack)])
            axes.errorbar(
                1.0, 100 * dense.accuracy[attack], yerr=error, marker="s", color="grey",
                capsize=3, label="dense",
            )  # fmt: skip
        axes.set(
            xlabel=f"measured speed-up over dense, {batch.replace('_', ' ')} (×)",
            ylabel=f"{ATTACK_HEADERS[attack]} accuracy (%)",
            title=f"{title}: {ATTACK_HEADERS[attack]}",
        )
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    return save_figure(figure, path)


def error_bars(deviations: Sequence[float]) -> Sequence[float] | None:
    """The error bars to draw: none where every deviation is 0 (single runs)."""
    return deviations if any(deviations) else None


def _percent_spread(summary: RunSummary, attack: str) -> float:
    """The standard deviation over seeds of an accuracy, in % (0 for a single run)."""
    std = spread(summary, lambda run: run.accuracy.get(attack))
    return 0.0 if std is None else 100 * std


def _curve_spread(summary: RunSummary) -> list[float]:
    """Per point of an aggregate's mean security curve, the standard deviation in % (zeros
    for a single run)."""
    return [
        100 * (spread(summary, lambda run, i=i: run.security_curve[i]["accuracy"]) or 0.0)
        for i in range(len(summary.security_curve))
    ]


def plot_layer_values(
    series: Mapping[str, Mapping[str, float]],
    ylabel: str,
    title: str,
    path: str | Path,
    *,
    percent: bool,
    deviations: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    """A line per run over its layers (in network order), e.g. per-layer sparsity or
    vulnerability; runs of one architecture share their layer names. `deviations` (label → layer
    → standard deviation over seeds) draws error bars."""
    layers = list(dict.fromkeys(layer for values in series.values() for layer in values))
    factor = 100 if percent else 1
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(max(5.0, 0.45 * len(layers) + 2), 3.8), dpi=120)
    for label, values in series.items():
        positions = [i for i, layer in enumerate(layers) if layer in values]
        errors = (deviations or {}).get(label, {})
        axes.errorbar(
            positions,
            [factor * values[layers[i]] for i in positions],
            yerr=error_bars([factor * errors.get(layers[i], 0.0) for i in positions]),
            marker="o",
            capsize=3,
            label=label,
        )
    axes.set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize="small")
    axes.set(ylabel=ylabel, title=title)
    if percent:
        axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return save_figure(figure, path)


def plot_security_curves(
    runs: Mapping[str, RunSummary],
    train_eps: float | None,
    title: str,
    path: str | Path,
) -> Path:
    """The runs' PGD accuracy against ε on one axes, a line per run with its number of examples,
    the chance level and `train_eps` (if set) marked."""
    figure, axes = pyplot().subplots(figsize=(5.5, 3.8), dpi=120)
    for label, summary in runs.items():
        curve = summary.security_curve
        n = examples_label([summary.curve_examples], len(summary.members))
        axes.errorbar(
            [p["eps"] for p in curve],
            [100 * p["accuracy"] for p in curve],
            yerr=error_bars(_curve_spread(summary)),
            marker="o",
            capsize=3,
            label=f"{label} ({n})" if n else label,
        )
    draw_chance(axes, list(runs.values()))
    if train_eps is not None:
        axes.axvline(
            train_eps, color="grey", linestyle="--", linewidth=1, label=f"ε = {train_eps:g}"
        )
    axes.set(xlabel="ε (L∞, [0, 1] pixels)", ylabel="PGD accuracy (%)", ylim=(0, 100), title=title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return save_figure(figure, path)
