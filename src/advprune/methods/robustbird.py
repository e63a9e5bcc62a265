"""Robust Bird (Chen et al., "Sparsity Winning Twice", ICLR 2022): an early-bird ticket found by
cheap standard training, then adversarial training of that sparse network.

From initialization, standard training (RUN_DIR/ticket) stops at the first epoch whose
global-magnitude mask of the conv weights is within a Hamming distance of 0.08 of each of the
four previous epochs' masks; the network's conv and linear weights are then pruned globally by
magnitude at the target sparsity, and adversarial training starts from the ticket's weights as
they are (not rewound), with a fresh optimiser and schedule.

Official code: VITA-Group/Sparsity-Win-Robust-Generalization, Robust-Bird/train_eb.py and
Robust-Bird/utils/early_bird.py, run as its README does (`--stage1 sgd --epochs1 200 --stage2 pgd
--epochs2 200 --pruning unstructured`); docs/fidelity.md has the element-by-element comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advprune.core.config import group, setting
from advprune.core.errors import ConfigError
from advprune.masks import SelectionRule, WeightMasks, prunable_parameters, select
from advprune.methods.base import (
    MethodSettings,
    PhaseSettings,
    PruneContext,
    PruneSettings,
    phase_overrides,
    register_method,
)
from advprune.methods.kinds import MASKS_FILE, MaskFindingMethod, train_mask_phase
from advprune.training.method import TrainingMethod

STATE_PREFIX = "robustbird/"
TICKET = "ticket"  # RUN_DIR/ticket, set by --ticket-*
# train_eb.py:35-49: SGD 0.1, momentum 0.9, wd 5e-4, ×0.1 at epochs 50 and 150 (of 200); stage 2
# PGD-10 of step 2/255 in ε 8/255 (our default step 2.5·ε/10 = ε/4 is that step). Batch 128 and ε
# are the start's (--batch-size, --eps: `advprune train`'s defaults are 128 and the dataset's ε).
OFFICIAL_OPTIMISER = {
    "epochs": 200,
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "step",
    "milestones": [0.25, 0.75],
    "gamma": 0.1,
}


def early_bird_mask(model: nn.Module, sparsity: float) -> Tensor:
    """The flat keep-mask of all conv weights of `model` together: |w| above the value at index
    int(n · sparsity) of their sorted magnitudes (early_bird.py:52-83, `unstructure_pruning`,
    percent = 1 − density; conv layers only, not the classifier)."""
    weights = [m.weight.detach().flatten() for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not weights:
        raise ConfigError(
            "Robust Bird's early-bird criterion compares masks of conv weights, and this network "
            "has no Conv2d layer; use a convolutional network or another method"
        )
    magnitudes = torch.cat(weights).abs().cpu()
    threshold = magnitudes.sort().values[int(magnitudes.numel() * sparsity)]
    return magnitudes > threshold


def mask_distance(a: Tensor, b: Tensor) -> float:
    """The fraction of entries where two masks differ (early_bird.py:98, normalised Hamming)."""
    return 1 - float((a == b).sum()) / b.numel()


def early_bird_emerged(masks: Sequence[Tensor], window: int, tolerance: float) -> bool:
    """True when the last `window` masks are in and the newest is within `tolerance` of each of
    the `window − 1` before it (early_bird.py:85-133: epoch_keep 5, distance > 0.08 fails)."""
    if len(masks) < window:
        return False
    recent = masks[-window:]
    return all(mask_distance(recent[-1], earlier) <= tolerance for earlier in recent[:-1])


class EarlyBirdSearch(TrainingMethod):
    """Plain training that, after each epoch, draws the early-bird mask and ends the phase once
    the masks have settled (train_eb.py:176-179); at its end, `ticket_masks` of the network are
    the masks the sparse training keeps (train_eb.py:183-184), saved as masks.safetensors."""

    def __init__(
        self,
        sparsity: float,
        window: int,
        tolerance: float,
        ticket_masks: Callable[[nn.Module], WeightMasks],
    ) -> None:
        self.sparsity = sparsity
        self.window = window
        self.tolerance = tolerance
        self.ticket_masks = ticket_masks
        self.masks: list[Tensor] = []
        self.found_at: int | None = None

    def epoch_ended(self, model: nn.Module, record: dict[str, Any]) -> None:
        self.masks = [*self.masks, early_bird_mask(model, self.sparsity)][-self.window :]
        if early_bird_emerged(self.masks, self.window, self.tolerance):
            self.found_at = record["epoch"]

    @property
    def complete(self) -> bool:
        return self.found_at is not None

    def state_dict(self) -> dict[str, Tensor]:
        state = {f"{STATE_PREFIX}found_at": torch.tensor(self.found_at or 0)}
        if self.masks:
            state[f"{STATE_PREFIX}masks"] = torch.stack(self.masks)
        return state

    def load_state_dict(self, state: dict[str, Tensor], model: nn.Module) -> None:
        masks = state.get(f"{STATE_PREFIX}masks")
        self.masks = [] if masks is None else list(masks.bool())
        self.found_at = int(state[f"{STATE_PREFIX}found_at"]) or None

    def metadata(self) -> dict[str, Any]:
        return {"early_bird_epoch": self.found_at}

    def finish(self, model: nn.Module, run_path: Path) -> None:
        self.ticket_masks(model).save(Path(run_path) / MASKS_FILE, self.metadata())


@dataclass
class RobustBirdSettings(MethodSettings):
    """Robust Bird's settings; the defaults are the official code's (docs/fidelity.md)."""

    window: int = setting(5, "masks compared: the newest with the ones before it (epoch_keep)")
    tolerance: float = setting(0.08, "largest mask distance at which the ticket has emerged")
    ticket: PhaseSettings = group(
        PhaseSettings,
        "the standard training that finds the ticket, stopped when it emerges (official: at "
        "most 200 epochs, SGD 0.1, ×0.1 at 25 % and 75 %)",
        objective="standard",
        **OFFICIAL_OPTIMISER,
    )
    finetune: PhaseSettings = group(
        PhaseSettings,
        "the adversarial training of the ticket (official: 200 epochs PGD-10, SGD 0.1, ×0.1 at "
        "25 % and 75 %)",
        objective="pgd-at",
        attack_steps=10,
        **OFFICIAL_OPTIMISER,
    )

    def validate(self) -> RobustBirdSettings:
        super().validate()
        if self.window < 2:
            raise ConfigError(f"window must be ≥ 2 masks, got {self.window}; pass e.g. --window 5")
        return self


@register_method(
    "robustbird",
    description="Robust Bird (Chen et al., ICLR 2022): early-bird ticket, then AT from init",
)
class RobustBird(MaskFindingMethod):
    """The early-bird ticket of standard training (RUN_DIR/ticket), pruned globally by magnitude,
    then adversarially trained from the ticket's weights.

    Example: `advprune prune --method robustbird --model preact-resnet18 --dataset cifar10
    --eps 8/255 --sparsity 0.9 --run-dir runs/rb90`.
    """

    reference = "Chen et al., ICLR 2022; VITA-Group/Sparsity-Win-Robust-Generalization"
    origin = "published"
    Settings = RobustBirdSettings
    default_scheme = "global"
    # torch.nn.utils.prune.global_unstructured: round(amount · n) of the smallest |w|.
    rule = SelectionRule(ties="position", rounding="round")
    settings: RobustBirdSettings

    def check(self, prune: PruneSettings) -> None:
        super().check(prune)
        if prune.structure == "channels":
            raise ConfigError(
                "robustbird prunes weights (the official --pruning unstructured); drop --structure"
            )

    def find_masks(self, context: PruneContext) -> WeightMasks:
        """Train into RUN_DIR/ticket until the ticket emerges; the network keeps its weights
        (train_eb.py:183-195: pruned where it stands, a new optimiser, no rewinding)."""
        early_bird_mask(context.model, context.sparsity)  # no conv layer: refused before any work
        config = self.settings.ticket.applied_to(
            context.source, **phase_overrides(context.settings)
        )
        search = EarlyBirdSearch(
            context.sparsity,
            self.settings.window,
            self.settings.tolerance,
            lambda model: self.ticket_masks(model, context),
        )
        context.log(
            f"robustbird: at most {config.epochs} epochs of {config.objective} until the "
            f"{context.sparsity:.0%} early-bird mask settles"
        )
        masks, record = train_mask_phase(context, TICKET, config, search, keep_weights=True)
        if record.get("early_bird_epoch"):
            context.log(f"robustbird: the ticket emerged after epoch {record['early_bird_epoch']}")
        return masks

    def ticket_masks(self, model: nn.Module, context: PruneContext) -> WeightMasks:
        """The smallest |w| of the conv and linear weights pruned over the whole network
        (function.py:336-342, `prune_unstructured`: `global_unstructured`, L1)."""
        prune = context.settings
        weights = prunable_parameters(model, include_bias=self.include_bias(prune))
        return select(
            {name: weight.detach().abs() for name, weight in weights.items()},
            context.sparsity,
            scheme=self.scheme(prune),
            order=prune.order,
            seed=prune.seed,
            rule=self.rule,
        )
