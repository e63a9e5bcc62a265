"""A method that learns gates, written as a user adds one: this file.

"toy-gates" puts beta-Bernoulli gates on every layer's units (as ANP-VS does) and trains them with
the weights on the run's objective plus β·KL/N, the KL added through `loss_term`; the run ends
with the network exported at the widths the gates keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advprune.core.config import setting
from advprune.masks.gated import gates_spec, insert_gates, total_kl
from advprune.methods import GateLearningMethod, MethodSettings, PruneContext, register_method
from advprune.training.method import StepContext, TrainingMethod


@dataclass
class ToyGatesSettings(MethodSettings):
    beta: float = setting(1.0, "weight β of the gates' KL/N")
    gate_init: float = setting(-1.0, "â of every gate, a = softplus(â)")
    threshold: float = setting(0.1, "a unit is pruned where E[π] ≤ threshold")


class GateTraining(TrainingMethod):
    """Weights and gates on one optimizer; the KL is the method's loss term."""

    def __init__(self, config: ToyGatesSettings, input_shape: tuple, metadata: dict[str, Any]):
        self.config, self.input_shape, self.settings = config, input_shape, metadata
        self.name = metadata["name"]
        self.gates: list = []

    def prepare(self, model: nn.Module) -> nn.Module:
        example = torch.zeros(2, *self.input_shape, device=next(model.parameters()).device)
        init = self.config.gate_init
        self.gates = insert_gates(
            model, example, conv_a_init=init, dense_a_init=init, threshold=self.config.threshold
        )
        return model

    def loss_term(self, model: nn.Module, context: StepContext) -> Tensor:
        return self.config.beta * total_kl(self.gates) / context.examples

    def metadata(self) -> dict[str, Any]:
        return {**self.settings, "gates": gates_spec(self.gates)}


@register_method("toy-gates", description="gates learnt with a KL term (a test's method)")
class ToyGates(GateLearningMethod):
    Settings = ToyGatesSettings
    settings: ToyGatesSettings

    def training_method(self, context: PruneContext, *, resume: bool) -> TrainingMethod:
        shape = tuple(context.data.train.images.shape[1:])
        return GateTraining(self.settings, shape, self.metadata(context.settings))
