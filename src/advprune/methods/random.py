"""Random pruning: the floor every real score must clear at the same sparsity.

The scores are seeded uniform noise, drawn from the pruning run's seed alone, through the same
selection as every scored method: one per weight, or one per channel with `--structure channels`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from advprune.masks import random_scores
from advprune.masks.channels import ChannelGroup
from advprune.methods.base import PruneContext, register_method
from advprune.methods.kinds import ScoredMethod
from advprune.methods.magnitude import magnitude_scores


@register_method("random", description="prune random weights: the floor a real score must beat")
class Random(ScoredMethod):
    """Example: `advprune prune --method random --from runs/at --sparsity 0.99 --run-dir r99`."""

    def scores(self, context: PruneContext) -> dict[str, Tensor]:
        shapes = magnitude_scores(context.model, include_bias=self.include_bias(context.settings))
        return random_scores(shapes, context.settings.seed)

    def channel_scores(
        self, context: PruneContext, groups: list[ChannelGroup]
    ) -> dict[str, Tensor]:
        shapes = {group.name: torch.empty(group.size, device=context.device) for group in groups}
        return random_scores(shapes, context.settings.seed)
