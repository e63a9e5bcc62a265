"""RADMM (Ye et al., ICCV 2019), as published: `--method radmm`.

"Adversarial Robustness vs. Model Compression, or Both?" prunes an adversarially trained network
by ADMM under its adversarial objective (yeshaokai/Robustness-Aware-Pruning-ADMM; docs/fidelity.md
has the official code's lines). From a PGD-AT network:

1. **ADMM phase** (the official `--stage admm`, in RUN_DIR/scores, set by `--score-*`: 200
   epochs, SGD lr 0.01, wd 1e-4, PGD-AT): each pruned layer's weights W get an auxiliary copy Z
   in the sparsity set S (at most k nonzeros per layer) and a scaled dual U. The loss is the
   adversarial cross-entropy plus Σ_l ρ/2 ‖W_l − Z_l + U_l‖² (`admm_loss`, the `loss_term`).
   Z = Π_S(W), U = 0 at the start; every `update_every` epochs (the official `admm_epoch`, 20)
   ρ grows by 1.3 (`multi_rho`), then Z ← Π_S(W + U) and U ← U + W − Z. Π_S keeps the k
   entries of largest |·| of each layer (`project_weights`). The learning rate restarts at each
   update and falls tenfold at each third of the cycle (`admm_learning_rate`).
2. **Hard pruning and masked retraining** (`--stage retrain`, 200 epochs, SGD lr 0.01, ×0.1 at
   epochs 80 and 150, PGD-AT): the k largest |W| of each layer are kept and the rest trained
   under the fixed mask.

With `--structure channels` (the official `sparsity_type: filter`) Π_S keeps the filters of
largest L2 norm instead: the channels of each Torch-Pruning dependency group with the largest
norm over the filters that produce them (`project_channels`), the same fraction in every group,
and the hard pruning removes the whole channel (its filters, BN and the columns that read it), so
the run ends exported.

Departures, recorded in docs/fidelity.md: every conv and linear weight is pruned (the official
configs list the conv layers only); exactly round(p·n) entries go per layer (the official
`np.percentile` threshold keeps those strictly above it); the training attack runs in eval mode
(the official one runs inside the train-mode model); retraining keeps its last epoch (the
official keeps the epoch of lowest test loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advprune.core.config import group, setting
from advprune.core.errors import CheckpointError, ConfigError
from advprune.masks import (
    WeightMasks,
    check_sparsity,
    lowest_entries,
    prunable_parameters,
    pruned_count,
    select,
)
from advprune.masks.channels import (
    PRODUCER,
    ChannelGroup,
    channel_weight_masks,
    parameter_masks,
    producer_norms,
    select_channels,
)
from advprune.methods.base import (
    MethodSettings,
    PhaseSettings,
    PruneContext,
    PruneSettings,
    register_method,
)
from advprune.methods.kinds import MaskLearningMethod
from advprune.training.config import TrainConfig
from advprune.training.method import StepContext, TrainingMethod
from advprune.training.objectives import ObjectiveOutput

SCHEME = "layerwise"  # every pruned layer keeps the same fraction (the configs' prune_ratios)
LR_DECAY = 0.1  # admm_adjust_learning_rate: ×0.1 at each third of an ADMM cycle
Z_PREFIX, U_PREFIX, CYCLE_KEY = "z.", "u.", "cycle"


def project_weights(tensor: Tensor, sparsity: float) -> Tensor:
    """Π_S: the Euclidean projection onto tensors with at most k = n − round(p·n) nonzeros,
    i.e. `tensor` with all but its k entries of largest |·| set to 0 (`weight_pruning`,
    "irregular"); ties at the threshold by position."""
    magnitude = tensor.detach().abs().flatten()[None]
    pruned = lowest_entries(magnitude, pruned_count(magnitude.numel(), sparsity))[0]
    return tensor.detach().masked_fill(pruned.view_as(tensor), 0)


def project_channels(
    tensors: dict[str, Tensor], groups: list[ChannelGroup], sparsity: float
) -> dict[str, Tensor]:
    """Π_S for filter sparsity: the producing rows of all but the channels of largest L2 norm
    in each group (over the rows of every weight that produces the channel: a residual group's
    coupled convs together) set to 0 (`weight_pruning`, "filter"), round(p·C) channels per
    group, one kept at least; the columns that read a channel are not constrained."""
    keep = select_channels(producer_norms(tensors, groups), sparsity, scheme=SCHEME)
    factors = parameter_masks(groups, {n: k.float() for n, k in keep.items()}, roles=(PRODUCER,))
    return {
        name: t.detach() * factors[name].to(t.device) if name in factors else t.detach().clone()
        for name, t in tensors.items()
    }


def dual_update(weight: Tensor, z: Tensor, u: Tensor) -> Tensor:
    """U ← U + W − Z: the scaled dual's step (`admm_update`, after Z ← Π_S(W + U))."""
    return u + weight.detach() - z


def admm_loss(weights: dict[str, Tensor], z: dict[str, Tensor], u: dict[str, Tensor], rho: float):
    """Σ_l ρ/2 ‖W_l − Z_l + U_l‖²: the augmented Lagrangian's term (`append_admm_loss`)."""
    return sum(0.5 * rho * (w - z[n] + u[n]).pow(2).sum() for n, w in weights.items())


def rho_at(rho: float, growth: float, cycle: int) -> float:
    """ρ in ADMM cycle `cycle` (0-based): multiplied by `growth` at each Z/U update
    (`admm_multi_rho_scheduler`, called before each update)."""
    return rho * growth**cycle


def admm_learning_rate(lr: float, epoch: int, update_every: int) -> float:
    """The ADMM phase's rate at 0-based `epoch`: `lr` at each cycle's start, ×0.1 at each
    third of it (`admm_adjust_learning_rate`: lr · 0.1^((e mod P) // (P / 3)))."""
    return lr * LR_DECAY ** ((epoch % update_every) // (update_every / 3))


class ADMMTraining(TrainingMethod):
    """RADMM's ADMM phase: the run's objective plus the ADMM term, Z and U updated at each cycle.

    Z, U and the cycle they belong to are the method's state, checkpointed with the run. At the end
    the hard-pruned masks (the k largest |W| per layer, or the channels of largest filter norm)
    are saved as `masks.safetensors` and applied, so the phase's model is the pruned network.
    """

    name = "radmm-admm"

    def __init__(
        self,
        sparsity: float,
        *,
        rho: float,
        rho_growth: float,
        update_every: int,
        groups: list[ChannelGroup] | None = None,
        seed: int = 0,
    ) -> None:
        """`groups`: filter sparsity over these channel groups instead of weight sparsity."""
        check_sparsity(sparsity)
        self.sparsity, self.rho, self.rho_growth = sparsity, rho, rho_growth
        self.update_every, self.groups, self.seed = update_every, groups, seed
        self.model: nn.Module | None = None
        self.z: dict[str, Tensor] = {}
        self.u: dict[str, Tensor] = {}
        self.cycle = -1  # the ADMM cycle Z and U belong to; -1: not initialised

    def prepare(self, model: nn.Module) -> nn.Module:
        self.model = model
        return model

    def weights(self) -> dict[str, nn.Parameter]:
        return prunable_parameters(self.model, include_bias=False)

    def project(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.groups:
            return project_channels(tensors, self.groups, self.sparsity)
        return {name: project_weights(t, self.sparsity) for name, t in tensors.items()}

    @torch.no_grad()
    def update(self, cycle: int) -> None:
        """Z = Π_S(W), U = 0 at the start; at each later cycle Z ← Π_S(W + U), U ← U + W − Z."""
        weights = {name: w.detach() for name, w in self.weights().items()}
        if self.cycle < 0:
            self.z = self.project(weights)
            self.u = {name: torch.zeros_like(w) for name, w in weights.items()}
        else:
            self.z = self.project({name: w + self.u[name] for name, w in weights.items()})
            self.u = {n: dual_update(w, self.z[n], self.u[n]) for n, w in weights.items()}
        self.cycle = cycle

    def current_rho(self) -> float:
        return rho_at(self.rho, self.rho_growth, max(self.cycle, 0))

    def loss_term(self, model: nn.Module, context: StepContext) -> Tensor:
        """Σ ρ/2 ‖W − Z + U‖², after Z and U moved if this batch opens a cycle (nothing between
        the batch's start and here changes W)."""
        cycle = context.epoch // self.update_every
        if cycle != self.cycle:
            self.update(cycle)
        return admm_loss(self.weights(), self.z, self.u, self.current_rho())

    def step(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        optimizer: torch.optim.Optimizer,
        context: StepContext,
    ) -> ObjectiveOutput:
        """The phase's rate restarts at each cycle and falls tenfold at each third of it."""
        for param_group in optimizer.param_groups:
            param_group["lr"] = admm_learning_rate(context.lr, context.epoch, self.update_every)
        return super().step(model, x, y, optimizer, context)

    def hard_masks(self, model: nn.Module) -> WeightMasks:
        """The k largest |W| of each layer (`masking`), or each group's channels of largest
        filter norm, the whole channel masked."""
        weights = prunable_parameters(model, include_bias=False)
        if self.groups:
            norms = producer_norms(weights, self.groups)
            keep = select_channels(norms, self.sparsity, scheme=SCHEME)
            return channel_weight_masks(model, self.groups, keep)
        magnitudes = {name: w.detach().abs() for name, w in weights.items()}
        return select(magnitudes, self.sparsity, scheme=SCHEME, seed=self.seed)

    def state_dict(self) -> dict[str, Tensor]:
        state = {Z_PREFIX + n: z for n, z in self.z.items()}
        state.update({U_PREFIX + n: u for n, u in self.u.items()})
        return {**state, CYCLE_KEY: torch.tensor(self.cycle)}

    def load_state_dict(self, state: dict[str, Tensor], model: nn.Module) -> None:
        weights = self.weights()
        saved = {k[len(Z_PREFIX) :] for k in state if k.startswith(Z_PREFIX)}
        if CYCLE_KEY not in state or (saved and saved != set(weights)):
            raise CheckpointError(
                "the checkpoint's ADMM variables do not fit this model; start the pruning run "
                "again in a new --run-dir"
            )
        self.cycle = int(state[CYCLE_KEY])
        self.z = {n: state[Z_PREFIX + n].to(weights[n].device) for n in saved}
        self.u = {n: state[U_PREFIX + n].to(weights[n].device) for n in saved}

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sparsity": self.sparsity,
            "structure": "channels" if self.groups else "weights",
            "rho": self.rho,
            "rho_growth": self.rho_growth,
            "update_every": self.update_every,
        }

    def finish(self, model: nn.Module, run_path: Path) -> None:
        masks = self.hard_masks(self.model)
        masks.save(Path(run_path) / "masks.safetensors", self.metadata())
        masks.apply(self.model)


# adv_main.py: SGD, momentum 0.9, wd 1e-4 in every stage; the adversarial cross-entropy alone.
OFFICIAL_PHASE = {"objective": "pgd-at", "optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4}


@dataclass
class RadmmSettings(MethodSettings):
    """RADMM's own settings; the defaults are the official CIFAR-10 config's (docs/fidelity.md)."""

    score: PhaseSettings = group(
        PhaseSettings,
        "the ADMM phase, RUN_DIR/scores (official: 200 epochs, PGD-AT, SGD lr 0.01 restarted "
        "each cycle, wd 1e-4)",
        epochs=200,
        lr=0.01,
        schedule="constant",
        **OFFICIAL_PHASE,
    )
    update_every: int = setting(20, "epochs between Z/U updates (the official admm_epoch)")
    rho: float = setting(1e-3, "ρ of the ADMM term at the start")
    rho_growth: float = setting(1.3, "factor on ρ at each Z/U update (official multi_rho)")
    finetune: PhaseSettings = group(
        PhaseSettings,
        "masked retraining (official: 200 epochs, PGD-AT, SGD lr 0.01, ×0.1 at 80 and 150)",
        epochs=200,
        lr=0.01,
        schedule="step",
        milestones=[0.4, 0.75],
        gamma=0.1,
        **OFFICIAL_PHASE,
    )

    def validate(self) -> RadmmSettings:
        super().validate()
        if self.update_every < 1:
            raise ConfigError(f"update_every must be ≥ 1 epoch, got {self.update_every}")
        if not (self.rho > 0 and self.rho_growth > 0):
            raise ConfigError(f"rho and rho_growth must be > 0, got {self.rho}, {self.rho_growth}")
        return self


@register_method("radmm", description="RADMM (Ye et al., ICCV 2019): ADMM pruning under PGD-AT")
class Radmm(MaskLearningMethod):
    """An ADMM phase in RUN_DIR/scores (`--score-*`), hard pruning, then masked retraining.

    Example: `advprune prune --method radmm --from runs/at --sparsity 0.95 --run-dir runs/radmm95`.
    """

    reference = "Ye et al., ICCV 2019; yeshaokai/Robustness-Aware-Pruning-ADMM"
    origin = "published"
    Settings = RadmmSettings
    default_scheme = SCHEME
    structures = ("weights", "channels")
    settings: RadmmSettings

    def check(self, prune: PruneSettings) -> None:
        """RADMM projects each layer (or group) onto its own k: no other scheme or order fits."""
        super().check(prune)
        if prune.scheme not in (None, SCHEME):
            raise ConfigError(
                f"RADMM prunes layer-wise (a k per layer); drop --scheme {prune.scheme}"
            )
        if prune.order != "lowest" or prune.include_bias:
            raise ConfigError(
                "RADMM keeps the largest weights after ADMM; drop --order and --include-bias"
            )

    def mask_training(self, context: PruneContext, config: TrainConfig) -> ADMMTraining:
        """The ADMM phase (RUN_DIR/scores, set by `--score-*`): ends in the hard-pruned masks."""
        context.log(
            f"radmm: ADMM towards {context.sparsity:.0%} "
            f"{'of the channels' if context.channels else 'of each layer'}, {config.epochs} "
            f"epochs of {config.objective}, Z and U every {self.settings.update_every}"
        )
        return ADMMTraining(
            context.sparsity,
            rho=self.settings.rho,
            rho_growth=self.settings.rho_growth,
            update_every=self.settings.update_every,
            groups=context.channel_groups() if context.channels else None,
            seed=context.settings.seed,
        )
