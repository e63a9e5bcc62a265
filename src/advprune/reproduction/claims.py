"""What each method claims, checked on a reproduction's own results: the demo's verdict lines.

A claim reads the results.json of the steps it names and says what was measured and whether it
holds: "yes", "no", or "within noise" where the 95 % interval of the two rows' difference still
allows the claim, so that the subset sizes cannot tell. Rows scored on the same test images are
compared example by example (their per-example bits): that interval is two to three times
narrower than one built as if they were independent samples. A figure that depends on the
machine (a measured speed-up) is shown with no verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from advprune.evaluation.statistics import (
    difference_interval,
    paired_difference_interval,
    unpack_bits,
    wilson_interval,
)

Results = Mapping[str, Mapping[str, Any]]  # step name → its results.json


@dataclass(frozen=True)
class Claim:
    """A paper's claim as a check: `measure(results)` → (what was measured, verdict)."""

    text: str
    measure: Callable[[Results], tuple[str, str | None]]  # verdict None: a figure, no claim

    def line(self, results: Results) -> str:
        try:
            measured, verdict = self.measure(results)
        except KeyError as missing:  # a step or figure the run did not produce
            measured, verdict = f"not measured ({missing})", "no"
        return f"  {self.text}: {measured}" + ("" if verdict is None else f" — {verdict}")


def _accuracy(run: Mapping[str, Any], attack: str) -> tuple[float, int]:
    return run["accuracy"][attack], run["examples"][attack]


def _bits(run: Mapping[str, Any], attack: str) -> Tensor | None:
    bits = run.get("per_example", {}).get("correct", {}).get(attack)
    return None if bits is None else unpack_bits(bits, run["examples"][attack])


@dataclass(frozen=True)
class Difference:
    """Two rows' accuracies on the images they are compared on, and the 95 % interval of
    `first` − `second`."""

    first: float
    second: float
    images: str  # what they were compared on: "1,000 images", or two subsets unpaired
    low: float
    high: float

    @property
    def gap(self) -> float:
        return self.first - self.second


def difference(one: Mapping[str, Any], two: Mapping[str, Any], attack: str) -> Difference:
    """`one`'s accuracy under `attack` against `two`'s.

    Paired on the test images both rows were scored on (each subset is the first N test images)
    where both carry their per-example bits; as independent samples otherwise.
    """
    first, second = _bits(one, attack), _bits(two, attack)
    if first is None or second is None:
        (p1, n1), (p2, n2) = _accuracy(one, attack), _accuracy(two, attack)
        low, high = difference_interval((round(p1 * n1), n1), (round(p2 * n2), n2))
        return Difference(p1, p2, f"{n1:,} and {n2:,} images, unpaired", low, high)
    shared = min(len(first), len(second))
    first, second = first[:shared], second[:shared]
    low, high = paired_difference_interval(first, second)
    return Difference(
        float(first.float().mean()), float(second.float().mean()), f"{shared:,} images", low, high
    )


def units_removed(step: str, at_least: float, paper: float) -> Claim:
    """`step` removes at least the fraction `at_least` of its units; `paper`: the paper's own."""

    def measure(results: Results) -> tuple[str, str]:
        removed = results[step]["unit_sparsity"]
        return f"{100 * removed:.1f} %", "yes" if removed >= at_least else "no"

    return Claim(
        f"{step} removes ≥ {100 * at_least:.0f} % of the units (paper: {100 * paper:.2f} %)",
        measure,
    )


def fewer_flops(step: str, paper: float) -> Claim:
    """`step`'s exported network needs at most twice the share of the dense FLOPs that the paper
    reports (it reports ×`paper` fewer)."""

    def measure(results: Results) -> tuple[str, str]:
        fewer = results[step]["flops_speedup"]
        return f"×{fewer:.2f} fewer", "yes" if fewer >= paper / 2 else "no"

    return Claim(f"{step} FLOPs within 2× of the paper's ×{paper:g} fewer", measure)


def less_memory(step: str, paper: float) -> Claim:
    """`step`'s exported network takes at most twice the paper's share `paper` of the dense
    network's memory."""

    def measure(results: Results) -> tuple[str, str]:
        share = results[step]["memory_fraction"]
        return f"{100 * share:.2f} % of dense", "yes" if share <= 2 * paper else "no"

    return Claim(f"{step} memory within 2× of the paper's {100 * paper:g} % of dense", measure)


def within(step: str, reference: str, attack: str, points: float) -> Claim:
    """`step`'s accuracy under `attack` at most `points` pp below `reference`'s."""

    def measure(results: Results) -> tuple[str, str]:
        compared = difference(results[step], results[reference], attack)
        gap, high = 100 * compared.gap, 100 * compared.high
        measured = (
            f"{100 * compared.first:.2f} against {100 * compared.second:.2f} on "
            f"{compared.images} ({gap:+.2f} pp, 95 % interval "
            f"{100 * compared.low:+.1f} to {high:+.1f})"
        )
        if gap >= -points:
            return measured, "yes"
        return measured, "within noise" if high >= -points else "no"

    return Claim(f"{step} {attack} within {points:g} pp of {reference}", measure)


def speedup(step: str, batches: Sequence[int]) -> Claim:
    """`step`'s measured speed-up over the dense network, shown without a verdict: it depends on
    the machine, and the papers report FLOPs, not time."""

    def measure(results: Results) -> tuple[str, None]:
        measured = results[step]["measured_speedup"]
        figures = [
            f"batch {batch} ×{measured[f'batch_{batch}']['median']:.2f} "
            f"(min {measured[f'batch_{batch}']['min']:.2f})"
            for batch in batches
        ]
        return f"{', '.join(figures)}; paired, on {measured.get('device', 'this machine')}", None

    return Claim(
        f"{step} measured speed-up over dense (no claim: it depends on the machine)", measure
    )


def at_least(step: str, other: str, attack: str) -> Claim:
    """`step` is at least as accurate as `other` under `attack` ("within noise" where the
    interval of their difference reaches zero)."""

    def measure(results: Results) -> tuple[str, str]:
        compared = difference(results[step], results[other], attack)
        measured = (
            f"{100 * compared.first:.2f} against {100 * compared.second:.2f} on "
            f"{compared.images} ({100 * compared.gap:+.2f} pp, 95 % interval "
            f"{100 * compared.low:+.1f} to {100 * compared.high:+.1f})"
        )
        if compared.gap >= 0:
            return measured, "yes"
        return measured, "within noise" if compared.high >= 0 else "no"

    return Claim(f"{step} {attack} ≥ {other}", measure)


def alive(run: Mapping[str, Any], attack: str, classes: int = 10) -> bool:
    """The 95 % interval of `run`'s accuracy under `attack` lies above chance (1 / `classes`)."""
    accuracy, examples = _accuracy(run, attack)
    return wilson_interval(round(accuracy * examples), examples)[0] > 1 / classes


def above_chance(step: str, attack: str, classes: int = 10) -> Claim:
    """`step` is alive under `attack`: see `alive`."""

    def measure(results: Results) -> tuple[str, str]:
        accuracy, examples = _accuracy(results[step], attack)
        low, high = wilson_interval(round(accuracy * examples), examples)
        measured = (
            f"{100 * accuracy:.2f} % on {examples:,} images (95 % interval "
            f"{100 * low:.1f}–{100 * high:.1f}; chance {100 / classes:g} %)"
        )
        return measured, "yes" if alive(results[step], attack, classes) else "no"

    return Claim(f"{step} {attack} above chance", measure)


def verdicts(claims: Sequence[Claim], results: Results) -> list[str]:
    """One line per claim: what it says, what was measured, whether it holds."""
    return [claim.line(results) for claim in claims]
