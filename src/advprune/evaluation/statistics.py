"""What a robust-accuracy number is worth: its 95 % interval, and per-example correctness.

Every accuracy is a count k of n test examples, so it carries binomial uncertainty. The Wilson
score interval (Wilson, 1927) is used rather than p ± 1.96·√(p(1−p)/n): it stays inside [0, 1] and
keeps its coverage at the extremes (0 % robust accuracy at a large ε, 99 % clean accuracy) and on
the small subsets AutoAttack and the checks run on.

Per-example correctness is stored as bits (numpy `packbits`, big-endian bit order, then base64):
10,000 examples take 1,668 characters of results.json. With them two rows evaluated on the same
images can be compared example by example (McNemar's exact test, or an interval for the
difference of their accuracies that uses the pairing), and the worst case over attacks is exact
rather than a minimum of accuracies.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile
BIT_ENCODING = "base64 of numpy.packbits(correct, bitorder='big'); bit i = example i correct"


def wilson_interval(correct: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion correct/total (95 % by default).

    Example: `wilson_interval(62, 100)` → (0.522, 0.709).
    """
    if total <= 0:
        return (0.0, 1.0)
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def pack_bits(correct: Tensor) -> str:
    """A bool vector as the compact string results.json stores (see `BIT_ENCODING`)."""
    bits = np.packbits(correct.detach().cpu().numpy().astype(bool), bitorder="big")
    return base64.b64encode(bits.tobytes()).decode("ascii")


def unpack_bits(text: str, count: int) -> Tensor:
    """The first `count` entries of a vector written by `pack_bits`."""
    bits = np.frombuffer(base64.b64decode(text), dtype=np.uint8)
    return torch.from_numpy(np.unpackbits(bits, count=count, bitorder="big").astype(bool))


def worst_case(correct: Mapping[str, Tensor]) -> tuple[Tensor, list[str]]:
    """Examples every attack left correct, over the examples all of them covered (subsets are the
    first N test examples, so that is the shortest prefix), and the attacks counted."""
    names = sorted(correct, key=lambda name: -len(correct[name]))
    common = min(len(correct[name]) for name in names)
    robust = torch.ones(common, dtype=torch.bool)
    for name in names:
        robust &= correct[name][:common].cpu()
    return robust, names


def mcnemar_p_value(first: Tensor, second: Tensor) -> float:
    """Two-sided exact McNemar test: are two correctness vectors on the same examples (e.g. two
    runs' AutoAttack bits) different beyond chance? Counts only the examples they disagree on.

    Example: `mcnemar_p_value(unpack_bits(a, n), unpack_bits(b, n)) < 0.05`.
    """
    only_first = int((first & ~second).sum())
    only_second = int((second & ~first).sum())
    disagreements = only_first + only_second
    if disagreements == 0:
        return 1.0
    tail = sum(math.comb(disagreements, k) for k in range(min(only_first, only_second) + 1))
    return min(1.0, 2 * tail / 2**disagreements)


def difference_interval(
    first: tuple[int, int], second: tuple[int, int], correlation: float = 0.0, z: float = Z_95
) -> tuple[float, float]:
    """A 95 % interval for p₁ − p₂ from two (correct, total) counts: Newcombe's hybrid score
    interval (Stat. Med. 1998, method 10 of either paper), built from the two Wilson intervals.

    `correlation` is the phi coefficient of the two correctness vectors when both rows were
    scored on the same examples (`paired_difference_interval`); 0 for independent samples. Two
    rows on the same test images agree on most of them, so their difference is far better known
    than their two Wilson intervals side by side suggest.

    Example: `difference_interval((580, 1000), (560, 1000))` → (−0.023, 0.063).
    """
    (k1, n1), (k2, n2) = first, second
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = wilson_interval(k1, n1, z), wilson_interval(k2, n2, z)
    below = (p1 - l1) ** 2 - 2 * correlation * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    above = (u1 - p1) ** 2 - 2 * correlation * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    return (p1 - p2 - math.sqrt(max(below, 0.0)), p1 - p2 + math.sqrt(max(above, 0.0)))


def paired_difference_interval(first: Tensor, second: Tensor) -> tuple[float, float]:
    """`difference_interval` of two correctness vectors on the same examples (Newcombe 1998,
    paired data, method 10): the phi coefficient of their 2×2 table enters the interval, with
    Newcombe's continuity correction (a positive ad − bc is reduced by n/2, not below 0).

    Example: `paired_difference_interval(pruned_bits, dense_bits)`.
    """
    first, second = first.bool().cpu(), second.bool().cpu()
    total = len(first)
    both = int((first & second).sum())
    only_first = int((first & ~second).sum())
    only_second = int((~first & second).sum())
    neither = total - both - only_first - only_second
    margins = (
        (both + only_first)
        * (only_second + neither)
        * (both + only_second)
        * (only_first + neither)
    )
    association = both * neither - only_first * only_second
    if association > 0:
        association = max(association - total / 2, 0.0)
    phi = association / math.sqrt(margins) if margins else 0.0
    return difference_interval(
        (both + only_first, total), (both + only_second, total), correlation=phi
    )
