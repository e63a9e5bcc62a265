"""HYDRA (Sehwag et al., NeurIPS 2020), as published: the adversarial loss chooses the weights.

Each conv/linear weight w gets an importance score s, initialised "scaled" (the official
`initialize_scaled_score`): s = √(6 / fan_in) · w / max|w| per layer, so the first mask is
layer-wise magnitude pruning. With the weights frozen, the forward pass uses w ⊙ m(s), m = 1 on
the top-k |s| of each layer and 0 elsewhere, and the gradient reaches s straight through the top-k
(as if m were |s|: the official GetSubnet, after Ramanujan et al., 2020). The scores — and BN's
affine parameters, which the official code leaves trainable — learn on TRADES (β 6) for 20 epochs
of SGD with a cosine schedule. Then |s| becomes fixed `WeightMasks` through the shared layer-wise
`select`, and the surviving weights are fine-tuned under them, again with TRADES (100 epochs,
lr 0.01, cosine). Biases are never pruned. docs/fidelity.md has the official code's lines.

With `--structure channels` (our extension: the paper prunes weights) each channel of a dependency
group (masks/channels.py) gets one score, initialised as HARP's channel scores,
√6 · ‖filter‖₁ / max‖filter‖₁, and the top-k of each group is kept, straight-through as above,
int(p·C) pruned with ties by position in the score phase and in the fixed mask alike.

The model is never reparametrised: `ScoredNetwork` evaluates it with `functional_call`, so its
state dict (what checkpoints and model files hold) keeps the model's own keys, and the scores are
the method's state, checkpointed by `ScoreTraining`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advprune.core.config import group, setting
from advprune.core.device import autocast
from advprune.core.distributed import average_gradients
from advprune.core.errors import CheckpointError, ConfigError
from advprune.masks import (
    OFFICIAL,
    MaskedNetwork,
    WeightMasks,
    check_sparsity,
    lowest_entries,
    prunable_parameters,
    pruned_count,
    select,
)
from advprune.masks.channels import (
    ChannelGroup,
    channel_weight_masks,
    filter_norms,
    parameter_masks,
    select_channels,
)
from advprune.methods.base import (
    MethodSettings,
    PhaseSettings,
    PruneContext,
    PruneSettings,
    register_method,
)
from advprune.methods.kinds import FixedMaskMethod, MaskLearningMethod
from advprune.models.layer_types import NORMS
from advprune.training.config import TrainConfig
from advprune.training.method import MaskedTraining, StepContext, TrainingMethod
from advprune.training.objectives import ObjectiveOutput

SCHEME = "layerwise"  # HYDRA's k is the same fraction in every layer


def scaled_scores(model: nn.Module) -> dict[str, Tensor]:
    """s = √(6 / fan_in) · w / max|w| for each conv/linear weight (the official scaled init).

    √(6 / fan_in) is the Kaiming-uniform bound the scores would otherwise start from; dividing by
    max|w| keeps their ordering that of |w|, so score training starts from magnitude pruning.
    """
    scores = {}
    for name, weight in prunable_parameters(model, include_bias=False).items():
        weight = weight.detach().float()
        peak = weight.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
        scores[name] = math.sqrt(6 / weight[0].numel()) * weight / peak
    return scores


def scaled_channel_scores(model: nn.Module, groups: list[ChannelGroup]) -> dict[str, Tensor]:
    """The scaled init for channel scores: √6 · ‖filter‖₁ / max‖filter‖₁ per group.

    HARP's channel init (`utils/model.py:107`) takes fan_in from the score tensor itself, shaped
    [C_out, 1, 1, 1] when it is computed, so its bound is √(6 / 1) whatever the layer.
    """
    scores = {}
    for name, norms in filter_norms(model, groups, p=1).items():
        peak = norms.max().clamp_min(torch.finfo(torch.float32).tiny)
        scores[name] = math.sqrt(6) * norms / peak
    return scores


def top_k_mask(scores: Tensor, pruned: int) -> Tensor:
    """1.0 for every entry of `scores` but the `pruned` of lowest |s|, which get 0.0; ties at the
    threshold go lower flat index first, as the stable sort of GetSubnet would order them."""
    magnitude = scores.detach().abs().flatten()[None]
    lowest = lowest_entries(magnitude, min(pruned, magnitude.numel()))[0]
    return (~lowest).to(scores.dtype).view_as(scores)


def straight_through(hard_mask: Tensor, scores: Tensor) -> Tensor:
    """`hard_mask` in the forward pass; in the backward pass, the gradient of |s| (GetSubnet)."""
    magnitude = scores.abs()
    return hard_mask + (magnitude - magnitude.detach())


class ScoredNetwork(MaskedNetwork):
    """`network` with each scored weight w used as w ⊙ top-k(|s|). The hard masks change only
    when the scores do (`update_masks` after each optimizer step), not on every forward of an
    attack.
    """

    def __init__(
        self,
        network: nn.Module,
        scores: dict[str, Tensor],
        sparsity: float,
        groups: list[ChannelGroup] | None = None,
    ) -> None:
        """`groups`: the scores are per channel of these groups (each keeps one at least)."""
        super().__init__()
        self.network = network
        self.scores = scores  # a plain dict: the method's tensors, not the network's
        self.groups = groups
        self.pruned = {
            name: pruned_count(s.numel(), sparsity, OFFICIAL) for name, s in scores.items()
        }
        if groups:
            self.pruned = {n: min(k, scores[n].numel() - 1) for n, k in self.pruned.items()}
        self.masks: dict[str, Tensor] = {}
        self.update_masks()

    @torch.no_grad()
    def update_masks(self) -> None:
        self.masks = {name: top_k_mask(s, self.pruned[name]) for name, s in self.scores.items()}

    def weight_masks(self) -> dict[str, Tensor]:
        masks = {
            name: straight_through(self.masks[name], scores) for name, scores in self.scores.items()
        }
        return parameter_masks(self.groups, masks) if self.groups else masks


def hydra_masks(
    scores: dict[str, Tensor],
    sparsity: float,
    *,
    seed: int = 0,
    model: nn.Module | None = None,
    groups: list[ChannelGroup] | None = None,
) -> WeightMasks:
    """The fixed masks fine-tuning keeps: the `sparsity` fraction of lowest |s| of each layer,
    or, with channel `groups` (and the `model` they belong to), of each group's channels; counted
    and tied as in the score phase (`OFFICIAL`: int(p·n), ties by position), so fine-tuning keeps
    the mask that was trained."""
    magnitudes = {name: s.detach().abs() for name, s in scores.items()}
    if groups:
        keep = select_channels(magnitudes, sparsity, scheme=SCHEME, seed=seed, rule=OFFICIAL)
        return channel_weight_masks(model, groups, keep)
    return select(magnitudes, sparsity, scheme=SCHEME, seed=seed, rule=OFFICIAL)


@dataclass(frozen=True)
class TrainModePasses:
    """The clean forward passes in train mode that the official trainers add to each batch, so
    that BN's running statistics (what every eval-mode accuracy uses) see what theirs see.

    HYDRA's and HARP's `trainer/adv.py` (hydra :54, harp :59) run `output = model(images)` in
    train mode before the loss, only to log its accuracy; their `trades_loss` then runs
    x, x̃ and x again (the last for the KL target, `utils/adv.py` hydra :96-100, harp :98-102),
    their `pgd_loss` x̃ alone. So a TRADES batch updates the statistics with x, x, x̃, x and a
    PGD-AT batch with x, x̃, where our objectives run x, x̃ and x̃. The extra passes change no
    gradient: in train mode BN normalises by the batch, so their outputs equal the loss's own.
    """

    objective: str
    precision: str = "fp32"

    def wrap(self, context: StepContext) -> StepContext:
        """`context` with its objective run between the official extra passes."""
        run = context.objective

        def objective(model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
            self.clean(model, x)  # the trainer's `output = model(images)`
            out = run(model, x, y)
            if self.objective == "trades":
                self.clean(model, x)  # trades_loss's third train-mode pass, the KL target
            return out

        return dataclasses.replace(context, objective=objective)

    def clean(self, model: nn.Module, x: Tensor) -> None:
        with torch.no_grad(), autocast(x.device, self.precision):
            model(x)


class OfficialPasses:
    """Runs each batch's objective between the official trainer's extra passes (`passes`; none
    when it is None): a base for HYDRA's and HARP's training methods."""

    passes: TrainModePasses | None = None

    def batch_context(self, context: StepContext) -> StepContext:
        return self.passes.wrap(context) if self.passes else context


class OfficialFinetuning(OfficialPasses, MaskedTraining):
    """Fine-tuning under fixed masks with the official trainer's forward passes."""

    def __init__(
        self, masks: WeightMasks | None, settings: dict[str, Any], passes: TrainModePasses
    ):
        super().__init__(masks, settings)
        self.passes = passes


class ScoreTraining(OfficialPasses, TrainingMethod):
    """HYDRA's pruning phase: the trainer's optimizer and schedule update the scores, and BN's
    affine parameters as in the official code (`freeze_bn` off); every other weight is frozen.

    At the end the final masks are saved as `masks.safetensors` and applied to the weights, so the
    phase's model.safetensors is the pruned network fine-tuning starts from.
    """

    name = "hydra-scores"

    def __init__(
        self,
        sparsity: float,
        *,
        seed: int = 0,
        train_batchnorm: bool = True,
        groups: list[ChannelGroup] | None = None,
        passes: TrainModePasses | None = None,
    ) -> None:
        """`groups`: learn a score per channel of these groups instead of one per weight;
        `passes`: the official trainer's extra forward passes (none by default)."""
        check_sparsity(sparsity)
        self.sparsity = sparsity
        self.seed = seed
        self.train_batchnorm = train_batchnorm
        self.groups = groups
        self.passes = passes
        self.scores: dict[str, nn.Parameter] = {}
        self.network: ScoredNetwork | None = None

    def prepare(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(False)
        if self.train_batchnorm:
            for module in model.modules():
                if isinstance(module, NORMS):
                    module.requires_grad_(True)
        initial = scaled_channel_scores(model, self.groups) if self.groups else scaled_scores(model)
        self.scores = {name: nn.Parameter(s) for name, s in initial.items()}
        self.network = ScoredNetwork(model, self.scores, self.sparsity, self.groups)
        return self.network

    def weight_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        trainable = [p for p in self.network.network.parameters() if p.requires_grad]
        return [*self.scores.values(), *trainable]

    def before_update(self, model: nn.Module) -> None:
        """The scores are the method's tensors, not DDP's: average their gradients over ranks."""
        average_gradients(list(self.scores.values()))

    def after_update(self, model: nn.Module) -> None:
        self.network.update_masks()

    def state_dict(self) -> dict[str, Tensor]:
        return {name: s.detach() for name, s in self.scores.items()}

    def load_state_dict(self, state: dict[str, Tensor], model: nn.Module) -> None:
        """Copy the saved scores into the ones the optimizer holds (their identity must stay)."""
        shapes = {name: tuple(s.shape) for name, s in self.scores.items()}
        saved = {name: tuple(t.shape) for name, t in state.items()}
        if saved != shapes:
            raise CheckpointError(
                "the checkpoint's HYDRA scores do not fit this model; it was written for another "
                "architecture — start the pruning run again in a new --run-dir"
            )
        with torch.no_grad():
            for name, score in self.scores.items():
                score.copy_(state[name])
        self.network.update_masks()

    def metadata(self) -> dict[str, Any]:
        structure = "channels" if self.groups else "weights"
        return {
            "name": self.name,
            "sparsity": self.sparsity,
            "scheme": SCHEME,
            "structure": structure,
            "seed": self.seed,
        }

    def finish(self, model: nn.Module, run_path: Path) -> None:
        network = self.network.network
        masks = hydra_masks(
            self.scores, self.sparsity, seed=self.seed, model=network, groups=self.groups
        )
        masks.save(Path(run_path) / "masks.safetensors", self.metadata())
        masks.apply(network)


# The official configs.yml: every phase trains with TRADES β 6, SGD momentum 0.9, wd 1e-4, cosine.
OFFICIAL_PHASE = {
    "objective": "trades",
    "beta": 6.0,
    "optimizer": "sgd",
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "schedule": "cosine",
}


@dataclass
class HydraSettings(MethodSettings):
    """HYDRA's own settings; the defaults are the official code's (docs/fidelity.md)."""

    score: PhaseSettings = group(
        PhaseSettings,
        "the score phase (official: 20 epochs, TRADES β 6, SGD lr 0.1, cosine, wd 1e-4)",
        epochs=20,
        lr=0.1,
        **OFFICIAL_PHASE,
    )
    train_batchnorm: bool = setting(
        True, "BN's affine parameters learn with the scores (official: freeze_bn off)"
    )
    finetune: PhaseSettings = group(
        PhaseSettings,
        "fine-tuning (official: 100 epochs, TRADES β 6, SGD lr 0.01, cosine, wd 1e-4)",
        epochs=100,
        lr=0.01,
        **OFFICIAL_PHASE,
    )


@register_method(
    "hydra", description="HYDRA (Sehwag et al., NeurIPS 2020): learnt layer-wise masks"
)
class Hydra(MaskLearningMethod):
    """Scores learnt on the adversarial loss in RUN_DIR/scores, then fine-tuning under them.

    Example: `advprune prune --method hydra --from runs/at --sparsity 0.99 --run-dir runs/h99`.
    """

    reference = "Sehwag et al., NeurIPS 2020; inspire-group/hydra"
    origin = "published"
    Settings = HydraSettings
    default_scheme = SCHEME
    rule = OFFICIAL  # int(p·n) pruned per layer, as GetSubnet counts

    def check(self, prune: PruneSettings) -> None:
        """HYDRA's masks are layer-wise top-k of learnt scores on weights: no other choice fits."""
        if prune.scheme not in (None, SCHEME):
            raise ConfigError(
                f"HYDRA prunes layer-wise (its top-k is per layer); drop --scheme {prune.scheme}"
            )
        if prune.order != "lowest" or prune.include_bias:
            raise ConfigError(
                "HYDRA keeps the highest scores of the weights only; drop --order and "
                "--include-bias (use --method magnitude/random for the ablations)"
            )

    def mask_phase(self, context: PruneContext) -> TrainConfig:
        """The official score phase hands its last epoch on (its model_best is never read), so
        `--keep` applies to the fine-tuning alone."""
        return super().mask_phase(context).replace(keep="last")

    def mask_training(self, context: PruneContext, config: TrainConfig) -> ScoreTraining:
        """The scores learn on the adversarial loss, weights frozen; BN learns with them and the
        network carries it into fine-tuning."""
        training = ScoreTraining(
            context.sparsity,
            seed=context.settings.seed,
            train_batchnorm=self.settings.train_batchnorm,
            groups=context.channel_groups() if context.channels else None,
            passes=TrainModePasses(config.objective, config.precision),
        )
        unit = "channel" if context.channels else "layer-wise"
        context.log(
            f"hydra: the scores of a {context.sparsity:.0%} {unit} mask, {config.epochs} "
            f"epochs of {config.objective}, weights frozen"
        )
        return training

    def finetuning(
        self, masks: WeightMasks | None, metadata: dict[str, Any], context: PruneContext
    ) -> MaskedTraining:
        return official_finetuning(self, masks, metadata, context)


def official_finetuning(
    method: FixedMaskMethod,
    masks: WeightMasks | None,
    metadata: dict[str, Any],
    context: PruneContext,
) -> MaskedTraining:
    """HYDRA's and HARP's fine-tuning: under the masks, with their trainer's forward passes."""
    config = method.phase(context.source, context.settings)
    return OfficialFinetuning(masks, metadata, TrainModePasses(config.objective, config.precision))
