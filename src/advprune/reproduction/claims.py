"""What each method claims, checked on a reproduction's own results: the demo's verdict lines.

A claim reads the results.json of the steps it names and says what was measured and whether it
holds: "yes", "no", or "within noise" where the 95 % interval of the two rows' difference still
allows the claim, so that the subset sizes cannot tell. Rows scored on the same test images are
compared example by example (their per-example bits): that interval is two to three times
narrower than one built as if they were independent samples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from torch import Tensor

from advprune.evaluation.statistics import (
    difference_interval,
    paired_difference_interval,
    unpack_bits,
)

Results = Mapping[str, Mapping[str, Any]]  # step name → its results.json


@dataclass(frozen=True)
class Claim:
    """A paper's claim as a check: `measure(results)` → (what was measured, verdict)."""

    text: str
    measure: Callable[[Results], tuple[str, str]]

    def line(self, results: Results) -> str:
        try:
            measured, verdict = self.measure(results)
        except KeyError as missing:  # a step or figure the run did not produce
            measured, verdict = f"not measured ({missing})", "no"
        return f"  {self.text}: {measured} — {verdict}"


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


def units_removed(step: str, at_least: float) -> Claim:
    def measure(results: Results) -> tuple[str, str]:
        removed = results[step]["unit_sparsity"]
        return f"{100 * removed:.1f} %", "yes" if removed >= at_least else "no"

    return Claim(f"{step} removes ≥ {100 * at_least:.0f} % of the units", measure)


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


def speedup(step: str, batch: int, at_least: float) -> Claim:
    def measure(results: Results) -> tuple[str, str]:
        spread = results[step]["measured_speedup"][f"batch_{batch}"]
        median = f"{spread['median']:.2f}"
        if (float(median) >= at_least) != (spread["median"] >= at_least):
            median = f"{spread['median']:.3f}"  # ×1.496 fails 1.5×: do not print it as ×1.50
        measured = f"×{median} (paired, min {spread['min']:.2f})"
        return measured, "yes" if spread["median"] >= at_least else "no"

    return Claim(f"{step} measured batch-{batch} speed-up ≥ {at_least:g}×", measure)


def same_order(steps: Sequence[str], attacks: Sequence[str]) -> Claim:
    """The steps rank alike under every attack, or each pair ranked otherwise is within noise
    (the interval of its difference under that attack holds 0)."""

    def measure(results: Results) -> tuple[str, str]:
        orders = {
            attack: sorted(steps, key=lambda s: -results[s]["accuracy"][attack])
            for attack in attacks
        }
        measured = "; ".join(f"{a}: {' > '.join(order)}" for a, order in orders.items())
        first, *others = attacks

        def ahead(attack: str, one: str, two: str) -> bool:
            return orders[attack].index(one) < orders[attack].index(two)

        for one, two in combinations(steps, 2):
            for attack in others:
                compared = difference(results[one], results[two], attack)
                noise = compared.low <= 0 <= compared.high
                if ahead(attack, one, two) != ahead(first, one, two) and not noise:
                    return measured, "no"
        same = all(orders[attack] == orders[first] for attack in others)
        return measured, "yes" if same else "within noise"

    return Claim(f"{', '.join(steps)} rank alike under {' and '.join(attacks)}", measure)


def verdicts(claims: Sequence[Claim], results: Results) -> list[str]:
    """One line per claim: what it says, what was measured, whether it holds."""
    return [claim.line(results) for claim in claims]
