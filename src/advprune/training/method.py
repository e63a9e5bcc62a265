"""How a method takes part in training, without owning the loop (docs/architecture.md).

The trainer owns data order, learning-rate schedule, checkpoints, logging and resume. A method
owns what one optimisation step does to the model and to its own parameters (gates, scores), and
the tensors it must checkpoint. `TrainingMethod` itself is plain training of every weight on the
run's objective; `MaskedTraining` keeps pruned weights at exactly zero; `DynamicMaskTraining` lets
a method change its masks while the network trains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from advprune.core.distributed import unwrap
from advprune.core.errors import CheckpointError, TrainingError
from advprune.masks import WeightMasks
from advprune.training.objectives import AttackSettings, ObjectiveOutput


@dataclass
class StepContext:
    """What a step may need besides the batch: the run's objective on a model, and where we are."""

    objective: Callable[[nn.Module, torch.Tensor, torch.Tensor], ObjectiveOutput]
    epoch: int
    step: int
    steps_per_epoch: int
    lr: float
    examples: int  # training-set size N, e.g. for the KL/N term of a variational objective
    # The run's training attack. Its generator is in the same state on every rank and is
    # checkpointed: draw noise that must agree across ranks (e.g. gate samples) from it, and
    # per-example noise with its noise_shard (docs/scaling.md, "Methods under DDP").
    attack: AttackSettings | None = None
    flag_prefix: str = ""  # hints name `--{flag_prefix}lr`: the flag of the command that runs


def check_finite(loss: torch.Tensor, context: StepContext, what: str = "loss") -> None:
    """Stop before a non-finite loss reaches the weights; the last checkpoint on disk stays good."""
    if not torch.isfinite(loss):
        # `--precision` is a flag of `train`; a pruning phase runs in its source run's precision.
        precision = "" if context.flag_prefix else " or use --precision fp32"
        raise TrainingError(
            f"{what} is {loss.item()} at epoch {context.epoch + 1} step {context.step + 1}; lower "
            f"--{context.flag_prefix}lr{precision} — the last good checkpoint is kept"
        )


class TrainingMethod:
    """Plain training: every parameter of the model on the run's objective."""

    name = "dense"
    # Under torchrun the trainer wraps the model in DistributedDataParallel after `prepare`; a
    # method whose backward passes leave some of the model's trainable parameters without a
    # gradient (e.g. a gate-only pass) must set this, or DDP stops at the next step.
    find_unused_parameters = False

    def prepare(self, model: nn.Module) -> nn.Module:
        """Adapt the freshly built model (on its device) before the optimizer is made and before
        the DDP wrap; `step` then receives the wrapped model (`core.distributed.unwrap` gives the
        module inside)."""
        return model

    def weight_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters the trainer's optimizer and schedule update."""
        return list(model.parameters())

    def step(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        context: StepContext,
    ) -> ObjectiveOutput:
        """One optimisation step on the batch; returns the loss and logits that are logged.

        Under torchrun `model` is the DDP-wrapped model: forward and backward go through it (so
        gradients are averaged over ranks), the hooks get the module inside (its own names).
        """
        context = self.batch_context(context)
        out = context.objective(model, x, y)
        term = self.loss_term(unwrap(model), context)
        loss = out.loss if term is None else out.loss + term
        check_finite(loss, context)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.before_update(unwrap(model))
        optimizer.step()
        self.after_update(unwrap(model))
        return out if term is None else ObjectiveOutput(loss.detach(), out.logits)

    def batch_context(self, context: StepContext) -> StepContext:
        """The context a batch's objective runs in: a method that runs more around the objective
        (HYDRA's and HARP's extra train-mode passes) returns its own."""
        return context

    def may_keep(self) -> bool:
        """Whether the epoch just ended may be the one `--keep best-*` keeps (HARP's: only once
        its target is reached, as the official code's model_best)."""
        return True

    def loss_term(self, model: nn.Module, context: StepContext) -> torch.Tensor | None:
        """A term of the method's own, added to the objective's loss of every batch (HARP's
        γ·L_hw), or None; the step then logs the sum. `model` is the unwrapped model."""
        return None

    def before_update(self, model: nn.Module) -> None:
        """Called between backward and the weight update, with the unwrapped model."""

    def after_update(self, model: nn.Module) -> None:
        """Called after the weight update, with the unwrapped model."""

    def epoch_ended(self, model: nn.Module, record: dict[str, Any]) -> None:
        """Called after each epoch (every rank, the unwrapped model, before its checkpoint) with
        the epoch's record (`epoch`, `train_accuracy`, the monitor's figures): a method that
        decides from training statistics (Flying Bird+, Robust Bird's stop rule) does it here."""

    @property
    def complete(self) -> bool:
        """True once the method's phase has done its work before the last epoch (an early-bird
        ticket found): the trainer then ends the run, as it would after the last epoch."""
        return False

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors saved with every checkpoint (and restored on resume)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor], model: nn.Module) -> None:
        """Restore what `state_dict` saved; called on resume after the model's weights loaded."""
        if state:
            raise CheckpointError(
                f"the checkpoint holds method state ({', '.join(sorted(state)[:3])}…) that plain "
                "training cannot use; resume it with the command that started it (e.g. prune)"
            )

    def metadata(self) -> dict[str, Any]:
        """Stored with the final model (over {"name": the objective}), so evaluation and reports
        can tell methods apart; plain training adds nothing."""
        return {}

    def finish(self, model: nn.Module, run_path: Any) -> None:
        """Called once after the last epoch, with the final model in eval mode."""

    def trained_model(self, model: nn.Module) -> nn.Module:
        """What the finished run saves and returns, after `finish`: the model itself, or the
        network inside a wrapper that `prepare` put around it (TwinRep's reparameterisation)."""
        return model


class MaskedTraining(TrainingMethod):
    """Fine-tuning under fixed weight masks: gradients masked before each update, weights after."""

    def __init__(self, masks: WeightMasks | None, settings: dict[str, Any]) -> None:
        self.masks = masks
        self.settings = settings
        self.name = settings.get("name", "masked")

    def prepare(self, model: nn.Module) -> nn.Module:
        if self.masks is not None:
            self.masks.apply(model)
        return model

    def before_update(self, model: nn.Module) -> None:
        self.masks.mask_gradients(model)

    def after_update(self, model: nn.Module) -> None:
        self.masks.apply(model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.masks.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], model: nn.Module) -> None:
        self.masks = WeightMasks.from_state_dict(state)
        self.masks.apply(model)

    def metadata(self) -> dict[str, Any]:
        return self.settings

    def finish(self, model: nn.Module, run_path: Any) -> None:
        self.masks.save(run_path / "masks.safetensors")


MASKS_PREFIX = "masks."  # where `DynamicMaskTraining` checkpoints its masks


class DynamicMaskTraining(MaskedTraining):
    """Training under masks that change while the network trains (dynamic sparse training, e.g.
    a prune-and-grow schedule): a subclass writes `update_masks`.

    Gradients stay dense, so a growth criterion can read those of pruned weights; after each
    optimizer update the pruned weights and their optimizer buffers are zeroed (the order of the
    official sparselearning `Masking.step`: numerically the same as masking the gradients), then
    `update_masks` may replace the masks. The masks and `schedule_state` are checkpointed, so a
    resumed run continues exactly.
    """

    def before_update(self, model: nn.Module) -> None:
        """Gradients stay dense: `update_masks` may read those of the pruned weights."""

    def step(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        context: StepContext,
    ) -> ObjectiveOutput:
        out = super().step(model, x, y, optimizer, context)
        network = unwrap(model)
        # The buffers of the weights pruned so far first, as sparselearning's `apply_mask` after
        # `optimizer.step()`: a weight that `update_masks` grows back starts with none.
        self.masks.mask_optimizer_state(network, optimizer)
        masks = self.update_masks(network, optimizer, context)
        if masks is not None:
            self.masks = masks
            self.masks.apply(network)
            self.masks.mask_optimizer_state(network, optimizer)
        return out

    def update_masks(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, context: StepContext
    ) -> WeightMasks | None:
        """Called after every optimizer update with the unwrapped model (pruned weights at zero,
        `.grad` this step's dense gradients, averaged over ranks), the optimizer and the step's
        counters (`context.epoch`; `context.step` within it, the epoch's last when
        `context.step + 1 == context.steps_per_epoch`). New masks replace the current ones at
        once: the weights they prune are zeroed with their optimizer buffers, the weights they
        grow start at their current value (zero, unless this sets them). None keeps the masks."""
        return None

    def schedule_state(self) -> dict[str, torch.Tensor]:
        """The method's own tensors to checkpoint besides the masks (counters, a decayed update
        fraction, a generator's state); no key may start with "masks."."""
        return {}

    def load_schedule_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what `schedule_state` saved."""
        if state:
            raise CheckpointError(
                f"the checkpoint holds state ({', '.join(sorted(state)[:3])}…) that "
                f"{type(self).__name__} did not write; resume it with the command that started it"
            )

    def state_dict(self) -> dict[str, torch.Tensor]:
        masks = {MASKS_PREFIX + name: mask for name, mask in self.masks.state_dict().items()}
        return {**masks, **self.schedule_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor], model: nn.Module) -> None:
        own = {k: v for k, v in state.items() if not k.startswith(MASKS_PREFIX)}
        masks = {k[len(MASKS_PREFIX) :]: v for k, v in state.items() if k not in own}
        super().load_state_dict(masks, model)
        self.load_schedule_state(own)
