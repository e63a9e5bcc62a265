"""A method that finds its mask before the network trains, written as a user adds one: this file.

"toy-ticket" trains a copy of the network it starts from for its `ticket` phase (RUN_DIR/ticket,
`--ticket-*` flags), keeps in each layer the weights that moved most in that phase, resets the
network to its start (`keep_weights=False`) and trains it under that fixed mask: the shape of
Robust Bird's early-bird ticket.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from advprune.core.config import group
from advprune.masks import WeightMasks, prunable_parameters, select
from advprune.methods import (
    MaskFindingMethod,
    MethodSettings,
    PhaseSettings,
    PruneContext,
    phase_overrides,
    register_method,
    train_mask_phase,
)
from advprune.training.method import TrainingMethod

TICKET = "ticket"


@dataclass
class ToyTicketSettings(MethodSettings):
    ticket: PhaseSettings = group(PhaseSettings, "the phase that finds the ticket", epochs=1)


class MovedMost(TrainingMethod):
    """Plain training; at its end the weights of each layer that moved most are the mask."""

    name = "toy-ticket-phase"

    def __init__(self, sparsity: float) -> None:
        self.sparsity = sparsity
        self.start: dict[str, Tensor] = {}

    def prepare(self, model: nn.Module) -> nn.Module:
        weights = prunable_parameters(model, include_bias=False)
        self.start = {name: weight.detach().clone() for name, weight in weights.items()}
        return model

    def finish(self, model: nn.Module, run_path: Path) -> None:
        weights = prunable_parameters(model, include_bias=False)
        moved = {name: (w.detach() - self.start[name]).abs() for name, w in weights.items()}
        select(moved, self.sparsity, scheme="layerwise").save(Path(run_path) / "masks.safetensors")


@register_method("toy-ticket", description="keeps the weights that moved most early (a test's)")
class ToyTicket(MaskFindingMethod):
    Settings = ToyTicketSettings
    default_scheme = "layerwise"

    def find_masks(self, context: PruneContext) -> WeightMasks:
        overrides = phase_overrides(context.settings)
        config = self.settings.ticket.applied_to(context.source, **overrides)
        training = MovedMost(context.sparsity)
        masks, _ = train_mask_phase(context, TICKET, config, training, keep_weights=False)
        return masks
