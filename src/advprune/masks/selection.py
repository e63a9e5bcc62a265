"""From scores to masks: prune the lowest-scoring fraction of entries, by one of three schemes.

Every unstructured method is a scoring rule (MAD saliency, |w|, random) followed by this one
selection, so methods differ only in their scores. Scores are dicts `parameter name → tensor`
shaped like the parameter; selection is exact — `round(sparsity · n)` entries of each group are
pruned. Ties are broken by a random permutation drawn from `seed`, so two runs with the same
scores and seed agree; breaking them by position instead would prune whole leading rows when many
scores tie (MAD gives exactly 0 to every weight whose mask ended at 1). A published method keeps
its own code's rule (`SelectionRule`): the official MAD and HYDRA code prune `int(sparsity · n)`
entries and MAD breaks ties by position, lower flat index first (a stable `torch.sort`).

Schemes:
- "global": one ranking over all scores together;
- "layerwise": each layer (weight and bias together) prunes the same fraction;
- "mad": the official MAD code's choice — global over every layer but the classifier, which is
  pruned per output row (each row of [W | b] loses the same number of entries).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from advprune.core.errors import ConfigError
from advprune.masks.layers import layer_of
from advprune.masks.weight_masks import WeightMasks

SCHEMES = ("mad", "global", "layerwise")
ORDERS = ("lowest", "largest", "random")

Scores = Mapping[str, Tensor]


def check_sparsity(sparsity: float) -> None:
    if not 0 <= sparsity < 1:
        raise ConfigError(
            f"sparsity must be a fraction in [0, 1), got {sparsity}; e.g. 0.9 prunes 90 % of the "
            "weights"
        )


@dataclass(frozen=True)
class SelectionRule:
    """How an exact selection breaks ties and rounds its counts (module docstring)."""

    ties: str = "seeded"  # or "position": lower flat index first, as a stable torch.sort
    rounding: str = "round"  # or "floor": int(sparsity · n), as the official codes count

    def count(self, size: int, sparsity: float) -> int:
        return int(sparsity * size) if self.rounding == "floor" else round(sparsity * size)


SEEDED = SelectionRule()
OFFICIAL = SelectionRule(ties="position", rounding="floor")  # the MAD and HYDRA codes'


def pruned_count(size: int, sparsity: float, rule: SelectionRule = SEEDED) -> int:
    """How many of `size` entries a selection prunes (round(sparsity · size) by default)."""
    return rule.count(size, sparsity)


def lowest_entries(scores: Tensor, count: int, *, seed: int = 0, ties: str = "position") -> Tensor:
    """True on the `count` lowest entries of each row of a 2-D score matrix, ties at the threshold
    by position (lower index first) or in a seeded order, NaN counted as the highest.

    What a stable sort of each row (after a seeded shuffle of the columns) would take, found by
    selection (`kthvalue`, linear time): ranking a VGG-16's 15M weights by sort costs seconds on
    a CPU, and HYDRA and HARP recompute their masks after every optimizer step. The shuffle is
    drawn only when some ties at the threshold are taken and some not.
    """
    if count <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    scores = torch.where(scores.isnan(), float("inf"), scores)
    threshold = scores.kthvalue(count, dim=1, keepdim=True).values
    below = scores < threshold
    tied = scores == threshold
    ties_taken = count - below.sum(1, keepdim=True)
    if ties == "position" or bool((tied.sum(1, keepdim=True) == ties_taken).all()):
        tie_rank = tied.cumsum(1)
    else:
        generator = torch.Generator().manual_seed(seed)
        shuffle = torch.randperm(scores.shape[1], generator=generator).to(scores.device)
        tie_rank = torch.empty_like(scores, dtype=torch.long)
        tie_rank[:, shuffle] = tied[:, shuffle].cumsum(1)
    return below | (tied & (tie_rank <= ties_taken))


def _prune_lowest(scores: Tensor, sparsity: float, seed: int, rule: SelectionRule) -> Tensor:
    """Keep-mask of a 2-D score matrix with the `sparsity` fraction of each row's lowest pruned."""
    count = rule.count(scores.shape[1], sparsity)
    return ~lowest_entries(scores, count, seed=seed, ties=rule.ties)


def _split(keep: Tensor, scores: Scores) -> dict[str, Tensor]:
    """Cut a flat keep-mask over the concatenated `scores` back into per-parameter masks."""
    sizes = [score.numel() for score in scores.values()]
    return {
        name: part.view(score.shape)
        for (name, score), part in zip(scores.items(), keep.split(sizes), strict=True)
    }


def _flatten(scores: Scores) -> Tensor:
    device = next(iter(scores.values())).device
    return torch.cat([score.detach().reshape(-1).float().to(device) for score in scores.values()])


def select_global(
    scores: Scores, sparsity: float, *, seed: int = 0, rule: SelectionRule = SEEDED
) -> WeightMasks:
    """Prune the `sparsity` fraction of lowest scores across all tensors together."""
    check_sparsity(sparsity)
    if not scores:
        return WeightMasks({})
    flat = _flatten(scores)
    keep = _prune_lowest(flat[None], sparsity, seed, rule)[0]
    return WeightMasks(_split(keep, scores))


def _by_layer(scores: Scores) -> dict[str, dict[str, Tensor]]:
    layers: dict[str, dict[str, Tensor]] = {}
    for name, score in scores.items():
        layers.setdefault(layer_of(name), {})[name] = score
    return layers


def select_layerwise(
    scores: Scores, sparsity: float, *, seed: int = 0, rule: SelectionRule = SEEDED
) -> WeightMasks:
    """Prune the `sparsity` fraction of lowest scores within each layer (weight and bias pooled)."""
    check_sparsity(sparsity)
    masks: dict[str, Tensor] = {}
    for layer_scores in _by_layer(scores).values():
        masks.update(select_global(layer_scores, sparsity, seed=seed, rule=rule))
    return WeightMasks(masks)


def select_per_row(
    scores: Scores, sparsity: float, *, seed: int = 0, rule: SelectionRule = SEEDED
) -> WeightMasks:
    """Prune the same number, `round(sparsity · columns)`, of lowest scores in every output row.

    Each layer's scores form its out × in matrix [W | b] (weight flattened per output, bias as a
    last column), as in the official MAD code's classifier pruning.
    """
    check_sparsity(sparsity)
    masks: dict[str, Tensor] = {}
    for layer, layer_scores in _by_layer(scores).items():
        rows = next(iter(layer_scores.values())).shape[0]
        if any(score.dim() == 0 or score.shape[0] != rows for score in layer_scores.values()):
            raise ConfigError(
                f"layer {layer!r} has no common output dimension for per-row pruning; use the "
                "'global' or 'layerwise' scheme for it"
            )
        matrix = torch.cat([s.detach().reshape(rows, -1).float() for s in layer_scores.values()], 1)
        keep = _prune_lowest(matrix, sparsity, seed, rule)
        widths = [score[0].numel() for score in layer_scores.values()]
        for (name, score), part in zip(layer_scores.items(), keep.split(widths, 1), strict=True):
            masks[name] = part.reshape(score.shape)
    return WeightMasks(masks)


def random_scores(scores: Scores, seed: int) -> dict[str, Tensor]:
    """Uniform random scores shaped like `scores`, drawn from `seed` alone (random pruning)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.rand(score.shape, generator=generator).to(score.device)
        for name, score in scores.items()
    }


def order_scores(scores: Scores, order: str, seed: int = 0) -> dict[str, Tensor]:
    """Scores whose lowest entries are the ones to prune under `order` (the ablations' orders).

    "lowest" prunes the lowest scores (the method), "largest" the highest (a check that the
    scores carry signal), "random" ignores them (random pruning at the same sparsity).
    """
    if order == "lowest":
        return dict(scores)
    if order == "largest":
        return {name: -score for name, score in scores.items()}
    if order == "random":
        return random_scores(scores, seed)
    raise ConfigError(f"unknown pruning order {order!r}; choose one of {', '.join(ORDERS)}")


def select(
    scores: Scores,
    sparsity: float,
    *,
    scheme: str = "global",
    order: str = "lowest",
    seed: int = 0,
    classifier: str | None = None,
    rule: SelectionRule = SEEDED,
) -> WeightMasks:
    """Masks pruning `sparsity` of the entries by `scheme` (see the module docstring) and `order`.

    `seed` draws the tie-breaking order and, for `order="random"`, the scores themselves; `rule`
    says how ties are broken and counts rounded.
    `classifier` names the layer the "mad" scheme prunes per row; by default the layer of the
    last score (scores follow the model's registration order, where the classifier comes last).
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown pruning scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    check_sparsity(sparsity)
    ranked = order_scores(scores, order, seed)
    if scheme == "global":
        return select_global(ranked, sparsity, seed=seed, rule=rule)
    if scheme == "layerwise":
        return select_layerwise(ranked, sparsity, seed=seed, rule=rule)
    if classifier is None and ranked:
        classifier = layer_of(next(reversed(ranked)))
    rows = {name: score for name, score in ranked.items() if layer_of(name) == classifier}
    if not rows:
        raise ConfigError(
            f"classifier layer {classifier!r} has no scores; name one of the scored layers"
        )
    rest = {name: score for name, score in ranked.items() if name not in rows}
    masks = {
        **select_global(rest, sparsity, seed=seed, rule=rule),
        **select_per_row(rows, sparsity, seed=seed, rule=rule),
    }
    return WeightMasks({name: masks[name] for name in ranked})
