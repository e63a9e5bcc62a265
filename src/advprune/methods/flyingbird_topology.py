"""Flying Bird's sparse topology (Chen et al., ICLR 2022), as pure functions of tensors.

Each function is one element of the official code, VITA-Group/Sparsity-Win-Robust-Generalization
(`sparselearning/core.py`, `sparselearning/igq.py`, `utils.py`), with its file:line in the
docstring and in docs/fidelity.md:

- where the sparsity is allocated: `igq_sparsities` (per layer, fixed for the whole run);
- the initial masks: `random_masks` (that many zeros per layer at random positions);
- the update fraction and how it decays: `death_rate` (cosine from 0.5 to 0.005 per step);
- how often the topology changes: `update_interval` (every 900 steps, 1200 in the second half);
- which weights drop: `magnitude_death` (the smallest |w| of each layer);
- which weights grow: `random_growth` (the official default) or `gradient_growth` (largest |∂L/∂w|
  among the inactive entries); a grown weight starts at zero (it was masked to zero);
- Flying Bird+'s adaptive sparsity: `adaptive_decisions` (prune more when the train-validation
  robust-accuracy gap widens, grow more when the validation robust loss rises).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor

INITIAL_DEATH_RATE = 0.5  # main_adv.py:69 --death-rate
FINAL_DEATH_RATE = 0.005  # core.py:16 CosineDecay eta_min


def igq_sparsities(sizes: Sequence[int], sparsity: float) -> list[float]:
    """Per-layer sparsities whose weighted mean is `sparsity` (igq.py:11-40, `--sparse_init igq`).

    Layer l of n_l weights keeps the fraction 1 / (1 + f·n_l), the "force" f found by bisection
    on [0, 1e20] until the overall sparsity is within 1/Σn of the target: large layers are pruned
    more, small ones (the stem, the classifier) less.
    """
    if sparsity == 0:
        return [0.0] * len(sizes)
    total = sum(sizes)
    tolerance = 1.0 / total

    def kept(force: float) -> list[float]:
        return [n / (force * n + 1) for n in sizes]

    low, high = 0.0, 1e20
    while True:
        for force in (low, high):
            lengths = kept(force)
            if abs(1 - sum(lengths) / total - sparsity) < tolerance:
                return [1 - length / n for length, n in zip(lengths, sizes, strict=True)]
        force = (low + high) / 2
        overall = 1 - sum(kept(force)) / total
        low = force if overall < sparsity else low
        high = force if overall > sparsity else high


def random_masks(
    shapes: dict[str, torch.Size], sparsities: Sequence[float], generator: torch.Generator
) -> dict[str, Tensor]:
    """Keep-masks with exactly int(s_l · n_l) zeros at uniformly random positions per layer
    (core.py:212-227: `np.random.choice(..., replace=False)`)."""
    masks = {}
    for (name, shape), sparsity in zip(shapes.items(), sparsities, strict=True):
        size = math.prod(shape)
        mask = torch.ones(size, dtype=torch.bool)
        mask[torch.randperm(size, generator=generator)[: int(sparsity * size)]] = False
        masks[name] = mask.view(shape)
    return masks


def death_rate(step: int, total_steps: int) -> float:
    """The fraction of each layer's active weights an update removes after `step` optimiser
    steps: cosine annealing from 0.5 to 0.005 over the whole training (core.py:15-24, stepped
    once per optimiser step in `Masking.step`, core.py:282-292; T = len(train_loader)·epochs,
    main_adv.py:127)."""
    progress = min(step, total_steps) / total_steps
    span = INITIAL_DEATH_RATE - FINAL_DEATH_RATE
    return FINAL_DEATH_RATE + span * (1 + math.cos(math.pi * progress)) / 2


def update_interval(epoch: int, epochs: int, first: int, second: int, dynamic: bool) -> int:
    """Steps between topology updates during (0-based) `epoch`: `first` (900), and `second`
    (1200) once epoch > epochs/2 with `--dynamic_fre` (utils.py:283-285)."""
    return second if dynamic and epoch > epochs / 2 else first


def magnitude_death(
    weight: Tensor, mask: Tensor, rate: float, extra: float = 0.0
) -> tuple[Tensor, int]:
    """The layer's mask after removing ceil(rate · active) of its active weights of smallest |w|,
    and how many it removed (core.py:528-551, `magnitude_death`).

    As the official code: the threshold is the k-th smallest |w| over the whole tensor, k =
    inactive + removed (inactive entries are exactly zero), and an entry stays if |w| > threshold;
    a dense layer is left as it is. `extra` (Flying Bird+'s prune_ratio, when it prunes more)
    removes ceil(rate · extra · active) more (`dst_remove`); the count returned is the regular
    one, which is what grows back (core.py:439).
    """
    active = int(mask.sum())
    if active == mask.numel():
        return mask.clone(), 0
    removed = math.ceil(rate * active)
    if removed == 0:
        return mask.clone(), 0
    magnitudes = (weight.detach().abs() * mask).flatten()
    ordered = magnitudes.sort().values
    inactive = mask.numel() - active
    k = inactive + removed
    if extra:
        k = min(k + math.ceil(rate * extra * active), mask.numel())
    kept = magnitudes > ordered[k - 1]
    regular = int(active - (magnitudes > ordered[inactive + removed - 1]).sum())
    return kept.view_as(mask), regular


def random_growth(
    mask: Tensor, count: int, generator: torch.Generator, extra: float = 0.0
) -> Tensor:
    """Inactive entries switched on, each with probability count/inactive (core.py:622-637):
    `count` in expectation, not exactly, as in the official code. `extra` (Flying Bird+'s
    growth_ratio) raises the expected number to min(count · (1 + extra), inactive)."""
    inactive = int((~mask).sum())
    if inactive == 0:
        return mask.clone()
    expected = min(count * (1 + extra), inactive) if extra else count
    draw = torch.rand(mask.shape, generator=generator).to(mask.device)
    return mask | (draw < expected / inactive)


def gradient_growth(mask: Tensor, count: int, gradient: Tensor, extra: float = 0.0) -> Tensor:
    """The `count` inactive entries of largest |gradient| switched on (core.py:647-671,
    `--growth gradient`, RigL's criterion); `extra` grows int(count · (1 + extra))."""
    if count == 0:
        return mask.clone()
    if extra:
        count = min(int(count * (1 + extra)), mask.numel())
    scores = (gradient.detach().abs() * ~mask).flatten()
    order = scores.sort(descending=True, stable=True).indices
    grown = mask.clone().flatten()
    grown[order[:count]] = True
    return grown.view_as(mask)


@dataclass(frozen=True)
class AdaptiveDecision:
    """Flying Bird+'s two decisions at a topology update (core.py:377-415)."""

    prune_more: bool  # remove prune_ratio × the regular count more (`dst_prune`)
    grow_more: bool  # grow growth_ratio × the regular count more (`dst_growth`)


def rising_fraction(values: Sequence[float], window: int, strictly: bool) -> float:
    """The fraction of the last `window` consecutive changes of `values` that rise (> 0, or ≥ 0
    when not `strictly`); NaN with fewer than two values, so that no decision fires
    (core.py:377-398, `get_dst_ratio`, r = epoch_range + 1 values)."""
    recent = list(values)[-(window + 1) :]
    changes = [b - a for a, b in pairwise(recent)]
    if not changes:
        return math.nan
    rising = sum(change > 0 if strictly else change >= 0 for change in changes)
    return rising / len(changes)


def adaptive_decisions(
    validation_losses: Sequence[float],
    generalization_gaps: Sequence[float],
    *,
    window: int,
    threshold: float,
    active: bool,
) -> AdaptiveDecision:
    """Prune more when the gap (adversarial training accuracy − validation robust accuracy) rose
    in at least `threshold` of the last `window` epochs; grow more when the validation robust
    loss did not fall in at least `threshold` of them (core.py:401-415, main_adv.py:209-211).
    Nothing changes before the adaptive phase starts (`active` False: epoch < --dynamic_epoch)."""
    if not active:
        return AdaptiveDecision(False, False)
    prune = rising_fraction(generalization_gaps, window, strictly=True)
    grow = rising_fraction(validation_losses, window, strictly=False)
    return AdaptiveDecision(threshold <= prune, threshold <= grow)
