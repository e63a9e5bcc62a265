"""Magnitude pruning: score = |w|, through the same selection as every scored method.

The obvious baseline, and with `--scheme layerwise` HYDRA's LWM baseline (every layer loses the
same fraction). Biases are left dense, as in the magnitude and HYDRA baselines. With
`--structure channels` a channel scores the L_p norm of its filters (`filter_norm`, default L1,
as Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017, rank them), summed over the
convs a residual connection couples, and each layer loses the same fraction of its channels (the
norms of layers of different widths are not comparable).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from advprune.core.config import setting
from advprune.core.errors import ConfigError
from advprune.masks import prunable_parameters
from advprune.masks.channels import ChannelGroup, filter_norms
from advprune.methods.base import MethodSettings, PruneContext, register_method
from advprune.methods.kinds import ScoredMethod

FILTER_NORMS = (1, 2)


def magnitude_scores(model: nn.Module, *, include_bias: bool = False) -> dict[str, Tensor]:
    """|w| of every conv/linear weight (and bias), by parameter name, in layer order."""
    parameters = prunable_parameters(model, include_bias=include_bias)
    return {name: parameter.detach().abs() for name, parameter in parameters.items()}


@dataclass
class MagnitudeSettings(MethodSettings):
    filter_norm: int = setting(
        1, "--structure channels: rank channels by the L1 (1) or L2 (2) norm of their filters"
    )

    def validate(self) -> MagnitudeSettings:
        super().validate()
        if self.filter_norm not in FILTER_NORMS:
            raise ConfigError(f"filter_norm must be 1 or 2 (L1 or L2), got {self.filter_norm}")
        return self


@register_method("magnitude", description="prune the smallest |w| (global scheme by default)")
class Magnitude(ScoredMethod):
    """Example: `advprune.prune(model, data, method="magnitude", sparsity=0.9, eps=0.1)`."""

    Settings = MagnitudeSettings
    settings: MagnitudeSettings

    def scores(self, context: PruneContext) -> dict[str, Tensor]:
        return magnitude_scores(context.model, include_bias=self.include_bias(context.settings))

    def channel_scores(
        self, context: PruneContext, groups: list[ChannelGroup]
    ) -> dict[str, Tensor]:
        return filter_norms(context.model, groups, self.settings.filter_norm)
