"""ANP-VS: Adversarial Neural Pruning with Vulnerability Suppression (Madaan et al., ICML 2020).

Every minibatch, with x̃ = PGD(x) against the current network (deterministic gates, frozen BN):
- the gate parameters (a, b) take a step on  CE(f(x̃), y) + β·KL/N;
- the weights W take a step on  (CE(f(x), y) + 2·CE(f(x̃), y))/3 + λ·VS  (+ weight decay, which the
  trainer's optimizer applies: the official 1e-4·‖W‖²/2 is Adam's weight_decay=1e-4).
Both gradients come from the same step and batch, as in the official code, each with its own Adam
(gates lr 1e-2, weights lr 1e-3, on the same step schedule). VS = (1/L) Σ_l mean |z_l(x) − z_l(x̃)|
over the latent features z_l of the gated layers (on ANP-VS's VGG-16 also dense14's output before
its BN, 15 features as in the official code: `pre_norm_outputs`). The clean and the adversarial
pass each draw their own gates, as in the official code (whose VS term runs two more passes with
draws of their own; we take VS from the same two passes as the CE terms: the same expectation,
half the cost).
`ANPVS` below is the registered method: this training from a trained start, then the export.

Ablations: `vs_lambda=0` is ANP (pruning on the adversarial loss, no VS); `gates=False` is AT-VS
(the VS loss without pruning).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advprune.attacks import pgd
from advprune.core.config import group, setting
from advprune.core.device import autocast
from advprune.core.distributed import average_gradients, unwrap
from advprune.core.errors import CheckpointError, ConfigError
from advprune.core.io import atomic_write_json
from advprune.masks.gated import (
    gate_parameters,
    gate_summary,
    gates_spec,
    held_sample,
    insert_gates,
    total_kl,
)
from advprune.methods.base import (
    MethodSettings,
    PhaseSettings,
    PruneContext,
    PruneSettings,
    register_method,
)
from advprune.methods.kinds import GateLearningMethod
from advprune.models.features import capture_features
from advprune.models.vgg import BaseModeDropout
from advprune.training.config import TrainConfig
from advprune.training.method import StepContext, TrainingMethod, check_finite
from advprune.training.objectives import ObjectiveOutput

GATE_OPTIMIZER_PREFIX = "gate_optimizer."
# The official code's optimisation of the weights: Adam 1e-3, ×0.1 at 50 % and ×0.01 at 70 %,
# L2 1e-4, batch 64, 200 epochs. "pgd-at" only selects the per-epoch PGD monitor: ANPVSTraining
# sets the loss.
ANPVS_TRAINING = {
    "objective": "pgd-at",
    "epochs": 200,
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "batch_size": 64,
    "schedule": "step",
    "milestones": [0.5, 0.7],
    "gamma": 0.1,
}


@dataclass
class ANPVSSettings(MethodSettings):
    """ANP-VS's own settings; defaults are the official MNIST LeNet-5-Caffe ones (fidelity.md)."""

    PER_DATASET_WEIGHTS = ("beta",)

    beta: float = setting(4.0, "weight β of the gates' KL/N (MNIST 4, CIFAR-10 2, CIFAR-100 1)")
    vs_lambda: float = setting(
        1e-3, "weight λ of the vulnerability suppression loss (0: ANP without VS)"
    )
    gates: bool = setting(True, "--no-gates trains AT-VS: the VS loss without pruning")
    adversarial_weight: float = setting(2.0, "weights' loss (CE clean + w·CE adv)/(1 + w)")
    gate_lr: float = setting(1e-2, "Adam lr of the gates, on the weights' schedule")
    conv_gate_init: float = setting(-1.0, "â of conv gates, a = softplus(â) (official VGG: 2)")
    dense_gate_init: float = setting(-1.0, "â of dense-input gates")
    gate_prior: float = setting(1e-4, "α/K of the Beta(α/K, 1) prior")
    threshold: float = setting(1e-3, "a unit is pruned where E[π] ≤ threshold")
    temperature: float = setting(0.1, "of the relaxed Bernoulli used in training")
    finetune: PhaseSettings = group(
        PhaseSettings,
        "the ANP-VS run (official: Adam 1e-3, wd 1e-4, batch 64, ×0.1 at 50 % and 70 %, 200 "
        "epochs)",
        **ANPVS_TRAINING,
    )

    def validate(self) -> ANPVSSettings:
        super().validate()
        for key in ("beta", "vs_lambda", "adversarial_weight"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{key} must be a finite number ≥ 0, got {value}")
        for key in ("gate_lr", "gate_prior", "temperature"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{key} must be > 0, got {value}")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.finetune.objective not in (None, "pgd-at"):
            raise ConfigError(
                "ANP-VS sets its own loss ((CE + 2·CE_adv)/3 + λ·VS); drop --finetune-objective"
            )
        if not self.gates and self.vs_lambda == 0:
            raise ConfigError(
                "--no-gates with --vs-lambda 0 is neither pruning nor VS; give a --vs-lambda for "
                "AT-VS, or train a dense model with `advprune train`"
            )
        return self

    @property
    def variant(self) -> str:
        """ "anp-vs", or one of the paper's ablations: "anp" (no VS) and "at-vs" (no gates)."""
        if not self.gates:
            return "at-vs"
        return "anp-vs" if self.vs_lambda > 0 else "anp"


@contextlib.contextmanager
def pre_norm_outputs(model: nn.Module) -> Iterator[dict[str, Tensor]]:
    """The outputs, before their batch norm, of the layers the model lists in
    `pre_norm_features` (ANP-VS's VGG-16: dense14), as extra vulnerability features."""
    outputs: dict[str, Tensor] = {}
    handles = []
    layers = [
        (f"{prefix}.{name}" if prefix else name, owner.get_submodule(name))
        for prefix, owner in model.named_modules()
        for name in getattr(owner, "pre_norm_features", ())
    ]
    for name, layer in layers:

        def keep(module: nn.Module, args: tuple, output: Tensor, name: str = name) -> None:
            outputs[f"{name} before its norm"] = output

        handles.append(layer.register_forward_hook(keep))
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def vulnerability_suppression_loss(
    clean: dict[str, Tensor], adversarial: dict[str, Tensor]
) -> Tensor:
    """VS = (1/L) Σ_l mean |z_l(x) − z_l(x̃)|: each layer's mean distortion, averaged over layers."""
    if not clean or clean.keys() != adversarial.keys():
        raise ValueError(
            "the clean and adversarial passes must capture the same, non-empty features"
        )
    distortions = [(clean[name].float() - adversarial[name].float()).abs().mean() for name in clean]
    return torch.stack(distortions).mean()


class ANPVSTraining(TrainingMethod):
    """ANP-VS as a trainer method: owns the gates, their optimizer and the two-loss step."""

    def __init__(
        self,
        config: ANPVSSettings,
        train: TrainConfig,
        input_shape: Sequence[int],
        settings: dict[str, Any] | None = None,
    ) -> None:
        """`input_shape` is one input's shape, e.g. (1, 28, 28): the gates' layers are found by
        running the model on zeros of that shape. `settings` is what the model file records
        about the method (the gates are added to it)."""
        self.config = config.validate()
        self.train = train
        self.input_shape = tuple(input_shape)
        self.name = config.variant
        self.settings = settings or {"name": self.name, **config.to_flat()}
        self.gates: list = []
        self.gate_optimizer: torch.optim.Optimizer | None = None

    def prepare(self, model: nn.Module) -> nn.Module:
        if not self.config.gates:
            return model
        for module in model.modules():  # the official gated network skips the base dropouts
            if isinstance(module, BaseModeDropout):
                module.p = 0.0
        device = next(model.parameters()).device
        example = torch.zeros(2, *self.input_shape, device=device)
        self.gates = insert_gates(
            model,
            example,
            conv_a_init=self.config.conv_gate_init,
            dense_a_init=self.config.dense_gate_init,
            prior=self.config.gate_prior,
            threshold=self.config.threshold,
            temperature=self.config.temperature,
        )
        self.gate_optimizer = torch.optim.Adam(gate_parameters(self.gates), lr=self.config.gate_lr)
        return model

    def weight_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        gates = {id(parameter) for parameter in gate_parameters(self.gates)}
        return [parameter for parameter in model.parameters() if id(parameter) not in gates]

    def _adversarial(
        self, model: nn.Module, x: Tensor, y: Tensor, noise: tuple[Any, tuple[int, int]]
    ) -> Tensor:
        """x̃ against the network as evaluated: deterministic gates and frozen BN (official)."""
        generator, noise_shard = noise
        model.eval()
        try:
            return pgd(
                model,
                x,
                y,
                self.train.eps,
                alpha=self.train.attack_step_size,
                steps=self.train.attack_steps,
                generator=generator,
                noise_shard=noise_shard,
            )
        finally:
            model.train()

    def _forward(
        self, model: nn.Module, x: Tensor, noise: tuple[Any, tuple[int, int]]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and latent features of one pass, with a gate draw of its own (drawn for the
        global batch from the run's attack generator, so ranks agree)."""
        sample = held_sample(self.gates, *noise) if self.gates else contextlib.nullcontext()
        with sample:
            if self.config.vs_lambda == 0:
                return model(x), {}
            with capture_features(model) as features, pre_norm_outputs(model) as before_norm:
                logits = model(x)
            return logits, {**features, **before_norm}

    def step(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        optimizer: torch.optim.Optimizer,
        context: StepContext,
    ) -> ObjectiveOutput:
        # Both losses come from the same two forward passes, so they run on the module itself
        # and each rank's gradients are averaged here: DDP's reducer expects one backward per
        # forward (docs/scaling.md, "Methods under DDP").
        net = unwrap(model)
        attack = context.attack
        noise = (attack.generator, attack.noise_shard) if attack else (None, (0, 1))
        x_adv = self._adversarial(net, x, y, noise)
        weights = [p for group in optimizer.param_groups for p in group["params"]]
        with autocast(x.device, self.train.precision):
            logits, clean_features = self._forward(net, x, noise)
            logits_adv, adversarial_features = self._forward(net, x_adv, noise)
        adversarial_ce = F.cross_entropy(logits_adv.float(), y)
        weight = self.config.adversarial_weight
        loss = (F.cross_entropy(logits.float(), y) + weight * adversarial_ce) / (1 + weight)
        if self.config.vs_lambda > 0:
            vs = vulnerability_suppression_loss(clean_features, adversarial_features)
            loss = loss + self.config.vs_lambda * vs
        check_finite(loss, context)
        optimizer.zero_grad(set_to_none=True)
        if self.gates:
            gates = gate_parameters(self.gates)
            gate_loss = adversarial_ce + self.config.beta * total_kl(self.gates) / context.examples
            check_finite(gate_loss, context, "the gate loss")
            self.gate_optimizer.zero_grad(set_to_none=True)
            gate_loss.backward(inputs=gates, retain_graph=True)
            average_gradients(gates)
        loss.backward(inputs=weights)
        average_gradients(weights)
        optimizer.step()
        if self.gates:
            for group in self.gate_optimizer.param_groups:
                group["lr"] = self.config.gate_lr * context.lr / self.train.lr
            self.gate_optimizer.step()
        return ObjectiveOutput(loss.detach(), logits_adv.detach())

    def state_dict(self) -> dict[str, Tensor]:
        """The gate optimizer's Adam moments and step counts (the gates are model parameters)."""
        if self.gate_optimizer is None:
            return {}
        return {
            f"{GATE_OPTIMIZER_PREFIX}{index}.{key}": torch.as_tensor(value)
            for index, entry in self.gate_optimizer.state_dict()["state"].items()
            for key, value in entry.items()
        }

    def load_state_dict(self, state: dict[str, Tensor], model: nn.Module) -> None:
        if self.gate_optimizer is None:
            return super().load_state_dict(state, model)
        entries: dict[int, dict[str, Tensor]] = {}
        for name, tensor in state.items():
            if not name.startswith(GATE_OPTIMIZER_PREFIX):
                raise CheckpointError(
                    f"the checkpoint holds {name}, which ANP-VS did not write; resume it with the "
                    "command that started it"
                )
            index, key = name[len(GATE_OPTIMIZER_PREFIX) :].split(".", 1)
            entries.setdefault(int(index), {})[key] = tensor
        groups = self.gate_optimizer.state_dict()["param_groups"]
        try:
            self.gate_optimizer.load_state_dict({"state": entries, "param_groups": groups})
        except (ValueError, KeyError) as err:
            raise CheckpointError(
                f"the gate optimizer state does not fit this model ({err})"
            ) from err

    def metadata(self) -> dict[str, Any]:
        return {**self.settings, "gates": gates_spec(self.gates)}

    def finish(self, model: nn.Module, run_path: Any) -> None:
        """gates.json: units kept per gate, the paper's "sparsity" being the fraction removed."""
        if self.gates:
            atomic_write_json(Path(run_path) / "gates.json", gate_summary(self.gates))


@register_method(
    "anpvs", description="ANP-VS (Madaan et al., ICML 2020): gates on units, learnt with VS"
)
class ANPVS(GateLearningMethod):
    """A training run with beta-Bernoulli gates and the VS loss from a trained start; the run's
    gated network is then exported at its pruned widths.

    Example: `advprune prune --method anpvs --from runs/standard --beta 4 --run-dir runs/anpvs`.
    """

    reference = "Madaan, Shin & Hwang, ICML 2020; divyam3897/ANP_VS"
    origin = "published"
    Settings = ANPVSSettings
    start_hint = (
        "ANP-VS starts from a trained network, as the official pipeline does (a standard-trained "
        "base): train one with `advprune train --objective standard --run-dir runs/base` and pass "
        "--from runs/base"
    )
    settings: ANPVSSettings

    def training_method(self, context: PruneContext, *, resume: bool) -> TrainingMethod:
        train = self.phase(context.source, context.settings)
        return ANPVSTraining(
            self.settings,
            train,
            tuple(context.data.train.images.shape[1:]),
            self.metadata(context.settings),
        )

    def label(self, prune: PruneSettings) -> str:
        """The paper's names for its ablations: anp (no VS), at-vs (no gates)."""
        label = super().label(prune)
        variant = self.settings.variant
        return label if variant == "anp-vs" else label.replace(self.name, variant, 1)
