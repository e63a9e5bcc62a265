"""What each method claims, checked on a reproduction's own results: the demo's verdict lines.

A claim reads the results.json of the steps it names and says what was measured and whether it
holds: "yes", "no", or "within noise" where two rows' 95 % Wilson intervals overlap, so that the
subset sizes cannot tell them apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from advprune.evaluation.statistics import wilson_interval

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


def _overlap(a: tuple[float, int], b: tuple[float, int]) -> bool:
    (low_a, high_a), (low_b, high_b) = (wilson_interval(round(p * n), n) for p, n in (a, b))
    return low_a <= high_b and low_b <= high_a


def units_removed(step: str, at_least: float) -> Claim:
    def measure(results: Results) -> tuple[str, str]:
        removed = results[step]["unit_sparsity"]
        return f"{100 * removed:.1f} %", "yes" if removed >= at_least else "no"

    return Claim(f"{step} removes ≥ {100 * at_least:.0f} % of the units", measure)


def within(step: str, reference: str, attack: str, points: float) -> Claim:
    """`step`'s accuracy under `attack` at most `points` pp below `reference`'s."""

    def measure(results: Results) -> tuple[str, str]:
        ours, theirs = _accuracy(results[step], attack), _accuracy(results[reference], attack)
        gap = 100 * (ours[0] - theirs[0])
        measured = f"{100 * ours[0]:.2f} against {100 * theirs[0]:.2f} ({gap:+.2f} pp)"
        if gap >= -points:
            return measured, "yes"
        return measured, "within noise" if _overlap(ours, theirs) else "no"

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
    """The steps rank alike under every attack, or each pair ranked otherwise is within noise."""

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
                pair = _accuracy(results[one], attack), _accuracy(results[two], attack)
                if ahead(attack, one, two) != ahead(first, one, two) and not _overlap(*pair):
                    return measured, "no"
        same = all(orders[attack] == orders[first] for attack in others)
        return measured, "yes" if same else "within noise"

    return Claim(f"{', '.join(steps)} rank alike under {' and '.join(attacks)}", measure)


def verdicts(claims: Sequence[Claim], results: Results) -> list[str]:
    """One line per claim: what it says, what was measured, whether it holds."""
    return [claim.line(results) for claim in claims]
