"""Flying Bird and Flying Bird+ (Chen et al., "Sparsity Winning Twice", ICLR 2022).

A sparse network trained adversarially from initialization whose topology changes while it
trains: every few hundred steps each layer drops its active weights of smallest magnitude and
grows as many inactive ones, at per-layer sparsities fixed at the start (IGQ); Flying Bird+
also prunes more when robust overfitting shows (the gap between adversarial training accuracy and
validation robust accuracy widens) and grows more when the validation robust loss rises. The
rules are the pure functions of `flyingbird_topology`; this file runs them inside training.

Official code: VITA-Group/Sparsity-Win-Robust-Generalization, main_adv.py with `--fb` / `--fbp`,
`--dynamic_fre`, `--density 0.2` (scripts/fb.sh, scripts/fbp.sh); docs/fidelity.md has the
element-by-element comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from advprune.attacks.pgd import pgd
from advprune.core.config import group, setting
from advprune.core.errors import ConfigError
from advprune.data.dataset import ImageDataset
from advprune.masks import WeightMasks, prunable_parameters
from advprune.methods.base import MethodSettings, PhaseSettings, PruneContext, register_method
from advprune.methods.flyingbird_topology import (
    adaptive_decisions,
    death_rate,
    gradient_growth,
    igq_sparsities,
    magnitude_death,
    random_growth,
    random_masks,
    update_interval,
)
from advprune.methods.kinds import DynamicMaskMethod
from advprune.training.method import DynamicMaskTraining, StepContext
from advprune.training.trainer import TrainingData

GROWTH = ("random", "gradient")
VALIDATION_BATCH = 256
# main_adv.py:42-59: SGD 0.1, momentum 0.9, wd 5e-4, ×0.1 at epochs 100 and 150 of 200, PGD-10
# of step 2/255 in ε 8/255 (our default step 2.5·ε/10 = ε/4 is that step). Batch 128 and ε are
# the start's (--batch-size, --eps: `advprune train`'s defaults are 128 and the dataset's ε).
OFFICIAL_TRAINING = {
    "objective": "pgd-at",
    "epochs": 200,
    "attack_steps": 10,
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "step",
    "milestones": [0.5, 0.75],
    "gamma": 0.1,
}


@dataclass
class FlyingBirdSettings(MethodSettings):
    """Flying Bird's settings; the defaults are the official code's (docs/fidelity.md)."""

    growth: str = setting(
        "random",
        "which inactive weights grow: random (official default) or gradient (largest |∂L/∂w|)",
        choices=GROWTH,
    )
    update_interval: int = setting(900, "optimiser steps between topology updates")
    second_update_interval: int = setting(
        1200, "steps between updates after half the epochs (--dynamic_fre)"
    )
    dynamic_interval: bool = setting(True, "switch to the second interval after half the epochs")
    finetune: PhaseSettings = group(
        PhaseSettings,
        "the adversarial training from initialization (official: 200 epochs PGD-10, SGD 0.1, "
        "×0.1 at 50 % and 75 %)",
        **OFFICIAL_TRAINING,
    )

    def validate(self) -> FlyingBirdSettings:
        super().validate()
        for key in ("update_interval", "second_update_interval"):
            if getattr(self, key) < 1:
                raise ConfigError(
                    f"{key} must be ≥ 1 step, got {getattr(self, key)}; pass e.g. "
                    f"--{key.replace('_', '-')} 900"
                )
        return self


@dataclass
class FlyingBirdPlusSettings(FlyingBirdSettings):
    """Flying Bird+'s adaptive sparsity on top of Flying Bird's (main_adv.py:76-81)."""

    prune_ratio: float = setting(0.4, "extra fraction pruned when the robust gap widens")
    growth_ratio: float = setting(0.05, "extra fraction grown when the validation loss rises")
    window: int = setting(4, "epochs whose changes decide (--epoch_range)")
    threshold: float = setting(0.5, "fraction of rising epochs that triggers a change")
    adaptive_from: float = setting(
        0.5, "fraction of the epochs after which sparsity adapts (official: epoch 100 of 200)"
    )
    validation_fraction: float = setting(
        0.1, "held-out end of the training set for the statistics (official: 5,000 of 50,000)"
    )
    validation_steps: int = setting(20, "PGD steps of the validation attack (step ε/4)")

    def validate(self) -> FlyingBirdPlusSettings:
        super().validate()
        if not 0 < self.validation_fraction < 1:
            raise ConfigError(
                f"validation_fraction must be in (0, 1), got {self.validation_fraction}; pass "
                "e.g. --validation-fraction 0.1"
            )
        return self


class TopologyTraining(DynamicMaskTraining):
    """Adversarial training under masks that change every `update_interval` steps.

    The kind keeps gradients dense (the official code reads `weight.grad` unmasked), zeroes
    pruned weights and their optimiser buffers after every update (sparselearning's
    `apply_mask`), so a weight that grows starts at zero with no momentum; this class says when
    the masks change and how (core.py:424-480, `truncate_weights`).
    """

    def __init__(
        self,
        masks: WeightMasks | None,
        metadata: dict[str, Any],
        settings: FlyingBirdSettings,
        *,
        epochs: int,
        seed: int,
    ) -> None:
        super().__init__(masks, metadata)
        self.rules = settings
        self.epochs = epochs
        self.generator = torch.Generator().manual_seed(seed)
        self.updates = 0

    def update_masks(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, context: StepContext
    ) -> WeightMasks | None:
        """After steps k·900 (k·1200 once past half the epochs), counted over the whole run
        (utils.py:283-289, the global `ite_step`)."""
        rules = self.rules
        step = context.epoch * context.steps_per_epoch + context.step + 1
        interval = update_interval(
            context.epoch,
            self.epochs,
            rules.update_interval,
            rules.second_update_interval,
            rules.dynamic_interval,
        )
        if step % interval:
            return None
        rate = death_rate(step, self.epochs * context.steps_per_epoch)
        return self.prune_and_grow(model, rate, context.epoch)

    def extra_fractions(self, epoch: int) -> tuple[float, float]:
        """(prune more, grow more) fractions at an update in `epoch`: none for Flying Bird."""
        return 0.0, 0.0

    @torch.no_grad()
    def prune_and_grow(self, model: nn.Module, rate: float, epoch: int) -> WeightMasks:
        """Each layer drops ceil(rate · active) of its smallest weights and grows as many."""
        prune_extra, grow_extra = self.extra_fractions(epoch)
        parameters = dict(model.named_parameters())
        changed = {}
        for name, mask in self.masks.items():
            weight = parameters[name]
            kept, removed = magnitude_death(weight, mask, rate, prune_extra)
            if self.rules.growth == "gradient":
                changed[name] = gradient_growth(kept, removed, weight.grad, grow_extra)
            else:
                changed[name] = random_growth(kept, removed, self.generator, grow_extra)
        self.updates += 1
        return WeightMasks(changed)

    def schedule_state(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state(), "updates": torch.tensor(self.updates)}

    def load_schedule_state(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])
        self.updates = int(state["updates"])

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "updates": self.updates}


class AdaptiveTopologyTraining(TopologyTraining):
    """Flying Bird+: after each epoch, the validation robust loss and the gap between
    adversarial training accuracy and validation robust accuracy (main_adv.py:204-211); at each
    update, prune or grow more when they rise (core.py:377-415)."""

    def __init__(
        self,
        masks: WeightMasks | None,
        metadata: dict[str, Any],
        settings: FlyingBirdPlusSettings,
        validation: ImageDataset | None,
        eps: float,
        **schedule: Any,
    ) -> None:
        super().__init__(masks, metadata, settings, **schedule)
        self.validation = validation
        self.eps = eps
        self.losses: list[float] = []
        self.gaps: list[float] = []

    def extra_fractions(self, epoch: int) -> tuple[float, float]:
        rules = self.rules
        decision = adaptive_decisions(
            self.losses,
            self.gaps,
            window=rules.window,
            threshold=rules.threshold,
            active=epoch >= int(rules.adaptive_from * self.epochs),
        )
        return (
            rules.prune_ratio if decision.prune_more else 0.0,
            rules.growth_ratio if decision.grow_more else 0.0,
        )

    def epoch_ended(self, model: nn.Module, record: dict[str, Any]) -> None:
        loss, accuracy = self.validation_statistics(model, record["epoch"])
        self.losses.append(loss)
        self.gaps.append(record["train_accuracy"] - accuracy)

    def validation_statistics(self, model: nn.Module, epoch: int) -> tuple[float, float]:
        """Robust loss and accuracy under PGD (step ε/4, random start) on the held-out images,
        in eval mode (utils.py:336-387, `test_adv`)."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        generator = torch.Generator(device).manual_seed(epoch)
        steps = self.rules.validation_steps
        total_loss, correct = 0.0, 0
        images, labels = self.validation.images, self.validation.labels
        for start in range(0, len(labels), VALIDATION_BATCH):
            x = images[start : start + VALIDATION_BATCH].to(device)
            x = x.float() / 255 if x.dtype == torch.uint8 else x
            y = labels[start : start + VALIDATION_BATCH].to(device)
            x_adv = pgd(model, x, y, self.eps, alpha=self.eps / 4, steps=steps, generator=generator)
            with torch.no_grad():
                logits = model(x_adv).float()
            total_loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
        model.train(was_training)
        return total_loss / len(labels), correct / len(labels)

    def schedule_state(self) -> dict[str, torch.Tensor]:
        return {
            **super().schedule_state(),
            "losses": torch.tensor(self.losses, dtype=torch.float64),
            "gaps": torch.tensor(self.gaps, dtype=torch.float64),
        }

    def load_schedule_state(self, state: dict[str, torch.Tensor]) -> None:
        super().load_schedule_state(state)
        self.losses = state["losses"].tolist()
        self.gaps = state["gaps"].tolist()


def igq_masks(model: nn.Module, sparsity: float, seed: int) -> WeightMasks:
    """IGQ's per-layer sparsities over every conv and linear weight, at random positions
    (core.py:294-306 masks every 2-D and 4-D parameter; `--sparse_init igq`)."""
    weights = prunable_parameters(model, include_bias=False)
    sparsities = igq_sparsities([w.numel() for w in weights.values()], sparsity)
    shapes = {name: w.shape for name, w in weights.items()}
    return WeightMasks(random_masks(shapes, sparsities, torch.Generator().manual_seed(seed)))


@register_method(
    "flyingbird",
    description="Flying Bird (Chen et al., ICLR 2022): prune-and-grow during AT from init",
)
class FlyingBird(DynamicMaskMethod):
    """Adversarial training from initialization of a sparse network whose topology changes.

    Example: `advprune prune --method flyingbird --model preact-resnet18 --dataset cifar10
    --eps 8/255 --sparsity 0.9 --run-dir runs/fb90`.
    """

    reference = "Chen et al., ICLR 2022; VITA-Group/Sparsity-Win-Robust-Generalization"
    origin = "published"
    Settings = FlyingBirdSettings
    settings: FlyingBirdSettings

    def initial_masks(self, context: PruneContext) -> WeightMasks:
        return igq_masks(context.model, context.sparsity, context.settings.seed)

    def mask_training(
        self, context: PruneContext, masks: WeightMasks | None, metadata: dict[str, Any]
    ) -> TopologyTraining:
        validation = self.hold_out(context)
        phase = self.phase(context.source, context.settings)
        schedule = {"epochs": phase.epochs, "seed": context.settings.seed}
        if validation is None:
            return TopologyTraining(masks, metadata, self.settings, **schedule)
        return AdaptiveTopologyTraining(
            masks, metadata, self.settings, validation, phase.eps, **schedule
        )

    def hold_out(self, context: PruneContext) -> ImageDataset | None:
        """The images the statistics are measured on, taken out of `context.data` (none)."""
        return None


@register_method(
    "flyingbird-plus",
    description="Flying Bird+ (Chen et al., ICLR 2022): Flying Bird with adaptive sparsity",
)
class FlyingBirdPlus(FlyingBird):
    """Flying Bird whose sparsity adapts to robust overfitting, measured on held-out images.

    Example: `advprune prune --method flyingbird-plus --model preact-resnet18 --dataset cifar10
    --eps 8/255 --sparsity 0.9 --run-dir runs/fbp90`.
    """

    Settings = FlyingBirdPlusSettings
    settings: FlyingBirdPlusSettings

    def hold_out(self, context: PruneContext) -> ImageDataset:
        """The last `validation_fraction` of the training split, which the phase then does not
        train on (the official cifar10_dataloaders holds out images 45,000-49,999)."""
        data = context.data
        size = len(data.train.labels)
        cut = size - math.ceil(self.settings.validation_fraction * size)
        context.data = TrainingData(data.spec, _part(data.train, 0, cut), data.test)
        return _part(data.train, cut, None)


def _part(dataset: ImageDataset, start: int, stop: int | None) -> ImageDataset:
    return ImageDataset(
        dataset.name,
        dataset.images[start:stop],
        dataset.labels[start:stop],
        dataset.num_classes,
        dataset.class_names,
        dataset.source,
    )
