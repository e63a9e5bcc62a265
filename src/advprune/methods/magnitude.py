"""Magnitude pruning: score = |w|, through the same selection as MAD — its obvious baseline.

Random pruning is this module with `order="random"`: the scores are then ignored and replaced by
seeded uniform noise, so every ablation goes through one code path.
"""

from __future__ import annotations

from torch import Tensor, nn

from advprune.masks import WeightMasks, prunable_parameters, select


def magnitude_scores(model: nn.Module, *, include_bias: bool = False) -> dict[str, Tensor]:
    """|w| of every conv/linear weight (and bias), by parameter name, in layer order."""
    parameters = prunable_parameters(model, include_bias=include_bias)
    return {name: parameter.detach().abs() for name, parameter in parameters.items()}


def magnitude_masks(
    model: nn.Module,
    sparsity: float,
    *,
    scheme: str = "global",
    order: str = "lowest",
    seed: int = 0,
    include_bias: bool = False,
) -> WeightMasks:
    """Prune the `sparsity` fraction of smallest |w| by `scheme` ("global", "layerwise", "mad").

    Biases are left dense by default, as in the magnitude (LWM) and HYDRA baselines; pass
    `include_bias=True` to score them as MAD does.
    """
    scores = magnitude_scores(model, include_bias=include_bias)
    return select(scores, sparsity, scheme=scheme, order=order, seed=seed)
