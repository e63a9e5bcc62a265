"""Runs as tables: markdown and CSV for `advprune report`, plain text for `eval` and `demo`.

Markdown shows "–" where a run's files lack a field; CSV leaves the cell empty, so that numeric
columns stay numeric for a spreadsheet or pandas. CSV holds the raw values (fractions, counts).

An accuracy measured on the first N test examples only reads "62.00/100 [52.2, 70.9]": the
accuracy in %, N, and its Wilson 95 % interval in %, since on a subset the interval is what tells
two rows apart. A row that is the mean over seeds (report.seeds) reads "62.00 ± 1.30": the mean
and the sample standard deviation over its runs, whose number n has a column of its own. Latency
reads "0.48 (0.45–0.52)": the model's time as a multiple of its dense network's, timed in pairs
in one process (median ratio, min–max); absolute times are listed under the table with the
device they were measured on.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from advprune.report.runs import (
    ACCURACY_KEYS,
    EXTRA_ACCURACY_KEYS,
    LATENCY_BATCHES,
    RunSummary,
    summarize,
)
from advprune.report.seeds import spread

MISSING = "–"
ATTACK_HEADERS = {
    "clean": "clean",
    "fgsm": "FGSM",
    "pgd": "PGD",
    "cw": "CW",
    "autoattack": "AutoAttack",
    "transfer": "transfer",
    "fmn": "FMN",
    "pgd_eot": "EOT-PGD (sampled gates)",
    "autoattack_rand": "AutoAttack rand (sampled gates)",
    "worst_case": "worst case",
}
CONSOLE_ATTACKS = ("clean", "fgsm", "pgd", "cw", "autoattack")


def pretty_eps(eps: float) -> str:
    """8/255 rather than 0.03137: the colour datasets' budgets are stated in 255ths."""
    in_255ths = eps * 255
    if 0 < eps < 0.1 and abs(in_255ths - round(in_255ths)) < 1e-6:
        return f"{round(in_255ths)}/255"
    return f"{eps:g}"


def human(value: float) -> str:
    """431080 → 431.1k, 2.29e9 → 2.29G: counts of parameters and FLOPs at a glance."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:g}"


def percent(fraction: float | None) -> str:
    return MISSING if fraction is None else f"{100 * fraction:.1f}%"


def subset_suffix(summary: RunSummary, attack: str) -> str:
    """'/N' when the attack ran on the first N test examples only, not on the whole test set."""
    full, subset = summary.examples.get("clean"), summary.examples.get(attack)
    return f"/{subset}" if subset and full and subset != full else ""


def speedup(summary: RunSummary, batch: str = "batch_128") -> str:
    """The measured speed-up: median of the paired ratios (min–max); over seeds, the mean of the
    runs' medians ± their standard deviation."""
    ratios = summary.measured_speedup.get(batch)
    if ratios is None:
        return MISSING
    if summary.members:
        return _with_spread(summary, lambda s: _median_speedup(s, batch), ".2f") + "×"
    return f"{ratios['median']:.2f}× ({ratios['min']:.2f}–{ratios['max']:.2f})"


def _median_speedup(summary: RunSummary, batch: str) -> float | None:
    return summary.measured_speedup.get(batch, {}).get("median")


def masking_check(summary: RunSummary) -> str:
    if summary.masking_check_passed is None:
        return MISSING
    return "passed" if summary.masking_check_passed else "FAILED"


def indicators(summary: RunSummary) -> str:
    if summary.indicators_passed is None:
        return MISSING
    return (
        "passed" if summary.indicators_passed else "FAILED: " + ", ".join(summary.failed_indicators)
    )


def at_chance(summary: RunSummary) -> str:
    return MISSING if summary.at_chance is None else "AT CHANCE" if summary.at_chance else "no"


def _with_spread(
    summary: RunSummary, value: Callable[[RunSummary], float | None], form: str, factor: float = 1
) -> str:
    """ "62.00 ± 1.30": `value` and its standard deviation over the seeds; "–" if absent."""
    mean = value(summary)
    if mean is None:
        return MISSING
    std = spread(summary, value)
    cell = f"{factor * mean:{form}}"
    return cell if std is None else f"{cell} ± {factor * std:{form}}"


def latency_ratio(summary: RunSummary, batch: int) -> str:
    """ "0.48 (0.45–0.52)": the model's latency over its dense network's, median and range;
    over seeds, the mean ratio ± its standard deviation."""
    entry = summary.latency_ratio.get(batch)
    if entry is None:
        return MISSING
    if summary.members:
        return _with_spread(summary, lambda s: (s.latency_ratio.get(batch) or (None,))[0], ".2f")
    ratio, low, high = entry
    return f"{ratio:.2f}" + (
        f" ({low:.2f}–{high:.2f})" if low is not None and high is not None else ""
    )


def _or_missing(value: Any, form: Callable[[Any], str]) -> str:
    return MISSING if value is None else form(value)


MarkdownColumn = tuple[str, Callable[[RunSummary], str]]


def accuracy_cell(summary: RunSummary, attack: str, with_count: bool = False) -> str:
    """ "66.35", or on a subset "60.00/64 [47.8, 71.1]" (the Wilson 95 % interval in %); over
    seeds "66.35 ± 0.80" (the standard deviation over the runs, in %). `with_count` adds the
    number of examples to every cell ("66.35/500"), for a column whose rows differ in it."""
    value = summary.accuracy.get(attack)
    if value is None:
        return MISSING
    count = summary.examples.get(attack)
    if summary.members:
        cell = _with_spread(summary, lambda s: s.accuracy.get(attack), ".2f", 100)
        return f"{cell} (N={count})" if with_count and count else cell
    suffix = subset_suffix(summary, attack) or (f"/{count}" if with_count and count else "")
    interval = summary.intervals.get(attack)
    if subset_suffix(summary, attack) and interval is not None:
        suffix += f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
    return f"{100 * value:.2f}{suffix}"


def _accuracy_column(attack: str) -> MarkdownColumn:
    return ATTACK_HEADERS[attack], lambda summary: accuracy_cell(summary, attack)


def _counted_accuracy_column(attack: str, summaries: Sequence[RunSummary]) -> MarkdownColumn:
    """The column of `attack` saying how many test examples each accuracy rests on: in the
    header when every row used the same number ("PGD (N=500)"), else in each cell."""
    counts = {s.examples.get(attack) for s in summaries if attack in s.accuracy}
    if len(counts) == 1 and None not in counts:
        header = f"{ATTACK_HEADERS[attack]} (N={counts.pop()})"
        return header, lambda summary: accuracy_cell(summary, attack)
    return ATTACK_HEADERS[attack], lambda summary: accuracy_cell(summary, attack, True)


MARKDOWN_COLUMNS: list[MarkdownColumn] = [
    ("method", lambda s: s.method or MISSING),
    ("dataset", lambda s: s.dataset or MISSING),
    ("model", lambda s: s.model or MISSING),
    ("ε", lambda s: _or_missing(s.eps, pretty_eps)),
    ("sparsity", lambda s: percent(s.sparsity)),
    ("unit sparsity", lambda s: percent(s.unit_sparsity)),
    ("channel sparsity", lambda s: percent(s.channel_sparsity)),
    ("params ≠ 0", lambda s: _or_missing(s.nonzero_params, human)),
    ("FLOPs", lambda s: _or_missing(s.flops, human)),
    *(
        (f"latency b{batch} × dense", lambda s, b=batch: latency_ratio(s, b))
        for batch in LATENCY_BATCHES
    ),
    ("speed-up b1", lambda s: speedup(s, "batch_1")),
    ("speed-up b128", speedup),
    *(_accuracy_column(attack) for attack in ACCURACY_KEYS),
    ("vulnerability", lambda s: _with_spread(s, lambda run: run.vulnerability, ".3f")),
    ("masking check", masking_check),
    ("indicators", indicators),
    ("at chance", at_chance),
]


def markdown_columns(summaries: Sequence[RunSummary]) -> list[MarkdownColumn]:
    """The fixed columns, with the accuracies of the extra attacks (FMN, sampled gates, worst
    case) after the others where some run has them, and n (the runs of a row over seeds) after
    the model where a row has several. Each accuracy column says its number of examples."""
    header_attacks = {ATTACK_HEADERS[attack]: attack for attack in ACCURACY_KEYS}
    extra = [a for a in EXTRA_ACCURACY_KEYS if any(a in s.accuracy for s in summaries)]
    headers = [header for header, _ in MARKDOWN_COLUMNS]
    columns = [
        _counted_accuracy_column(header_attacks[header], summaries)
        if header in header_attacks
        else column
        for header, column in zip(headers, MARKDOWN_COLUMNS, strict=True)
    ]
    position = headers.index("vulnerability")
    columns[position:position] = [_counted_accuracy_column(a, summaries) for a in extra]
    if any(s.members for s in summaries):
        position = headers.index("model") + 1
        columns[position:position] = [("n", lambda s: str(len(s.members) or 1))]
    return columns


CSV_COLUMNS: list[tuple[str, Callable[[RunSummary], Any]]] = [
    ("method", lambda s: s.method),
    ("dataset", lambda s: s.dataset),
    ("model", lambda s: s.model),
    ("eps", lambda s: s.eps),
    ("sparsity", lambda s: s.sparsity),
    ("unit_sparsity", lambda s: s.unit_sparsity),
    ("params", lambda s: s.params),
    ("nonzero_params", lambda s: s.nonzero_params),
    ("flops", lambda s: s.flops),
    ("latency_ms", lambda s: s.latency_ms),
    ("memory_fraction", lambda s: s.memory_fraction),
    ("flops_speedup", lambda s: s.flops_speedup),
    *((attack, lambda s, a=attack: s.accuracy.get(a)) for attack in ACCURACY_KEYS),
    *((f"{attack}_examples", lambda s, a=attack: s.examples.get(a)) for attack in ACCURACY_KEYS),
    ("vulnerability", lambda s: s.vulnerability),
    ("masking_check_passed", lambda s: s.masking_check_passed),
    # Added after the columns above, so that scripts reading columns by position keep working.
    *((attack, lambda s, a=attack: s.accuracy.get(a)) for attack in EXTRA_ACCURACY_KEYS),
    *(
        (f"{attack}_examples", lambda s, a=attack: s.examples.get(a))
        for attack in EXTRA_ACCURACY_KEYS
    ),
    *(
        (f"{attack}_ci_{end}", lambda s, a=attack, i=i: _interval_end(s, a, i))
        for attack in (*ACCURACY_KEYS, *EXTRA_ACCURACY_KEYS)
        for i, end in enumerate(("low", "high"))
    ),
    *(
        (f"latency_ratio_b{batch}{part}", lambda s, b=batch, i=i: _ratio_part(s, b, i))
        for batch in LATENCY_BATCHES
        for i, part in enumerate(("", "_min", "_max"))
    ),
    ("latency_device", lambda s: s.latency_device),
    ("indicators_passed", lambda s: s.indicators_passed),
    ("at_chance", lambda s: s.at_chance),
    ("protocol", lambda s: s.protocol),
    ("channel_sparsity", lambda s: s.channel_sparsity),
    *((f"speedup_{b}", lambda s, b=b: _median_speedup(s, f"batch_{b}")) for b in (1, 128)),
]


def _interval_end(summary: RunSummary, attack: str, end: int) -> float | None:
    interval = summary.intervals.get(attack)
    return None if interval is None else interval[end]


def _ratio_part(summary: RunSummary, batch: int, part: int) -> float | None:
    entry = summary.latency_ratio.get(batch)
    return None if entry is None else entry[part]


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|")


def markdown_table(summaries: Sequence[RunSummary], labels: Sequence[str]) -> str:
    """One row per run: accuracies in %, '/N [low, high]' for an attack run on the first N test
    examples (with its 95 % interval)."""
    columns = markdown_columns(summaries)
    headers = ["run", *(header for header, _ in columns)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for label, summary in zip(labels, summaries, strict=True):
        cells = [label, *(cell(summary) for _, cell in columns)]
        lines.append("| " + " | ".join(map(_escape, cells)) + " |")
    return "\n".join(lines)


def csv_table(summaries: Sequence[RunSummary], labels: Sequence[str]) -> str:
    """One row per run with raw values (accuracies and sparsities as fractions); empty: absent."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", *(name for name, _ in CSV_COLUMNS)])
    for label, summary in zip(labels, summaries, strict=True):
        values = [value(summary) for _, value in CSV_COLUMNS]
        writer.writerow([label, *("" if v is None else v for v in values)])
    return buffer.getvalue()


def format_results(results: Sequence[Mapping[str, Any]]) -> str:
    """Results dicts (results.json) as the plain-text table `advprune eval` and `demo` print."""
    summaries = [summarize(result, str(result.get("run", "?"))) for result in results]
    header = f"{'run':<28} {'params':>10} {'sparsity':>8} " + " ".join(
        f"{attack:>11}" for attack in CONSOLE_ATTACKS
    )
    lines = [header, "-" * len(header)]
    for summary in summaries:
        cells = []
        for attack in CONSOLE_ATTACKS:
            value = summary.accuracy.get(attack)
            if value is None:
                cells.append(f"{MISSING:>11}")
            else:
                cells.append(f"{100 * value:>6.2f}{subset_suffix(summary, attack):>5}")
        params = _or_missing(summary.params, str)
        lines.append(
            f"{str(summary.path)[-28:]:<28} {params:>10} {percent(summary.sparsity):>8} "
            + " ".join(cells)
        )
    eps = summaries[0].eps if summaries else None
    lines.append(
        f"accuracy in % at eps {_or_missing(eps, lambda v: f'{v:g}')}; '/N': on the first N test "
        "examples only"
    )
    return "\n".join(lines)
