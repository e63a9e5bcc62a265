"""A pruning method written the way a user adds one: this file and nothing else.

"toy" keeps the entries of each tensor with the highest flat index (prunes the first ones): a
ranking no real method uses, so a test can tell it was this method that ran.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from advprune.core.config import setting
from advprune.methods import MethodSettings, PruneContext, ScoredMethod, register_method
from advprune.methods.magnitude import magnitude_scores


@dataclass
class ToySettings(MethodSettings):
    reverse: bool = setting(False, "prune the last entries instead of the first")


@register_method("toy", description="prunes the first entries of every tensor (a test's method)")
class Toy(ScoredMethod):
    Settings = ToySettings
    settings: ToySettings

    def scores(self, context: PruneContext) -> dict[str, torch.Tensor]:
        shapes = magnitude_scores(context.model)
        order = {
            n: torch.arange(t.numel(), dtype=torch.float32).view_as(t) for n, t in shapes.items()
        }
        return {n: -s if self.settings.reverse else s for n, s in order.items()}
