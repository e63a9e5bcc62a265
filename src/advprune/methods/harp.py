"""HARP (Zhao & Wressnegger, ICLR 2023), as published: `--method harp`.

"Holistic Adversarially Robust Pruning" learns, on the adversarial loss, *which* connections to
keep (HYDRA's popup scores) and *how many* in each layer, under a compression target
(intellisec/harp; docs/fidelity.md has the official code's lines). From a PGD-AT network:

1. **Prune phase** (official `harp_prune`, 20 epochs, SGD lr 0.1, cosine, wd 5e-4): each layer
   has scores s, initialised √(6 / fan_in) · w / max|w| (HYDRA's scaled init), and a rate score
   r with kept fraction k = sigmoid(r)·(1 − k_min) + k_min, k_min = α·k_target (α = 0.1), started
   from the "010_uni" strategy k₀ = 0.1 in every layer (`rate_logit`). The forward pass keeps the
   top-k |s| of each layer, the lowest int((1 − k)·n) set to 0; the backward pass sends the
   mask's gradient g straight through to |s| and Σg to k (`GetSubnet`). The loss is the PGD-AT
   cross-entropy plus γ·L_hw, L_hw = max(rate/k_target − 1, 0), rate = Σ n_l·k_l / Σ n_l over
   the layers' weights (`utils/hw.py` `hw_loss`); γ is step-wise incremental, γ_e = (e + 1)·γ₀
   (γ₀ = 0.01) for the 0-based epoch e, and frozen from the first epoch at whose end
   round(L_hw, 4) = 0. The scores, the rates and BN's affine parameters train; every other
   weight is frozen.
2. **Fine-tuning** (`harp_finetune`, 100 epochs, SGD lr 0.01, cosine, wd 5e-4, PGD-AT): the
   masks the learnt scores and rates give are fixed, and the kept weights train.

With `--structure channels` (the official `prune_reg channel`) each channel of a dependency group
(masks/channels.py) has one score, initialised √6 · ‖filter‖₁ / max‖filter‖₁, and each group one
rate; round(k·C) channels are kept, and in the prune phase the mask multiplies only the input
columns of the layers that read them (the official [1, C_in, 1, 1] mask). The rate is counted
in FLOPs as the official `hw_flops_loss` counts them (harp_flops.py: registration-order pairing,
round(C·k) target; `channel_flops="data-flow"` is the corrected pairing); the official channel
strategy starts every rate at 1 ("original").

Both phases run the official trainer's clean train-mode forward pass before the loss
(`TrainModePasses`), which BN's running statistics see.

Departures, all recorded in docs/fidelity.md: each phase keeps its last epoch, not `model_best`
(the epoch of best adversarial test accuracy: a selection on the test set); a prune phase too
short to reach the target (a smoke run) ends with every rate scaled down by one factor until it
does, where the official code would have no model to fine-tune; channels are Torch-Pruning groups
(residual-coupled channels share one rate, the RGB input is never pruned), not each layer's input
channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advprune.core.config import group, setting
from advprune.core.distributed import average_gradients
from advprune.core.errors import CheckpointError, ConfigError
from advprune.masks import WeightMasks
from advprune.masks.channels import (
    CONSUMER,
    ChannelGroup,
    channel_weight_masks,
    parameter_masks,
    top_channels,
)
from advprune.masks.masked_network import MaskedNetwork
from advprune.methods.base import (
    DEFAULT_SPARSITY,
    MethodSettings,
    PhaseSettings,
    PruneContext,
    PruneSettings,
    register_method,
)
from advprune.methods.harp_flops import PAIRINGS, ChannelFlops, FlopsLayer, flops_layers
from advprune.methods.hydra import (
    OfficialPasses,
    TrainModePasses,
    official_finetuning,
    scaled_channel_scores,
    scaled_scores,
    straight_through,
    top_k_mask,
)
from advprune.methods.kinds import MaskLearningMethod
from advprune.models.layer_types import NORMS
from advprune.training.config import TrainConfig
from advprune.training.method import MaskedTraining, StepContext, TrainingMethod

RATE_CLIP = 0.99  # utils/utils.py rate_init_func: the fraction is clipped into ±(1 − 1e-2)
REACHED_DIGITS = 4  # train.py: the target counts as reached when round(L_hw, 4) == 0
WEIGHT_STRATEGY = 0.1  # configs/strategies.json "010_uni": k₀ = 0.1 in every layer
CHANNEL_STRATEGY = 1.0  # the only channel strategy, "original"
HISTORY_KEYS = ("epoch", "gamma", "hw_loss", "rate")  # logged at each epoch's end


def kept_rate(rate_score: Tensor, floor: float) -> Tensor:
    """k = sigmoid(r)·(1 − k_min) + k_min ∈ (k_min, 1): a layer's kept fraction (rate_act_func)."""
    return torch.sigmoid(rate_score) * (1 - floor) + floor


def rate_logit(rate: float, floor: float) -> float:
    """The rate score r that starts a layer at kept fraction `rate` (rate_init_func)."""
    fraction = min(max((rate - floor) / (1 - floor), -RATE_CLIP), RATE_CLIP)
    return math.log(fraction / (1 - fraction))


def pruned_entries(size: int, rate: float) -> int:
    """int((1 − k)·n) of a layer's n weights are pruned (GetSubnet, weight pruning)."""
    return int((1 - rate) * size)


def kept_of_channels(size: int, rate: float) -> int:
    """round(k·C) of a group's C channels are kept (GetSubnet, channel pruning), at least one."""
    return max(1, round(rate * size))


def hard_mask(scores: Tensor, rate: float, channels: bool) -> Tensor:
    """1 on the entries (or channels) of highest |s| that the rate keeps, 0 elsewhere."""
    if channels:
        return top_channels(scores.detach().abs(), kept_of_channels(scores.numel(), rate))
    return top_k_mask(scores, pruned_entries(scores.numel(), rate))


class CompressionRate:
    """The rate L_hw compares with its target under weight pruning: the kept share of the
    weights, Σ n_l·k_l / Σ n_l, as a differentiable function of the rates (`hw.py:132-163`)."""

    def __init__(self, sizes: dict[str, float]):
        """`sizes`: weights per rated unit."""
        self.sizes = sizes

    @classmethod
    def of_weights(cls, scores: dict[str, Tensor]) -> CompressionRate:
        return cls({name: float(s.numel()) for name, s in scores.items()})

    def __call__(self, rates: Callable[[str], Tensor | float]) -> Tensor:
        """The kept share under `rates` (unit name → kept fraction)."""
        kept = sum(size * rates(name) for name, size in self.sizes.items())
        return torch.as_tensor(kept / sum(self.sizes.values()))

    def target_rate(self, target: float) -> float:
        return target


def compression_loss(
    rate: CompressionRate | ChannelFlops, rates: Callable[[str], Tensor | float], target: float
) -> Tensor:
    """L_hw = max(rate / target_rate − 1, 0)."""
    return torch.clamp(rate(rates) / rate.target_rate(target) - 1, min=0)


class RatedNetwork(MaskedNetwork):
    """`network` with each scored tensor (or channel group) masked by the top-k of its scores at
    its learnt rate, straight-through to the scores and the rate; the network's own tensors and
    state dict are untouched (as HYDRA's `ScoredNetwork`).

    A channel mask multiplies only the input columns of the layers that read the channel, as the
    official [1, C_in, 1, 1] mask does (`models/layers.py:118-120`): the producing layer and its
    BN still run, so a pruned channel's score and its group's rate keep a task gradient and the
    channel can come back."""

    def __init__(
        self,
        network: nn.Module,
        scores: dict[str, Tensor],
        rate_scores: dict[str, Tensor],
        floor: float,
        groups: list[ChannelGroup] | None = None,
    ) -> None:
        """`scores` by parameter name (or by group, with `groups`), one rate score per entry."""
        super().__init__()
        self.network = network
        self.scores: dict[str, Tensor] = scores
        self.rate_scores: dict[str, Tensor] = rate_scores
        self.floor = floor
        self.groups: list[ChannelGroup] | None = groups
        self.masks: dict[str, Tensor] = {}
        self.update_masks()

    def rate(self, name: str) -> Tensor:
        return kept_rate(self.rate_scores[name], self.floor)

    @torch.no_grad()
    def update_masks(self) -> None:
        """The hard masks of the current scores and rates (they change only with a step)."""
        channels = self.groups is not None
        self.masks = {
            name: hard_mask(s, float(self.rate(name)), channels) for name, s in self.scores.items()
        }

    def weight_masks(self) -> dict[str, Tensor]:
        masks = {}
        for name, scores in self.scores.items():
            rate = self.rate(name)
            masks[name] = straight_through(self.masks[name], scores) + (rate - rate.detach())
        if self.groups is None:
            return masks
        return parameter_masks(self.groups, masks, roles=(CONSUMER,))


def scaled_to_target(
    rates: dict[str, float], floor: float, rate: CompressionRate | ChannelFlops, target: float
) -> dict[str, float]:
    """The rates times the one factor c ∈ (0, 1] (each kept above the floor) whose compression
    rate meets the target: a prune phase that ended above it keeps its learnt allocation."""

    def scaled(factor: float) -> dict[str, float]:
        return {name: max(floor, factor * k) for name, k in rates.items()}

    target_rate = rate.target_rate(target)
    low, high = 0.0, 1.0
    for _ in range(50):  # bisection: the compression rate grows with the factor
        middle = (low + high) / 2
        if float(rate(scaled(middle).__getitem__)) > target_rate:
            high = middle
        else:
            low = middle
    return scaled(low)


class HarpTraining(OfficialPasses, TrainingMethod):
    """HARP's prune phase: scores, rates and BN's affine parameters learn on the run's objective
    plus γ·L_hw; at the end the masks are fixed (`masks.safetensors`) and applied to the weights,
    so the phase's model.safetensors is the pruned network fine-tuning starts from."""

    name = "harp-prune"

    def __init__(
        self,
        target: float,
        *,
        gamma: float,
        rate_floor: float,
        initial_rate: float,
        train_batchnorm: bool = True,
        groups: list[ChannelGroup] | None = None,
        flops: list[FlopsLayer] | None = None,
        pairing: str = "registration",
        passes: TrainModePasses | None = None,
    ) -> None:
        """`target`: the kept fraction k aimed at (1 − sparsity); `gamma`: γ₀; each rate stays
        above rate_floor·target; `groups` and their network's `flops` layers: prune channels,
        the rate counted in FLOPs with `pairing` (harp_flops.py); `passes`: the official
        trainer's extra forward passes."""
        self.target, self.gamma, self.floor = target, gamma, rate_floor * target
        self.passes = passes
        self.initial_rate = initial_rate
        self.train_batchnorm = train_batchnorm
        self.groups, self.flops, self.pairing = groups, flops, pairing
        self.scores: dict[str, nn.Parameter] = {}
        self.rate_scores: dict[str, nn.Parameter] = {}
        self.network: RatedNetwork | None = None
        self.frozen_gamma: float | None = None  # γ once the target is reached
        self.epoch = 0  # the epoch of the last step
        self.history: list[dict[str, float]] = []

    def prepare(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(False)
        if self.train_batchnorm:
            for module in model.modules():
                if isinstance(module, NORMS):
                    module.requires_grad_(True)
        device = next(model.parameters()).device
        if self.groups is None:
            initial = scaled_scores(model)
            self.compression = CompressionRate.of_weights(initial)
        else:
            initial = scaled_channel_scores(model, self.groups)
            self.compression = ChannelFlops(self.flops, self.groups, self.pairing)
        start = rate_logit(self.initial_rate, self.floor)
        self.scores = {name: nn.Parameter(s.to(device)) for name, s in initial.items()}
        self.rate_scores = {
            name: nn.Parameter(torch.tensor(start, device=device)) for name in initial
        }
        self.network = RatedNetwork(model, self.scores, self.rate_scores, self.floor, self.groups)
        return self.network

    def weight_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        trainable = [p for p in self.network.network.parameters() if p.requires_grad]
        return [*self.scores.values(), *self.rate_scores.values(), *trainable]

    def compression_loss(self) -> Tensor:
        return compression_loss(self.compression, self.network.rate, self.target)

    def current_gamma(self, epoch: int) -> float:
        """γ_e = (e + 1)·γ₀ until the target is reached, then frozen (hw.py, train.py)."""
        return self.frozen_gamma if self.frozen_gamma is not None else (epoch + 1) * self.gamma

    @torch.no_grad()
    def end_epoch(self, epoch: int) -> None:
        """What the official loop does after each epoch: freeze γ once L_hw rounds to 0."""
        loss = float(self.compression_loss())
        gamma = self.current_gamma(epoch)
        if round(loss, REACHED_DIGITS) == 0 and self.frozen_gamma is None:
            self.frozen_gamma = gamma
        rate = float(self.compression(self.network.rate))
        self.history.append(dict(zip(HISTORY_KEYS, (epoch + 1, gamma, loss, rate), strict=True)))

    def loss_term(self, model: nn.Module, context: StepContext) -> Tensor:
        """γ·L_hw, added to the objective on every batch (trainer/adv.py); a batch of a new epoch
        first ends the last one, as the official loop does after each epoch."""
        if context.epoch > self.epoch:
            self.end_epoch(self.epoch)
            self.epoch = context.epoch
        return self.current_gamma(context.epoch) * self.compression_loss()

    @torch.no_grad()
    def may_keep(self) -> bool:
        """The official model_best candidates: every epoch from the first whose L_hw rounds to 0
        (`train.py:287-301`); this epoch's own check runs at the next step, so it is made here."""
        reached = round(float(self.compression_loss()), REACHED_DIGITS) == 0
        return self.frozen_gamma is not None or reached

    def before_update(self, model: nn.Module) -> None:
        """Scores and rates are the method's tensors, not DDP's: average them over ranks."""
        average_gradients([*self.scores.values(), *self.rate_scores.values()])

    def after_update(self, model: nn.Module) -> None:
        self.network.update_masks()

    def state_dict(self) -> dict[str, Tensor]:
        frozen = math.nan if self.frozen_gamma is None else self.frozen_gamma
        return {
            **{f"scores.{name}": s.detach() for name, s in self.scores.items()},
            **{f"rates.{name}": r.detach() for name, r in self.rate_scores.items()},
            "schedule": torch.tensor([frozen, float(self.epoch)], dtype=torch.float64),
            "history": torch.tensor(
                [[h[key] for key in HISTORY_KEYS] for h in self.history], dtype=torch.float64
            ).reshape(-1, len(HISTORY_KEYS)),
        }

    def load_state_dict(self, state: dict[str, Tensor], model: nn.Module) -> None:
        """Copy the saved tensors into the ones the optimizer holds (their identity must stay)."""
        mine = self.state_dict()
        shapes = {k: tuple(v.shape) for k, v in mine.items() if k != "history"}
        if shapes != {k: tuple(v.shape) for k, v in state.items() if k != "history"}:
            raise CheckpointError(
                "the checkpoint's HARP scores and rates do not fit this model; start the pruning "
                "run again in a new --run-dir"
            )
        with torch.no_grad():
            for prefix, tensors in (("scores.", self.scores), ("rates.", self.rate_scores)):
                for name, tensor in tensors.items():
                    tensor.copy_(state[prefix + name])
        frozen, epoch = state["schedule"].tolist()
        self.frozen_gamma = None if math.isnan(frozen) else frozen
        self.epoch = int(epoch)
        self.history = [
            dict(zip(HISTORY_KEYS, row, strict=True)) for row in state["history"].tolist()
        ]
        self.network.update_masks()

    @torch.no_grad()
    def final_rates(self) -> tuple[dict[str, float], bool]:
        """Each unit's kept fraction at the end, and whether L_hw rounds to 0 there; if not, the
        rates scaled down to the target, so the run prunes what was asked. That fires when the
        phase never reached the target (the official code would have no `model_best` to
        fine-tune) and when L_hw drifted above 5e-5 after γ froze (the official code would
        fine-tune its best epoch after the first that reached it, `train.py:289-301`)."""
        rates = {name: float(self.network.rate(name)) for name in self.scores}
        reached = round(float(self.compression_loss()), REACHED_DIGITS) == 0
        if not reached:
            rates = scaled_to_target(rates, self.floor, self.compression, self.target)
        return rates, reached

    def final_masks(self, rates: dict[str, float]) -> WeightMasks:
        channels = self.groups is not None
        masks = {name: hard_mask(s, rates[name], channels) for name, s in self.scores.items()}
        if channels:
            keep = {name: mask.bool() for name, mask in masks.items()}
            return channel_weight_masks(self.network.network, self.groups, keep)
        return WeightMasks(masks)

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target,
            "structure": "weights" if self.groups is None else "channels",
            **({} if self.groups is None else {"channel_flops": self.pairing}),
            "history": self.history,
        }

    def finish(self, model: nn.Module, run_path: Path) -> None:
        self.end_epoch(self.epoch)
        rates, reached = self.final_rates()
        masks = self.final_masks(rates)
        record = {**self.metadata(), "target_reached": reached, "rates": rates}
        record["gamma_frozen"] = self.frozen_gamma is not None
        masks.save(Path(run_path) / "masks.safetensors", record)
        masks.apply(self.network.network)


# configs/config-cifar10.yml: SGD momentum 0.9, wd 5e-4, cosine; README: --adv_loss pgd.
OFFICIAL_PHASE = {
    "objective": "pgd-at",
    "optimizer": "sgd",
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "cosine",
}


@dataclass
class HarpSettings(MethodSettings):
    """HARP's own settings; the defaults are the official code's (docs/fidelity.md)."""

    compression_gamma: float = setting(
        0.01, "γ₀ of the compression loss; γ_e = (e + 1)·γ₀ until the target is reached "
        "(official --gamma: 0.01 for CIFAR-10, 0.1 for ImageNet)",
    )  # fmt: skip
    rate_floor: float = setting(
        0.1, "floor of each layer's kept fraction: k_min = rate_floor·k_target (official α)"
    )
    initial_rate: float | None = setting(
        None, "every layer's starting kept fraction (default: the official strategy, 0.1 for "
        "weights — 010_uni —, 1.0 for channels — original)",
    )  # fmt: skip
    train_batchnorm: bool = setting(
        True, "BN's affine parameters learn with the scores (official: --freeze-bn off)"
    )
    channel_flops: str = setting(
        "registration", "with --structure channels, which rate scales a layer's output channels "
        "in the FLOPs: the next registered layer's (official utils/hw.py, wrong in a ResNet) or "
        "data-flow, the rate of the group the layer writes",
        choices=PAIRINGS,
    )  # fmt: skip
    score: PhaseSettings = group(
        PhaseSettings,
        "the prune phase (official harp_prune: 20 epochs, PGD-AT, SGD lr 0.1, cosine, wd 5e-4)",
        epochs=20,
        lr=0.1,
        **OFFICIAL_PHASE,
    )
    finetune: PhaseSettings = group(
        PhaseSettings,
        "fine-tuning (official harp_finetune: 100 epochs, PGD-AT, SGD lr 0.01, cosine, wd 5e-4)",
        epochs=100,
        lr=0.01,
        **OFFICIAL_PHASE,
    )

    def validate(self) -> HarpSettings:
        super().validate()
        gamma = self.compression_gamma
        if not (math.isfinite(gamma) and gamma > 0):
            raise ConfigError(
                f"compression_gamma must be > 0, got {gamma}; HARP uses 0.01 on CIFAR-10"
            )
        if not 0 < self.rate_floor < 1:
            raise ConfigError(f"rate_floor must be in (0, 1), got {self.rate_floor}; HARP uses 0.1")
        if self.initial_rate is not None and not 0 < self.initial_rate <= 1:
            raise ConfigError(f"initial_rate must be in (0, 1], got {self.initial_rate}")
        return self


@register_method(
    "harp", description="HARP (Zhao & Wressnegger, ICLR 2023): learnt masks and layer rates"
)
class Harp(MaskLearningMethod):
    """Scores and per-layer rates learnt under a compression target in RUN_DIR/scores, then
    fine-tuning under the masks they give.

    Example: `advprune prune --method harp --from runs/at --sparsity 0.99 --run-dir runs/harp99`.
    """

    reference = "Zhao & Wressnegger, ICLR 2023; intellisec/harp"
    origin = "published"
    Settings = HarpSettings
    settings: HarpSettings
    structures = ("weights", "channels")

    def check(self, prune: PruneSettings) -> None:
        """HARP learns how much each layer keeps, from its own scores: no scheme or order."""
        if prune.scheme is not None:
            raise ConfigError(
                f"HARP learns each layer's rate under a global target; drop --scheme {prune.scheme}"
            )
        if prune.order != "lowest" or prune.include_bias:
            raise ConfigError(
                "HARP keeps the highest scores of the weights only; drop --order and "
                "--include-bias (use --method magnitude/random for the ablations)"
            )
        sparsity = DEFAULT_SPARSITY if prune.sparsity is None else prune.sparsity
        initial = self.initial_rate(prune.structure == "channels")
        floor = self.settings.rate_floor * (1 - sparsity)
        if initial <= floor:
            raise ConfigError(
                f"HARP's rates would start at {initial:g}, not above their floor α·k = {floor:g}; "
                "raise --initial-rate or --sparsity, or lower --rate-floor"
            )
        if initial < 1 - sparsity - 1e-9:
            given = (
                "the official strategy" if self.settings.initial_rate is None else "--initial-rate"
            )
            raise ConfigError(
                f"HARP's rates would start at {initial:g} kept ({given}), below the "
                f"{1 - sparsity:g} that --sparsity {sparsity:g} keeps: L_hw "
                f"only pulls rates down, so the run would end about {(1 - initial) * 100:.0f} % "
                f"sparse; pass --initial-rate 1.0 (or any value ≥ {1 - sparsity:g})"
            )

    def published_prune_settings(self) -> dict[str, Any]:
        return {"include_bias": False}

    def scheme(self, prune: PruneSettings) -> str:
        return "learnt rates"

    def mask_training(self, context: PruneContext, config: TrainConfig) -> HarpTraining:
        """Scores and rates learn towards the target, weights frozen; BN learns with them and the
        network carries it into fine-tuning."""
        training = self.training(context, TrainModePasses(config.objective, config.precision))
        context.log(
            f"harp: scores and {'group' if context.channels else 'layer'} rates towards "
            f"{1 - context.sparsity:.3g} kept ({config.epochs} epochs of {config.objective}, "
            f"γ₀ {self.settings.compression_gamma:g}), weights frozen"
        )
        return training

    def masks_learnt(self, context: PruneContext, record: dict[str, Any]) -> None:
        if not record.get("target_reached"):
            why = (
                "its compression loss rose above 0 again after γ froze"
                if record.get("gamma_frozen")
                else "it ended before its compression loss reached 0"
            )
            context.log(
                f"harp: {why}; the prune phase's rates were scaled down to the target (give it "
                "more --score-epochs or a larger --compression-gamma)"
            )

    def initial_rate(self, channels: bool) -> float:
        """Every unit's starting kept fraction: the setting, or the official strategy."""
        if self.settings.initial_rate is not None:
            return self.settings.initial_rate
        return CHANNEL_STRATEGY if channels else WEIGHT_STRATEGY

    def finetuning(
        self, masks: WeightMasks | None, metadata: dict[str, Any], context: PruneContext
    ) -> MaskedTraining:
        return official_finetuning(self, masks, metadata, context)

    def training(
        self, context: PruneContext, passes: TrainModePasses | None = None
    ) -> HarpTraining:
        target = 1 - context.sparsity
        channels = context.channels
        groups = context.channel_groups() if channels else None
        return HarpTraining(
            target,
            gamma=self.settings.compression_gamma,
            rate_floor=self.settings.rate_floor,
            initial_rate=self.initial_rate(channels),
            train_batchnorm=self.settings.train_batchnorm,
            groups=groups,
            flops=flops_layers(context.model, context.example()) if channels else None,
            pairing=self.settings.channel_flops,
            passes=passes,
        )
