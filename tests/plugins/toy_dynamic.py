"""A method that changes its masks while the network trains, written as a user adds one: this file.

"toy-dynamic" starts from random masks and, every `every` steps, moves `swap` of each layer's kept
weights: it drops the kept ones of smallest |w| and grows the pruned ones of largest |gradient|
(a RigL-like prune-and-grow; a grown weight starts at zero), so each layer keeps its sparsity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advprune.core.config import setting
from advprune.masks import WeightMasks, random_scores, select
from advprune.methods import DynamicMaskMethod, MethodSettings, PruneContext, register_method
from advprune.methods.magnitude import magnitude_scores
from advprune.training.method import DynamicMaskTraining, StepContext


@dataclass
class ToyDynamicSettings(MethodSettings):
    every: int = setting(2, "steps between two mask updates")
    swap: float = setting(0.1, "share of each layer's kept weights moved at an update")


class SwapTraining(DynamicMaskTraining):
    """Prune-and-grow every `every` steps; `updates` counts them (checkpointed)."""

    def __init__(
        self, masks: WeightMasks | None, metadata: dict[str, Any], every: int, swap: float
    ) -> None:
        super().__init__(masks, metadata)
        self.every, self.swap, self.updates = every, swap, 0

    def update_masks(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, context: StepContext
    ) -> WeightMasks | None:
        if (context.epoch * context.steps_per_epoch + context.step + 1) % self.every:
            return None
        parameters = dict(model.named_parameters())
        masks = {}
        for name, keep in self.masks.items():
            weight = parameters[name]
            count = int(self.swap * int(keep.sum()))
            smallest = weight.detach().abs().masked_fill(~keep, torch.inf).flatten()
            steepest = weight.grad.abs().masked_fill(keep, -1).flatten()
            flat = keep.flatten().clone()
            flat[smallest.topk(count, largest=False).indices] = False
            flat[steepest.topk(count).indices] = True
            masks[name] = flat.view_as(keep)
        self.updates += 1
        return WeightMasks(masks)

    def schedule_state(self) -> dict[str, Tensor]:
        return {"updates": torch.tensor(self.updates)}

    def load_schedule_state(self, state: dict[str, Tensor]) -> None:
        self.updates = int(state["updates"])


@register_method("toy-dynamic", description="random masks, prune-and-grow (a test's method)")
class ToyDynamic(DynamicMaskMethod):
    Settings = ToyDynamicSettings
    settings: ToyDynamicSettings

    def initial_masks(self, context: PruneContext) -> WeightMasks:
        seed = context.settings.seed
        scores = random_scores(magnitude_scores(context.model), seed)
        return select(scores, context.sparsity, scheme="layerwise", seed=seed)

    def mask_training(
        self, context: PruneContext, masks: WeightMasks | None, metadata: dict[str, Any]
    ) -> SwapTraining:
        return SwapTraining(masks, metadata, self.settings.every, self.settings.swap)
