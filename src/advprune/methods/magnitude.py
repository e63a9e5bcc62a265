"""Magnitude pruning: score = |w|, through the same selection as every scored method.

The obvious baseline, and with `--scheme layerwise` HYDRA's LWM baseline (every layer loses the
same fraction). Biases are left dense, as in the magnitude and HYDRA baselines.
"""

from __future__ import annotations

from torch import Tensor, nn

from advprune.masks import prunable_parameters
from advprune.methods.base import PruneContext, ScoredMethod, register_method


def magnitude_scores(model: nn.Module, *, include_bias: bool = False) -> dict[str, Tensor]:
    """|w| of every conv/linear weight (and bias), by parameter name, in layer order."""
    parameters = prunable_parameters(model, include_bias=include_bias)
    return {name: parameter.detach().abs() for name, parameter in parameters.items()}


@register_method("magnitude", description="prune the smallest |w| (global scheme by default)")
class Magnitude(ScoredMethod):
    """Example: `advprune.prune(model, data, method="magnitude", sparsity=0.9, eps=0.1)`."""

    def scores(self, context: PruneContext) -> dict[str, Tensor]:
        return magnitude_scores(context.model, include_bias=self.include_bias(context.settings))
