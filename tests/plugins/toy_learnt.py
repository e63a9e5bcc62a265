"""A method that learns its masks in a phase of its own, written as a user adds one: this file.

"toy-learnt" trains the network in RUN_DIR/scores (its `score` phase, `--score-*` flags) and keeps,
in each layer, the weights largest at the phase's end; the network then fine-tunes under those
masks, as HYDRA's and HARP's do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from advprune.core.config import group
from advprune.masks import select
from advprune.methods import (
    MaskLearningMethod,
    MethodSettings,
    PhaseSettings,
    PruneContext,
    register_method,
)
from advprune.methods.magnitude import magnitude_scores
from advprune.training import TrainConfig
from advprune.training.method import TrainingMethod


@dataclass
class ToyLearntSettings(MethodSettings):
    score: PhaseSettings = group(PhaseSettings, "the phase that learns the masks", epochs=1)


class LargestAtTheEnd(TrainingMethod):
    """Plain training; at its end the largest |w| of each layer are the masks, saved and applied
    (what a mask phase's `finish` does)."""

    name = "toy-learnt-phase"

    def __init__(self, sparsity: float) -> None:
        self.sparsity = sparsity

    def finish(self, model: nn.Module, run_path: Path) -> None:
        masks = select(magnitude_scores(model), self.sparsity, scheme="layerwise")
        masks.save(Path(run_path) / "masks.safetensors", {"name": self.name})
        masks.apply(model)


@register_method("toy-learnt", description="keeps the largest weights after a phase (a test's)")
class ToyLearnt(MaskLearningMethod):
    Settings = ToyLearntSettings
    default_scheme = "layerwise"

    def mask_training(self, context: PruneContext, config: TrainConfig) -> TrainingMethod:
        return LargestAtTheEnd(context.sparsity)
