"""TwinRep (Li et al., AAAI 2023), as published: `--method twinrep`.

"Learning Adversarially Robust Sparse Networks via Weight Reparameterization" trains the network
from initialization with each conv/linear weight written as the product of two factors,
w = u ⊙ v (Twin-Rep; UCAS-LCH/Twin-Rep, docs/fidelity.md has the official code's lines). There
is no explicit sparsity term: weight decay on both factors, λ/2 (‖u‖² + ‖v‖²) ≥ λ‖u ⊙ v‖₁, acts as
an ℓ1 penalty on w and drives small products to zero (`twin_penalty`). At the start of epoch
`prune_epoch` (10 of 100) the mask is read once from the products: the round(p·N) entries of
smallest |u ⊙ v| over all layers together are removed (`twin_masks`), and training goes on with
w = u ⊙ v ⊙ m. The final network holds the folded w (the official `subnet_to_dense`).

With `--structure channels` the weights are reparameterised by Channel-Rep instead: W = A · W',
A an out × out matrix that mixes a layer's filters (`effective_weight`), and the mask removes the
channels of smallest ‖filter‖₂ of A · W' over all groups together (`channel_keep`, the official
`structured_pruning`), each group keeping one at least; the run ends exported.

The official training: PGD-AT (10 steps of 0.0078 in ε 0.031), SGD lr 0.1, momentum 0.9,
weight decay 2e-4 on every parameter (factors, BN), 100 epochs, ×0.1 at epochs 70 and 85.
Departures, recorded in docs/fidelity.md: the training attack starts uniformly in the ball (the
official x + 0.001·N(0, 1)); a pruned channel is masked in its BN and in the layers that read it
too (the official masks only its filter rows, so BN's β passes a constant on), which is what
lets it be removed; the channel variant prunes the hidden units of linear layers as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from advprune.core.config import group, setting
from advprune.core.distributed import average_gradients
from advprune.core.errors import CheckpointError, ConfigError
from advprune.masks import WeightMasks, check_sparsity, prunable_parameters, select_global
from advprune.masks.channels import (
    ChannelGroup,
    channel_weight_masks,
    producer_norms,
    select_channels,
)
from advprune.methods.base import (
    DEFAULT_SPARSITY,
    MethodSettings,
    PhaseSettings,
    PruneContext,
    PruneSettings,
    register_method,
)
from advprune.methods.hydra import MaskedNetwork
from advprune.methods.kinds import DynamicMaskMethod, refuse_selection
from advprune.training.method import StepContext, TrainingMethod

TWIN, CHANNEL = "twin", "channel"  # the official --layer-type of each structure
FACTOR_PREFIX, MASK_PREFIX = "factor.", "mask."


def kaiming_factor(shape: tuple[int, ...]) -> Tensor:
    """A factor as the official layers draw it: kaiming_uniform_(a=√5), U(±1/√fan_in), from the
    global generator, as the official layers do after their weight (a generator of its own seeded
    with the run's seed would repeat the draws of the network's first weights: u = v, w = u²)."""
    factor = torch.empty(shape)
    nn.init.kaiming_uniform_(factor, a=math.sqrt(5))
    return factor


def initial_factor(weight: Tensor, kind: str) -> Tensor:
    """A layer's second factor as the official layers draw it (`kaiming_factor`): shaped like w
    (twin), or out × out (channel); the first factor is the layer's own initialised weight."""
    shape = tuple(weight.shape) if kind == TWIN else (weight.shape[0], weight.shape[0])
    return kaiming_factor(shape).to(weight.device, weight.dtype)


def effective_weight(weight: Tensor, factor: Tensor, kind: str) -> Tensor:
    """The weight the layer computes with: u ⊙ v (twin), or A · W' (channel, the official
    einsum('pq,qrst->prst'): filter p of the result mixes every filter q of W')."""
    if kind == TWIN:
        return weight * factor
    return (factor @ weight.flatten(1)).view_as(weight)


def twin_penalty(weight: Tensor, factor: Tensor, decay: float) -> Tensor:
    """λ/2 (‖u‖² + ‖v‖²): what SGD's weight decay on both factors minimises — the implicit
    sparsity term, ≥ λ‖u ⊙ v‖₁, with equality at the balanced split |u| = |v|."""
    return 0.5 * decay * (weight.pow(2).sum() + factor.pow(2).sum())


def twin_masks(effective: dict[str, Tensor], sparsity: float, seed: int = 0) -> WeightMasks:
    """The round(p·N) entries of smallest |w| over all layers together removed (the official
    `unstructured_pruning`: one kthvalue threshold on every layer's |u ⊙ v|)."""
    magnitudes = {name: w.detach().abs() for name, w in effective.items()}
    return select_global(magnitudes, sparsity, seed=seed)


def channel_keep(
    effective: dict[str, Tensor], groups: list[ChannelGroup], sparsity: float, seed: int = 0
) -> dict[str, Tensor]:
    """The channels of largest ‖filter‖₂ of the effective weights kept, one threshold over all
    groups (the official `structured_pruning`, its `group_lasso` norm), one kept per group."""
    return select_channels(producer_norms(effective, groups), sparsity, scheme="global", seed=seed)


class TwinNetwork(MaskedNetwork):
    """`network` computing with each reparameterised weight's `effective_weight`, and every
    masked parameter (after the mask is read) multiplied by its mask. Its state dict is the
    network's: the first factor lives in the network's own weight."""

    def __init__(self, network: nn.Module, factors: dict[str, Tensor], kind: str) -> None:
        super().__init__()
        self.network = network
        self.factors = factors  # a plain dict: the method's tensors, not the network's
        self.kind = kind
        self.masks: dict[str, Tensor] = {}

    def effective_weights(self) -> dict[str, Tensor]:
        parameters = dict(self.network.named_parameters())
        return {
            name: effective_weight(parameters[name], factor, self.kind)
            for name, factor in self.factors.items()
        }

    def forward(self, x: Tensor) -> Tensor:
        weights = self.effective_weights()
        parameters = dict(self.network.named_parameters())
        for name, mask in self.masks.items():
            weights[name] = weights.get(name, parameters[name]) * mask
        return functional_call(self.network, weights, (x,))


class TwinTraining(TrainingMethod):
    """TwinRep's one training run: the factors train with the weights; the mask is read once at
    the first batch of `prune_epoch`; at the end the products are folded into the weights,
    `masks.safetensors` saved and the masks applied."""

    name = "twinrep"

    def __init__(
        self,
        sparsity: float,
        *,
        prune_epoch: int,
        groups: list[ChannelGroup] | None = None,
        seed: int = 0,
        settings: dict[str, Any] | None = None,
    ) -> None:
        """`prune_epoch`: 1-based, as the official `--pruning-epoch`; `groups`: Channel-Rep and
        channel masks over these groups."""
        check_sparsity(sparsity)
        self.sparsity, self.prune_epoch = sparsity, prune_epoch
        self.groups, self.seed, self.settings = groups, seed, settings or {}
        self.kind = CHANNEL if groups else TWIN
        self.factors: dict[str, nn.Parameter] = {}
        self.network: TwinNetwork | None = None

    def prepare(self, model: nn.Module) -> nn.Module:
        """A factor for every conv and linear weight of the freshly initialised `model`."""
        for name, weight in prunable_parameters(model, include_bias=False).items():
            self.factors[name] = nn.Parameter(initial_factor(weight.detach(), self.kind))
        self.network = TwinNetwork(model, self.factors, self.kind)
        return self.network

    def weight_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Every parameter and every factor: one optimizer, one weight decay (the official
        `SGD(model.parameters())`), which is the sparsity-inducing term."""
        return [*self.network.network.parameters(), *self.factors.values()]

    def before_update(self, model: nn.Module) -> None:
        """The factors are the method's tensors, not DDP's: average their gradients over ranks."""
        average_gradients(list(self.factors.values()))

    def batch_context(self, context: StepContext) -> StepContext:
        """The mask is read once, before the first batch of `prune_epoch`."""
        if not self.network.masks and context.epoch + 1 >= self.prune_epoch:
            self.read_masks()
        return context

    @torch.no_grad()
    def read_masks(self) -> WeightMasks:
        effective = self.network.effective_weights()
        if self.groups:
            keep = channel_keep(effective, self.groups, self.sparsity, self.seed)
            masks = channel_weight_masks(self.network.network, self.groups, keep)
        else:
            masks = twin_masks(effective, self.sparsity, self.seed)
        self.set_masks(masks)
        return masks

    def set_masks(self, masks: WeightMasks) -> None:
        parameters = dict(self.network.network.named_parameters())
        self.network.masks = {
            name: mask.to(parameters[name].device, parameters[name].dtype)
            for name, mask in masks.items()
        }

    def state_dict(self) -> dict[str, Tensor]:
        state = {FACTOR_PREFIX + n: f.detach() for n, f in self.factors.items()}
        state.update({MASK_PREFIX + n: m.bool() for n, m in self.network.masks.items()})
        return state

    def load_state_dict(self, state: dict[str, Tensor], model: nn.Module) -> None:
        """Copy the saved factors into the ones the optimizer holds; restore a read mask."""
        prefix = len(FACTOR_PREFIX)
        saved = {k[prefix:]: t for k, t in state.items() if k.startswith(FACTOR_PREFIX)}
        shapes = {name: tuple(factor.shape) for name, factor in self.factors.items()}
        if {name: tuple(t.shape) for name, t in saved.items()} != shapes:
            raise CheckpointError(
                "the checkpoint's TwinRep factors do not fit this model; start the pruning run "
                "again in a new --run-dir"
            )
        with torch.no_grad():
            for name, factor in self.factors.items():
                factor.copy_(saved[name])
        masks = {k[len(MASK_PREFIX) :]: t for k, t in state.items() if k.startswith(MASK_PREFIX)}
        if masks:
            self.set_masks(WeightMasks(masks))

    def metadata(self) -> dict[str, Any]:
        return self.settings

    def finish(self, model: nn.Module, run_path: Path) -> None:
        """Fold the products into the weights (`subnet_to_dense`) and fix the mask in them."""
        network = self.network.network
        masks = WeightMasks(self.network.masks) if self.network.masks else self.read_masks()
        with torch.no_grad():
            effective = self.network.effective_weights()
            parameters = dict(network.named_parameters())
            for name, weight in effective.items():
                parameters[name].copy_(weight)
        masks.apply(network)
        masks.save(Path(run_path) / "masks.safetensors", {"structure": self.kind})

    def trained_model(self, model: nn.Module) -> nn.Module:
        """The plain network, its weights the folded products."""
        return self.network.network


@dataclass
class TwinRepSettings(MethodSettings):
    """TwinRep's own settings; the defaults are the official train.py's (docs/fidelity.md)."""

    prune_epoch: int = setting(10, "1-based epoch at whose start the mask is read (official 10)")
    finetune: PhaseSettings = group(
        PhaseSettings,
        "the training from initialization (official: 100 epochs, PGD-10, SGD lr 0.1, ×0.1 at "
        "70 and 85, wd 2e-4)",
        objective="pgd-at",
        epochs=100,
        attack_steps=10,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=2e-4,
        schedule="step",
        milestones=[0.69, 0.84],
        gamma=0.1,
    )

    def validate(self) -> TwinRepSettings:
        super().validate()
        if self.prune_epoch < 1:
            raise ConfigError(f"prune_epoch is 1-based, got {self.prune_epoch}")
        return self


@register_method(
    "twinrep", description="TwinRep (Li et al., AAAI 2023): twin-factor weights, pruned in training"
)
class TwinRep(DynamicMaskMethod):
    """One training run of the reparameterised network from initialization; the mask is read
    at `prune_epoch`.

    Its training is `TwinTraining`, not a `DynamicMaskTraining`: the mask multiplies the
    reparameterised weight (Channel-Rep's A · W' mixes filters, so no mask on W' gives it).

    Example: `advprune prune --method twinrep --model resnet18 --dataset cifar10 --eps 0.031
    --sparsity 0.99 --run-dir runs/tr99`.
    """

    reference = "Li et al., AAAI 2023; UCAS-LCH/Twin-Rep"
    origin = "published"
    Settings = TwinRepSettings
    starts_from_initialization = True
    structures = ("weights", "channels")  # what the published method prunes
    settings: TwinRepSettings

    def check(self, prune: PruneSettings) -> None:
        """TwinRep reads one global mask from |u ⊙ v| (or channel norms of A · W')."""
        refuse_selection(
            self, prune, ("scheme", "include_bias"), "ranks every layer's weights together"
        )

    def resolved(self, prune: PruneSettings) -> dict[str, Any]:
        return {
            "sparsity": DEFAULT_SPARSITY if prune.sparsity is None else prune.sparsity,
            "scheme": "global",
            "structure": prune.structure or "weights",
            "reparameterisation": CHANNEL if prune.structure == "channels" else TWIN,
        }

    def training_method(self, context: PruneContext, *, resume: bool) -> TrainingMethod:
        epochs = self.phase(context.source, context.settings).epochs
        if self.settings.prune_epoch > epochs:
            context.log(
                f"twinrep: the run ends before epoch {self.settings.prune_epoch}; the mask is "
                "read at its end, with no training under it (lower --prune-epoch)"
            )
        context.log(
            f"twinrep: from initialization, {context.sparsity:.0%} of the "
            f"{'channels' if context.channels else 'weights'} removed at the start of epoch "
            f"{self.settings.prune_epoch} of {epochs}"
        )
        return TwinTraining(
            context.sparsity,
            prune_epoch=self.settings.prune_epoch,
            groups=context.channel_groups() if context.channels else None,
            seed=context.settings.seed,
            settings=self.metadata(context.settings),
        )
