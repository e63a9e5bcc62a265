"""`advprune report DIR... --out OUT`: report.md, report.csv and PNG figures from run directories.

Everything comes from the runs' files (see `report.runs`); nothing is trained or evaluated again.
Figures are drawn per (dataset, model), since curves of different networks do not share axes.
Runs of a step over seeds (ROOT/seed-S/STEP, as `reproduce --seeds` writes them) get a table of
their own, one row per step with the mean ± standard deviation and n (report.seeds, also as
report-seeds.csv), and the figures draw those rows, with error bars for the spread.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from advprune.core.errors import ConfigError
from advprune.core.io import atomic_write_text
from advprune.report.plots import (
    method_colours,
    plot_layer_values,
    plot_robust_vs_sparsity,
    plot_robust_vs_speedup,
    plot_security_curves,
    run_styles,
)
from advprune.report.runs import RunSummary, find_runs, read_run
from advprune.report.seeds import (
    aggregate,
    csv_over_seeds,
    layer_sparsity_of,
    layer_spread,
    seed_groups,
)
from advprune.report.table import MISSING, csv_table, markdown_table, pretty_eps

Group = list[tuple[str, RunSummary]]
FIGURE_CAPTION = (
    "In the figures a method is named without its settings (the table's method column gives "
    "them in full) and a run by its folder; each method has one colour in every figure; N is the "
    "number of test examples an accuracy rests on (in each panel's title)."
)


def run_labels(runs: Sequence[Path]) -> list[str]:
    """Each run's directory name, or where runs share a name the fewest last parts of its path
    that tell them apart (seed-0/dense, seed-1/dense)."""
    labels = []
    for run in runs:
        for parts in range(1, len(run.parts) + 1):
            tail = Path(*run.parts[-parts:])
            if sum(Path(*other.parts[-parts:]) == tail for other in runs) == 1:
                break
        labels.append(tail.as_posix() if parts < len(run.parts) else str(run))
    return labels


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "runs"


def _groups(labels: Sequence[str], summaries: Sequence[RunSummary]) -> dict[str, Group]:
    groups: dict[str, Group] = {}
    for label, summary in zip(labels, summaries, strict=True):
        key = f"{summary.dataset or MISSING} {summary.model or MISSING}"
        groups.setdefault(key, []).append((label, summary))
    return groups


def _common_eps(group: Group) -> float | None:
    values = {summary.eps for _, summary in group}
    return values.pop() if len(values) == 1 else None


Drawer = tuple[str, str, Callable[[Path], "Path | None"], str]  # caption, stem, draw, missing


def _figures(
    group_name: str, group: Group, out: Path, colours: Mapping[str, str]
) -> list[tuple[str, Path | None, str]]:
    """(caption, file or None, why it is missing) for each figure of one (dataset, model);
    `colours` gives each method its colour in every figure."""
    slug = _slug(group_name)
    summaries = [summary for _, summary in group]
    curves = {label: s for label, s in group if s.security_curve}
    styles = run_styles(dict(group), colours)
    drawers: list[Drawer] = [
        (
            "robust accuracy against sparsity",
            "robust_vs_sparsity",
            lambda path: plot_robust_vs_sparsity(summaries, group_name, path, colours),
            "no pruned run with a robust accuracy",
        ),
        (
            "robust accuracy against measured speed-up",
            "robust_vs_speedup",
            lambda path: plot_robust_vs_speedup(summaries, group_name, path, colours=colours),
            "no exported run (structured or ANP-VS) with a measured speed-up",
        ),
        (
            "security curves",
            "security_curves",
            lambda path: (
                plot_security_curves(curves, _common_eps(group), group_name, path, styles)
                if curves
                else None
            ),
            "no run has a security curve (gradient_masking_check in results.json)",
        ),
        *_layer_figures(group_name, group, styles),
    ]
    return [
        (caption, draw(out / f"{stem}-{slug}.png"), missing)
        for caption, stem, draw, missing in drawers
    ]


def _layer_figures(
    group_name: str, group: Group, styles: Mapping[str, Mapping[str, str]]
) -> list[Drawer]:
    """The per-layer figures: sparsity and vulnerability, with their spread over seeds, the
    layers in network order under their display names (conv1, fc1)."""
    names = next((s.layer_names for _, s in group if s.layer_names), {})
    sparsities = {label: layer_sparsity_of(s) for label, s in group}
    sparsities = {label: v for label, v in sparsities.items() if any(v.values())}
    vulnerabilities = {label: s.layer_vulnerability for label, s in group if s.layer_vulnerability}
    values = {"sparsity": sparsities, "vulnerability": vulnerabilities}
    spreads = {
        "sparsity": {label: layer_spread(s, layer_sparsity_of) for label, s in group},
        "vulnerability": {
            label: layer_spread(s, lambda run: run.layer_vulnerability) for label, s in group
        },
    }
    examples = {
        "sparsity": None,  # weights, not test examples
        "vulnerability": {
            label: s.vulnerability_examples for label, s in group if s.layer_vulnerability
        },
    }

    def draw(kind: str, axis: str, percent: bool) -> Callable[[Path], Path | None]:
        def plot(path: Path) -> Path | None:
            if not values[kind]:
                return None
            return plot_layer_values(
                in_network_order(values[kind], names), axis, group_name, path, percent=percent,
                deviations=in_network_order(spreads[kind], names), styles=styles,
                examples=examples[kind],
            )  # fmt: skip

        return plot

    return [
        (
            "per-layer sparsity",
            "layer_sparsity",
            draw("sparsity", "zero weights (%)", percent=True),
            "no run has zero weights in model.safetensors",
        ),
        (
            "per-layer vulnerability",
            "layer_vulnerability",
            draw("vulnerability", "vulnerability E|z(x) − z(x̃)|", percent=False),
            "no run has a per-layer vulnerability (vulnerability.per_layer in results.json)",
        ),
    ]


def in_network_order(
    per_run: Mapping[str, Mapping[str, float]], names: Mapping[str, str]
) -> dict[str, dict[str, float]]:
    """Each run's per-layer values keyed by display name, in network order (`names`: module
    name → display name, in that order); layers `names` lacks keep their module names, after."""
    order = {module: position for position, module in enumerate(names)}
    return {
        label: {
            names.get(layer, layer): value
            for layer, value in sorted(values.items(), key=lambda item: order.get(item[0], 1e9))
        }
        for label, values in per_run.items()
    }


def _seed_section(labels: Sequence[str], summaries: Sequence[RunSummary]) -> list[str]:
    """The table of the steps run with several seeds, before the table of every run."""
    if not summaries:
        return []
    return [
        "## Over seeds",
        "",
        f"{len(summaries)} step(s) run with several seeds (ROOT/seed-S/STEP): each figure is the "
        "mean over the step's n runs ± their sample standard deviation (accuracies in %); a "
        "check passes only if it passed in every run. Each run is in the next table, with its "
        "own intervals.",
        "",
        markdown_table(summaries, labels),
        "",
        "## Every run",
        "",
    ]


def _markdown(
    title: str,
    labels: Sequence[str],
    summaries: Sequence[RunSummary],
    figures: dict[str, list[tuple[str, Path | None, str]]],
    over_seeds: tuple[Sequence[str], Sequence[RunSummary]] = ((), ()),
) -> str:
    lines = [
        f"# {title}",
        "",
        f"{len(summaries)} run(s), read from their run directories: config.yaml, results.json and "
        "model.safetensors. Accuracies in % at the run's ε, on the number of test examples N "
        "that the column header gives (N=…) or, where rows differ, each cell (/N); '[low, "
        "high]': an attack run on fewer examples than clean, with the Wilson 95 % interval in "
        "%; worst case: examples every "
        "attack left correct; sparsity: zero conv/linear weights; unit sparsity: "
        "units/channels removed; channel sparsity: channels of the dependency groups removed "
        "(structured runs, ANP-VS); params ≠ 0: parameters that are not zero; latency × dense: "
        "the model's time over its dense network's, timed in pairs (median, min–max); speed-up "
        "bN: the exported network against the dense one at batch N, the same pairs inverted; "
        "indicators: the attack-failure indicators (Pintor et al., 2022); at chance: clean "
        "accuracy ≤ 1.5/classes or a layer with every unit removed, so robust accuracies mean "
        "nothing; '–': not in the run's files.",
        "",
        *_seed_section(*over_seeds),
        markdown_table(summaries, labels),
        "",
        *_absolute_latency(labels, summaries),
    ]
    descriptions = {}
    for summary in summaries:
        for attack, description in summary.attack_descriptions.items():
            descriptions.setdefault((attack, description, summary.eps), None)
    if descriptions:
        lines += ["Attacks:", ""]
        lines += [
            f"- {attack}: {description}" + (f" (ε = {pretty_eps(eps)})" if eps is not None else "")
            for attack, description, eps in descriptions
        ]
        lines.append("")
    for group_name, group_figures in figures.items():
        lines += [f"## {group_name}", "", FIGURE_CAPTION, ""]
        for caption, path, missing in group_figures:
            if path is None:
                lines.append(f"- {caption}: not drawn, {missing}")
            else:
                lines.append(f"![{caption}]({path.name})")
        lines.append("")
    return "\n".join(lines)


def _absolute_latency(labels: Sequence[str], summaries: Sequence[RunSummary]) -> list[str]:
    """Absolute latencies, each beside the device it was measured on: they compare only there."""
    lines = []
    for label, summary in zip(labels, summaries, strict=True):
        parts = []
        for batch, (timed, dense) in summary.latency_absolute.items():
            against = f" (dense {dense:.3g} ms)" if dense is not None else ""
            parts.append(f"batch {batch} {timed:.3g} ms{against}")
        if parts:
            lines.append(f"- {label}: {', '.join(parts)} on {summary.latency_device or 'cpu'}")
    return (
        ["Absolute latency (comparable only on the same device):", "", *lines, ""] if lines else []
    )


def write_report(
    run_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    title: str = "advprune report",
    results_names: Mapping[Path, str] | None = None,
) -> Path:
    """Write OUT/report.md, OUT/report.csv and the figures for the runs in (or below) `run_dirs`;
    returns the path of report.md. A run reads results.json, or the results file that
    `results_names` gives for its directory (an evaluation at another ε or under a protocol)."""
    found = find_runs(list(run_dirs))
    names = {Path(path).resolve(): name for path, name in (results_names or {}).items()}
    all_labels = run_labels(found)
    unfinished = [label for label, run in zip(all_labels, found, strict=True) if not _holds(run)]
    runs = [run for run in found if _holds(run)]
    labels = [label for label in all_labels if label not in unfinished]
    summaries = [read_run(run, names.get(Path(run).resolve(), "results.json")) for run in runs]
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; pass a directory for the report")
    atomic_write_text(out_dir / "report.csv", csv_table(summaries, labels))
    seed_labels, seeded, drawn = _over_seeds(runs, labels, summaries)
    if seeded:
        atomic_write_text(out_dir / "report-seeds.csv", csv_over_seeds(seeded, seed_labels))
    else:  # a report written again without seeds must not keep an old table of them
        (out_dir / "report-seeds.csv").unlink(missing_ok=True)
    groups = _groups(*zip(*drawn, strict=True)) if drawn else {}
    colours = method_colours([summary for _, summary in drawn])
    figures = {name: _figures(name, group, out_dir, colours) for name, group in groups.items()}
    markdown = _markdown(title, labels, summaries, figures, (seed_labels, seeded))
    return atomic_write_text(out_dir / "report.md", markdown + _unfinished(unfinished))


def _holds(run: Path) -> bool:
    """Whether a run has a result to show: a model or an evaluation. A run that crashed or is
    still in its first epoch holds only config.yaml (and perhaps a checkpoint)."""
    return (run / "model.safetensors").is_file() or (run / "results.json").is_file()


def _unfinished(labels: Sequence[str]) -> str:
    if not labels:
        return ""
    return (
        f"\n## Not finished\n\n{len(labels)} run(s) hold no model and no results yet (only "
        "config.yaml: crashed, stopped or still training), so they are not in the table: "
        + ", ".join(labels)
        + ". Finish one by running the command that started it again (with --resume for "
        "`train`).\n"
    )


def _over_seeds(
    runs: Sequence[Path], labels: Sequence[str], summaries: Sequence[RunSummary]
) -> tuple[list[str], list[RunSummary], list[tuple[str, RunSummary]]]:
    """The steps run with several seeds as one summary each (with their labels), and what the
    figures draw: those, and every run that is not one of them."""
    groups = seed_groups(runs)
    seeded = [aggregate([summaries[i] for i in members], step) for step, members in groups.items()]
    seed_labels = run_labels(list(groups))
    grouped = {i for members in groups.values() for i in members}
    drawn = list(zip(seed_labels, seeded, strict=True)) + [
        (label, summary)
        for i, (label, summary) in enumerate(zip(labels, summaries, strict=True))
        if i not in grouped
    ]
    return seed_labels, seeded, drawn
