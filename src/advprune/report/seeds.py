"""A recipe step run with several seeds as one row: each figure's mean over the runs, its sample
standard deviation beside it, and the number of runs n.

`advprune reproduce --seeds 0,1,2` puts the run of step STEP with seed S in ROOT/seed-S/STEP.
`seed_groups` finds that layout among a report's runs, whoever made them, and `aggregate` turns
each group into one `RunSummary` whose figures are the means and whose `members` are the runs,
from which `spread` gives the standard deviation that a table cell or an error bar shows. The
seeds' spread is the variation a reader needs to tell two methods apart; a single run instead
shows the binomial interval of each accuracy on a subset (report.table).
"""

from __future__ import annotations

import csv
import io
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from advprune.report.runs import (
    ACCURACY_KEYS,
    EXTRA_ACCURACY_KEYS,
    LATENCY_BATCHES,
    RunSummary,
    layer_sparsity,
)

SEED_DIRECTORY = re.compile(r"seed-(\d+)")


def seed_groups(runs: Sequence[Path]) -> dict[Path, list[int]]:
    """ROOT/STEP → the positions in `runs` of its runs ROOT/seed-S/STEP, for every step with
    runs of two seeds or more (one seed is a run like any other)."""
    groups: dict[Path, list[int]] = {}
    for index, run in enumerate(runs):
        if SEED_DIRECTORY.fullmatch(run.parent.name):
            groups.setdefault(run.parent.parent / run.name, []).append(index)
    return {step: indices for step, indices in groups.items() if len(indices) > 1}


def _mean(values: Iterable[float | None]) -> float | None:
    """The mean, or None if any run lacks the value (a mean over fewer runs would hide it)."""
    values = list(values)
    return None if not values or any(v is None for v in values) else statistics.fmean(values)


def _count(values: Iterable[int | None]) -> int | None:
    mean = _mean(values)
    return None if mean is None else round(mean)


def spread(summary: RunSummary, value: Callable[[RunSummary], float | None]) -> float | None:
    """The sample standard deviation of `value` over an aggregate's runs; None for a single run
    or where a run lacks the value."""
    values = [value(member) for member in summary.members]
    if len(values) < 2 or any(v is None for v in values):
        return None
    return statistics.stdev(values)


def _means(dicts: Sequence[dict]) -> dict:
    """Per key present in every dict: the mean of its values."""
    keys = [key for key in dicts[0] if all(key in d for d in dicts)]
    return {key: statistics.fmean(d[key] for d in dicts) for key in keys}


def _all_passed(flags: Sequence[bool | None]) -> bool | None:
    return None if any(flag is None for flag in flags) else all(flags)


def _curve(members: Sequence[RunSummary]) -> list[dict[str, float]]:
    """The mean security curve, where every run measured the same ε."""
    grids = {tuple(point["eps"] for point in m.security_curve) for m in members}
    if len(grids) != 1 or not next(iter(grids)):
        return []
    points = zip(*(m.security_curve for m in members), strict=True)
    return [
        {"eps": row[0]["eps"], "accuracy": statistics.fmean(p["accuracy"] for p in row)}
        for row in points
    ]


def _speedups(members: Sequence[RunSummary]) -> dict[str, dict[str, float]]:
    """Per batch every run measured: the mean of the runs' medians, the lowest and the highest
    of their paired ratios (the standard deviation of the medians is `spread`'s)."""
    batches = [
        b for b in members[0].measured_speedup if all(b in m.measured_speedup for m in members)
    ]
    return {
        batch: {
            "median": statistics.fmean(m.measured_speedup[batch]["median"] for m in members),
            "min": min(m.measured_speedup[batch]["min"] for m in members),
            "max": max(m.measured_speedup[batch]["max"] for m in members),
        }
        for batch in batches
    }


def aggregate(members: Sequence[RunSummary], path: Path) -> RunSummary:
    """One summary of a step's runs over seeds: each figure the mean over the runs (absent if a
    run lacks it), a check passed only if every run passed it, the runs kept in `members`."""
    first = members[0]
    chance = [m.at_chance for m in members]
    return RunSummary(
        path=path,
        method=first.method,
        dataset=first.dataset,
        model=first.model,
        eps=first.eps,
        sparsity=_mean(m.sparsity for m in members),
        unit_sparsity=_mean(m.unit_sparsity for m in members),
        channel_sparsity=_mean(m.channel_sparsity for m in members),
        measured_speedup=_speedups(members),
        params=_count(m.params for m in members),
        nonzero_params=_count(m.nonzero_params for m in members),
        flops=_count(m.flops for m in members),
        latency_ms=_mean(m.latency_ms for m in members),
        memory_fraction=_mean(m.memory_fraction for m in members),
        flops_speedup=_mean(m.flops_speedup for m in members),
        accuracy=_means([m.accuracy for m in members]),
        examples={
            k: min(m.examples[k] for m in members) for k in _means([m.examples for m in members])
        },
        vulnerability=_mean(m.vulnerability for m in members),
        layer_vulnerability=_means([m.layer_vulnerability for m in members]),
        vulnerability_examples=first.vulnerability_examples,
        layer_names=first.layer_names,
        security_curve=_curve(members),
        masking_check_passed=_all_passed([m.masking_check_passed for m in members]),
        attack_descriptions=first.attack_descriptions,
        latency_ratio={
            batch: (ratio, None, None)
            for batch, ratio in _means(
                [{b: r[0] for b, r in m.latency_ratio.items()} for m in members]
            ).items()
        },
        latency_device=first.latency_device,
        curve_examples=first.curve_examples,
        num_classes=first.num_classes,
        indicators_passed=_all_passed([m.indicators_passed for m in members]),
        failed_indicators=list(dict.fromkeys(i for m in members for i in m.failed_indicators)),
        at_chance=None if all(c is None for c in chance) else any(c is True for c in chance),
        protocol=first.protocol,
        members=list(members),
    )


def layer_sparsity_of(summary: RunSummary) -> dict[str, float]:
    """Per-layer zero fraction of a run's model, or the mean over an aggregate's runs."""
    if summary.members:
        return _means([layer_sparsity(member.path) for member in summary.members])
    return layer_sparsity(summary.path)


def layer_spread(
    summary: RunSummary, values: Callable[[RunSummary], dict[str, float]]
) -> dict[str, float]:
    """Per layer, the standard deviation over an aggregate's runs (empty for a single run)."""
    per_run = [values(member) for member in summary.members]
    if len(per_run) < 2:
        return {}
    layers = [layer for layer in per_run[0] if all(layer in run for run in per_run)]
    return {layer: statistics.stdev(run[layer] for run in per_run) for layer in layers}


def _columns(
    summaries: Sequence[RunSummary],
) -> list[tuple[str, Callable[[RunSummary], float | None]]]:
    """(name, value) for each figure that gets a mean and a standard deviation in the CSV."""
    attacks = [
        attack
        for attack in (*ACCURACY_KEYS, *EXTRA_ACCURACY_KEYS)
        if any(attack in s.accuracy for s in summaries)
    ]
    columns: list[tuple[str, Callable[[RunSummary], float | None]]] = [
        (attack, lambda s, a=attack: s.accuracy.get(a)) for attack in attacks
    ]
    columns += [
        (f"latency_ratio_b{batch}", lambda s, b=batch: (s.latency_ratio.get(b) or (None,))[0])
        for batch in LATENCY_BATCHES
    ]
    columns += [
        (f"speedup_{batch}", lambda s, b=batch: s.measured_speedup.get(b, {}).get("median"))
        for batch in (f"batch_{b}" for b in LATENCY_BATCHES)
    ]
    columns += [
        ("sparsity", lambda s: s.sparsity),
        ("channel_sparsity", lambda s: s.channel_sparsity),
        ("vulnerability", lambda s: s.vulnerability),
    ]
    return columns


def csv_over_seeds(summaries: Sequence[RunSummary], labels: Sequence[str]) -> str:
    """One row per aggregate: n, and each figure's mean and sample standard deviation (raw
    values: accuracies as fractions); empty cells where the runs lack the figure."""
    columns = _columns(summaries)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["step", "n", "method", "dataset", "model", "eps"]
        + [f"{name}_{part}" for name, _ in columns for part in ("mean", "std")]
    )
    for label, summary in zip(labels, summaries, strict=True):
        cells = [label, len(summary.members), summary.method, summary.dataset, summary.model]
        cells.append(summary.eps)
        for _, value in columns:
            cells += [value(summary), spread(summary, value)]
        writer.writerow(["" if cell is None else cell for cell in cells])
    return buffer.getvalue()
