"""The report's figures, each comparing runs: robust accuracy against sparsity and against the
measured speed-up, security curves, and per-layer values (sparsity, vulnerability). A run's own
security curve is drawn by `eval`. A summary that is the mean over seeds (report.seeds) is drawn
at its mean with an error bar of ± one standard deviation over its runs.

Drawn to be read: legend labels are short — the method's name without its settings (the table's
method column has them) or the run's folder, with N, the test examples a curve rests on — and
sit below the axes, never over the data; each method keeps one colour in every figure of a
report (`method_colours`); accuracy axes run from 0 to 100 % with chance marked, sparsity from 0
to 100 %, speed-up from 0; layers appear in network order under the names a reader knows them
by (conv1, fc1: `models.layer_names`); one title per figure, short titles per panel."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from advprune.core.io import atomic_write
from advprune.evaluation.plots import PERCENT_RANGE, layer_ticks, legend_below
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
        if figure.get_layout_engine() is None:
            figure.tight_layout()
        return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    finally:
        pyplot().close(figure)


# A legend label longer than this would crowd the legend; the table carries the full names.
LEGEND_LABEL_LIMIT = 36
DENSE_COLOURS = ("black", "dimgrey", "darkgrey", "silver")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def fit(label: str, limit: int = LEGEND_LABEL_LIMIT) -> str:
    """`label`, cut to `limit` characters with an ellipsis where it is longer."""
    return label if len(label) <= limit else label[: limit - 1] + "…"


def short_method(label: str | None) -> str:
    """A method's name without its settings: "anpvs [beta=10.0, …]" → "anpvs"."""
    return (label or "?").split(" [", 1)[0]


def tab20() -> list[str]:
    """matplotlib's tab20 (a dark and a light shade of ten hues), for more than ten methods."""
    from matplotlib import colormaps, colors

    return [colors.to_hex(colour) for colour in colormaps["tab20"].colors]


def method_colours(summaries: Sequence[RunSummary]) -> dict[str, str]:
    """One colour per method (its short name) for every figure of a report: greys for the dense
    runs' objectives, matplotlib's tab10 for the pruning methods, in sorted order, or tab20 when
    there are more than ten of them (the suite has twelve), so no two methods share a colour."""
    dense = sorted({short_method(s.method) for s in summaries if is_dense(s)})
    pruned = sorted({short_method(s.method) for s in summaries if not is_dense(s)} - set(dense))
    colours = {name: DENSE_COLOURS[i % len(DENSE_COLOURS)] for i, name in enumerate(dense)}
    palette = [f"C{i}" for i in range(10)] if len(pruned) <= 10 else tab20()
    colours.update({name: palette[i % len(palette)] for i, name in enumerate(pruned)})
    return colours


def run_styles(
    runs: Mapping[str, RunSummary], colours: Mapping[str, str]
) -> dict[str, dict[str, str]]:
    """Per run: its method's colour and a marker of its own among that method's runs."""
    styles, used = {}, {}
    for label, summary in runs.items():
        method = short_method(summary.method)
        marker = MARKERS[used.get(method, 0) % len(MARKERS)]
        used[method] = used.get(method, 0) + 1
        styles[label] = {"color": colours.get(method, "C9"), "marker": marker}
    return styles


def counted_title(header: str, counts: Mapping[str, int | None]) -> str:
    """A panel's title with the test examples its curves rest on: "PGD, N=25", or where curves
    differ, the most common N and the others by curve: "PGD, N=25 (anpvs, dense: 100)"."""
    known = {name: n for name, n in counts.items() if n}
    if not known:
        return header
    common = Counter(known.values()).most_common(1)[0][0]
    others: dict[int, list[str]] = {}
    for name, n in known.items():
        if n != common:
            others.setdefault(n, []).append(name)
    rest = "; ".join(f"{', '.join(names)}: {n}" for n, names in others.items())
    return f"{header}{', ' if header else ''}N={common}" + (f" ({rest})" if rest else "")


def accuracy_axis(axes: Any, attack: str, counts: Mapping[str, int | None]) -> None:
    """A panel's accuracy axis, 0–100 %, and its title with the N of its curves."""
    axes.set_ylim(*PERCENT_RANGE)
    axes.set_ylabel(f"{ATTACK_HEADERS[attack]} accuracy (%)")
    axes.set_title(counted_title(ATTACK_HEADERS[attack], counts), fontsize="medium")


def draw_chance(axes: Any, summaries: Sequence[RunSummary]) -> None:
    """A dotted line at chance accuracy when the runs agree on their number of classes."""
    classes = {s.num_classes for s in summaries if s.num_classes}
    if len(classes) == 1:
        chance = 1 / classes.pop()
        axes.axhline(
            100 * chance, color="black", linestyle=":", linewidth=1, label=f"chance ({chance:.0%})"
        )


def with_seeds(label: str, runs: Sequence[RunSummary]) -> str:
    """`label`, with "(3 seeds)" where its points are means over seeds (± one standard deviation
    drawn)."""
    seeds = max((len(s.members) for s in runs), default=0)
    return fit(f"{label} ({seeds} seeds)" if seeds > 1 else label)


def is_dense(summary: RunSummary) -> bool:
    """A run whose method is a training objective (pgd-at, trades…) rather than a pruning method."""
    return summary.method in OBJECTIVES


def series(summary: RunSummary) -> str:
    """A method's line, by its short name; runs that removed whole channels get their own (their
    weight sparsity says little next to unstructured runs')."""
    structured = summary.channel_sparsity is not None
    name = short_method(summary.method)
    return f"{name} (channels)" if structured else name


def plot_robust_vs_sparsity(
    summaries: Sequence[RunSummary],
    title: str,
    path: str | Path,
    colours: Mapping[str, str] | None = None,
) -> Path | None:
    """One panel per robust attack present: a line per pruning method through its runs' (sparsity,
    accuracy), dense runs as dashed horizontal lines. None when no run has both numbers."""
    attacks = [a for a in ROBUST_ATTACKS if any(a in s.accuracy for s in summaries)]
    pruned = [s for s in summaries if not is_dense(s) and s.method and s.sparsity is not None]
    if not attacks or not any(a in s.accuracy for s in pruned for a in attacks):
        return None
    colours = colours or method_colours(summaries)
    figure, panels = pyplot().subplots(
        1, len(attacks), figsize=(4.2 * len(attacks) + 0.6, 4.4), dpi=120, squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for axes, attack in zip(panels[0], attacks, strict=True):
        counts = _draw_sparsity_panel(axes, summaries, pruned, attack, colours)
        draw_chance(axes, summaries)
        accuracy_axis(axes, attack, counts)
        axes.set(xlabel="weight sparsity (%)", xlim=(-3, 103))
        axes.ticklabel_format(axis="x", useOffset=False)
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    legend_below(figure, panels[0])
    return save_figure(figure, path)


def _draw_sparsity_panel(
    axes: Any,
    summaries: Sequence[RunSummary],
    pruned: Sequence[RunSummary],
    attack: str,
    colours: Mapping[str, str],
) -> dict[str, int | None]:
    """One attack's lines; returns each line's number of test examples (by legend name)."""
    counts: dict[str, int | None] = {}
    for method in sorted({series(s) for s in pruned}):
        runs = [s for s in pruned if series(s) == method and attack in s.accuracy]
        points = sorted(
            (100 * s.sparsity, 100 * s.accuracy[attack], _percent_spread(s, attack)) for s in runs
        )
        if not points:
            continue
        counts[method] = min((s.examples.get(attack) or 0 for s in runs), default=0) or None
        x, y, error = zip(*points, strict=True)
        axes.errorbar(
            x, y, yerr=error_bars(error), marker="o", capsize=3,
            color=colours.get(short_method(runs[0].method)),
            linestyle=":" if method.endswith("(channels)") else "-",
            label=with_seeds(method, runs),
        )  # fmt: skip
    for dense in (s for s in summaries if is_dense(s) and attack in s.accuracy):
        accuracy, error = 100 * dense.accuracy[attack], _percent_spread(dense, attack)
        colour = colours.get(short_method(dense.method), "grey")
        label = f"dense {short_method(dense.method)}"
        counts[label] = dense.examples.get(attack)
        axes.axhline(
            accuracy, color=colour, linestyle="--", linewidth=1, label=with_seeds(label, [dense])
        )
        if error:
            axes.axhspan(accuracy - error, accuracy + error, color=colour, alpha=0.15)
    return counts


def plot_robust_vs_speedup(
    summaries: Sequence[RunSummary],
    title: str,
    path: str | Path,
    batch: str = "batch_128",
    colours: Mapping[str, str] | None = None,
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
    colours = colours or method_colours(summaries)
    figure, panels = pyplot().subplots(
        1, len(attacks), figsize=(4.2 * len(attacks) + 0.6, 4.4), dpi=120, squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for axes, attack in zip(panels[0], attacks, strict=True):
        counts = _draw_speedup_panel(axes, summaries, exported, attack, batch, colours)
        highest = max(s.measured_speedup[batch]["max"] for s in exported)
        draw_chance(axes, summaries)
        accuracy_axis(axes, attack, counts)
        axes.set(
            xlabel=f"measured speed-up over dense, {batch.replace('_', ' ')} (×)",
            xlim=(0, max(2.0, 1.15 * highest)),
        )
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    legend_below(figure, panels[0])
    return save_figure(figure, path)


def _draw_speedup_panel(
    axes: Any,
    summaries: Sequence[RunSummary],
    exported: Sequence[RunSummary],
    attack: str,
    batch: str,
    colours: Mapping[str, str],
) -> dict[str, int | None]:
    counts: dict[str, int | None] = {}
    for summary in (s for s in exported if attack in s.accuracy):
        spread = summary.measured_speedup[batch]
        low, high = spread["median"] - spread["min"], spread["max"] - spread["median"]
        name = fit(summary.path.name or short_method(summary.method))
        counts[name] = summary.examples.get(attack)
        axes.errorbar(
            spread["median"], 100 * summary.accuracy[attack], xerr=[[low], [high]],
            yerr=error_bars([_percent_spread(summary, attack)]), marker="o", capsize=3,
            color=colours.get(short_method(summary.method)), label=with_seeds(name, [summary]),
        )  # fmt: skip
    for dense in (s for s in summaries if is_dense(s) and attack in s.accuracy):
        name = fit(f"dense {short_method(dense.method)}")
        counts[name] = dense.examples.get(attack)
        axes.errorbar(
            1.0, 100 * dense.accuracy[attack], yerr=error_bars([_percent_spread(dense, attack)]),
            marker="s", capsize=3, color=colours.get(short_method(dense.method), "grey"),
            label=with_seeds(name, [dense]),
        )  # fmt: skip
    return counts


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
    styles: Mapping[str, Mapping[str, str]] | None = None,
    examples: Mapping[str, int | None] | None = None,
) -> Path:
    """A line per run over its layers (in the order given: network order), e.g. per-layer
    sparsity or vulnerability; runs of one architecture share their layer names. `deviations`
    (label → layer → standard deviation over seeds) draws error bars; `styles` (label →
    colour and marker) keeps each method's colour; `examples` (label → N), for values measured
    on test examples, puts their N in the axes' title."""
    layers = list(dict.fromkeys(layer for values in series.values() for layer in values))
    factor = 100 if percent else 1
    figure, axes = pyplot().subplots(
        figsize=(max(5.5, 0.45 * len(layers) + 2.5), 4.6), dpi=120, layout="constrained"
    )
    for label, values in series.items():
        positions = [i for i, layer in enumerate(layers) if layer in values]
        errors = (deviations or {}).get(label, {})
        style = {"marker": "o", **(styles or {}).get(label, {})}
        axes.errorbar(
            positions,
            [factor * values[layers[i]] for i in positions],
            yerr=error_bars([factor * errors.get(layers[i], 0.0) for i in positions]),
            capsize=3,
            label=fit(label),
            **style,
        )
    layer_ticks(axes, layers)
    axes.set(xlabel="layer (network order)", ylabel=ylabel)
    if examples is not None:
        axes.set_title(counted_title("", examples), fontsize="medium")
    figure.suptitle(title)
    if percent:
        axes.set_ylim(*PERCENT_RANGE)
    else:
        axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    legend_below(figure, [axes])
    return save_figure(figure, path)


def plot_security_curves(
    runs: Mapping[str, RunSummary],
    train_eps: float | None,
    title: str,
    path: str | Path,
    styles: Mapping[str, Mapping[str, str]] | None = None,
) -> Path:
    """The runs' PGD accuracy against ε on one axes, a line per run with its number of examples
    (in the y label when they share it), the chance level and `train_eps` (if set) marked."""
    figure, axes = pyplot().subplots(figsize=(6.0, 4.8), dpi=120, layout="constrained")
    for label, summary in runs.items():
        curve = summary.security_curve
        axes.errorbar(
            [p["eps"] for p in curve],
            [100 * p["accuracy"] for p in curve],
            yerr=error_bars(_curve_spread(summary)),
            capsize=3,
            label=with_seeds(label, [summary]),
            **{"marker": "o", **(styles or {}).get(label, {})},
        )
    draw_chance(axes, list(runs.values()))
    if train_eps is not None:
        axes.axvline(
            train_eps, color="grey", linestyle="--", linewidth=1, label=f"ε = {train_eps:g}"
        )
    counts = {label: summary.curve_examples for label, summary in runs.items()}
    accuracy_axis(axes, "pgd", counts)
    axes.set(xlabel="ε (L∞, [0, 1] pixels)", xlim=(0, None))
    figure.suptitle(title)
    axes.grid(alpha=0.3)
    legend_below(figure, [axes])
    return save_figure(figure, path)
