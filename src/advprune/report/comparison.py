"""Paper vs ours: a recipe's published figures beside what our runs measured, with the difference.

A recipe's `paper:` section holds the figures of one table, keyed by the step that reproduces each
row: `rows: {STEP: {metric: value}}` with the metrics below (accuracies and sparsities in %).
`memory` and `flops_speedup` compare a run with its dense network: the run's own figures where it
has them (an exported ANP-VS run measures its dense and exported networks), else its parameters
≠ 0 and FLOPs against those of `reference: STEP`, the paper's 100 % / 1× model.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from advprune.report.runs import RunSummary
from advprune.report.table import ATTACK_HEADERS, MISSING


@dataclass(frozen=True)
class PaperMetric:
    header: str
    ours: Callable[[RunSummary, RunSummary | None], float | None]  # (run, reference run)
    digits: int
    relative: bool = False  # needs the reference run


def _percent(value: float | None) -> float | None:
    return None if value is None else 100 * value


def _accuracy(attack: str) -> PaperMetric:
    return PaperMetric(ATTACK_HEADERS[attack], lambda s, _: _percent(s.accuracy.get(attack)), 2)


def _memory(run: RunSummary, reference: RunSummary | None) -> float | None:
    if run.memory_fraction is not None:
        return 100 * run.memory_fraction
    if reference is None or not reference.nonzero_params or run.nonzero_params is None:
        return None
    return 100 * run.nonzero_params / reference.nonzero_params


def _flops_speedup(run: RunSummary, reference: RunSummary | None) -> float | None:
    if run.flops_speedup is not None:
        return run.flops_speedup
    if reference is None or reference.flops is None or not run.flops:
        return None
    return reference.flops / run.flops


PAPER_METRICS: dict[str, PaperMetric] = {
    **{attack: _accuracy(attack) for attack in ATTACK_HEADERS},
    "vulnerability": PaperMetric("vulnerability", lambda s, _: s.vulnerability, 3),
    "sparsity": PaperMetric("sparsity %", lambda s, _: _percent(s.sparsity), 2),
    "unit_sparsity": PaperMetric("unit sparsity %", lambda s, _: _percent(s.unit_sparsity), 2),
    "channel_sparsity": PaperMetric(
        "channel sparsity %", lambda s, _: _percent(s.channel_sparsity), 2
    ),
    "memory": PaperMetric("memory % (params ≠ 0)", _memory, 2, relative=True),
    "flops_speedup": PaperMetric("× FLOPs", _flops_speedup, 2, relative=True),
}


@dataclass(frozen=True)
class Comparison:
    step: str
    metric: str
    paper: float
    ours: float | None

    @property
    def difference(self) -> float | None:
        return None if self.ours is None else self.ours - self.paper


def compare(
    rows: Mapping[str, Mapping[str, float]],
    runs: Mapping[str, RunSummary],
    reference: str | None = None,
) -> list[Comparison]:
    """One comparison per paper figure; `ours` is None where the step's run lacks the number."""
    reference_run = runs.get(reference) if reference else None
    return [
        Comparison(
            step,
            metric,
            float(paper),
            PAPER_METRICS[metric].ours(runs[step], reference_run) if step in runs else None,
        )
        for step, metrics in rows.items()
        for metric, paper in metrics.items()
    ]


def comparison_markdown(comparisons: list[Comparison]) -> str:
    """A row per step, a column per metric; each cell 'ours / paper (ours − paper)'."""
    metrics = list(dict.fromkeys(c.metric for c in comparisons))
    steps = list(dict.fromkeys(c.step for c in comparisons))
    cells = {(c.step, c.metric): c for c in comparisons}
    headers = ["step", *(PAPER_METRICS[m].header for m in metrics)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for step in steps:
        row = [step]
        for metric in metrics:
            comparison = cells.get((step, metric))
            digits = PAPER_METRICS[metric].digits
            if comparison is None:
                row.append("")
            elif comparison.ours is None:
                row.append(f"{MISSING} / {comparison.paper:.{digits}f}")
            else:
                row.append(
                    f"{comparison.ours:.{digits}f} / {comparison.paper:.{digits}f} "
                    f"({comparison.difference:+.{digits}f})"
                )
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def comparison_csv(comparisons: list[Comparison]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["step", "metric", "paper", "ours", "difference"])
    for c in comparisons:
        writer.writerow(
            [c.step, c.metric, c.paper, *("" if v is None else v for v in (c.ours, c.difference))]
        )
    return buffer.getvalue()
