"""The kinds of pruning method: a new method subclasses the one that says when and how it prunes.

Each kind does the common work, so that a method's file holds only what is its own:

- `ScoredMethod` scores once (magnitude, random, MAD), from a trained network: write `scores`;
- `MaskLearningMethod` learns masks in a phase (HYDRA, HARP), from a trained network: write
  `mask_training`;
- `MaskFindingMethod` finds a mask before training (Robust Bird), from the initialization: write
  `find_masks`;
- `DynamicMaskMethod` changes its masks while the network trains (Flying Bird), from the
  initialization: write `initial_masks` and `mask_training` (a `DynamicMaskTraining`);
- `GateLearningMethod` learns gates (ANP-VS), from a trained network: write `training_method`.

The first three end in fixed masks under which the network trains (`FixedMaskMethod`): they share
the generic selection settings (`--scheme`, `--structure`, `--order`, `--include-bias`), what a run
records of them, and the training under the masks (`finetuning`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from advprune.core.errors import ConfigError
from advprune.masks import SEEDED, SelectionRule, WeightMasks, select
from advprune.masks.channels import (
    CHANNEL_SCHEMES,
    ChannelGroup,
    channel_weight_masks,
    describe_channel_pruning,
    group_sums,
    removed_channels,
    select_channels,
    unprunable_groups,
)
from advprune.methods.base import (
    DEFAULT_SPARSITY,
    INITIALIZATION,
    TRAINED,
    PruneContext,
    PruneSettings,
    PruningMethod,
    phase_overrides,
)
from advprune.training.config import TrainConfig
from advprune.training.method import DynamicMaskTraining, MaskedTraining, TrainingMethod

MASKS_FILE = "masks.safetensors"
# The run directory of a mask-learning method's phase (RUN_DIR/scores), set by its `--score-*`.
MASK_PHASE = "scores"
SELECTION_KEYS = ("sparsity", "scheme", "include_bias", "structure")


def train_mask_phase(
    context: PruneContext,
    name: str,
    config: TrainConfig,
    training: TrainingMethod,
    *,
    keep_weights: bool = True,
) -> tuple[WeightMasks, dict[str, Any]]:
    """Train a phase that ends in masks into RUN_DIR/`name` (resumed, or reused when finished),
    from the context's network, and read the masks (and their record) that `training.finish`
    saved there as masks.safetensors. With `keep_weights` the context's network takes the phase's
    weights (HYDRA's BN, learnt with the scores); without, it keeps its own (a ticket reset to
    its initialization)."""
    initial = {key: tensor.cpu() for key, tensor in context.model.state_dict().items()}
    phase = context.run_phase(name, config, training, initial)
    if keep_weights:
        context.model.load_state_dict(phase.state_dict())
    return WeightMasks.load(context.run_dir / name / MASKS_FILE)


def refuse_selection(
    method: PruningMethod, prune: PruneSettings, keys: tuple[str, ...], why: str
) -> None:
    """Refuse the generic selection settings in `keys` (and `--order`) of a method that decides
    them itself (`why`, e.g. "learns what to remove")."""
    given = [key for key in keys if getattr(prune, key)]
    given += ["order"] if prune.order != "lowest" else []
    if given:
        raise ConfigError(f"{method.name} {why}; drop --{given[0].replace('_', '-')}")


class FixedMaskMethod(PruningMethod):
    """Masks, then the network trains with them fixed: the common part of the kinds that score
    once, learn masks in a phase, or find a mask before training. A kind writes `masks`."""

    default_scheme: ClassVar[str] = "global"
    # Channels: "layerwise" (each group loses the same fraction) unless the scores are comparable
    # across layers (MAD's estimated loss damage: "global").
    channel_scheme: ClassVar[str] = "layerwise"
    structures: ClassVar[tuple[str, ...]] = ("weights",)  # what the published method prunes
    scores_bias: ClassVar[bool] = False
    rule: ClassVar[SelectionRule] = SEEDED  # ties and rounding (published methods: their code's)

    def published_prune_settings(self) -> dict[str, Any]:
        return {"scheme": self.default_scheme, "include_bias": self.scores_bias}

    def resolved(self, prune: PruneSettings) -> dict[str, Any]:
        return {
            "sparsity": DEFAULT_SPARSITY if prune.sparsity is None else prune.sparsity,
            "scheme": self.scheme(prune),
            "include_bias": self.include_bias(prune),
            "ties": self.rule.ties,
            "rounding": self.rule.rounding,
            "structure": prune.structure or "weights",
        }

    def check(self, prune: PruneSettings) -> None:
        super().check(prune)
        if prune.structure == "channels" and prune.scheme not in (None, *CHANNEL_SCHEMES):
            raise ConfigError(
                f"--scheme {prune.scheme} ranks weights; rank channels by "
                f"{' or '.join(CHANNEL_SCHEMES)}"
            )

    def scheme(self, prune: PruneSettings) -> str:
        default = self.channel_scheme if prune.structure == "channels" else self.default_scheme
        return prune.scheme or default

    def departures(self, prune: PruneSettings) -> dict[str, Any]:
        """Also a structure the paper does not have; a structured run's scheme is measured
        against the method's channel scheme."""
        channels = prune.structure == "channels"
        changed = super().departures(prune.replace(scheme=None) if channels else prune)
        if channels and prune.scheme not in (None, self.channel_scheme):
            changed["scheme"] = prune.scheme
        if self.reference is not None and (prune.structure or "weights") not in self.structures:
            changed["structure"] = prune.structure
        return changed

    def include_bias(self, prune: PruneSettings) -> bool:
        return self.scores_bias if prune.include_bias is None else prune.include_bias

    def masks(self, context: PruneContext) -> WeightMasks:
        """The masks the network then trains under, at the run's sparsity."""
        raise NotImplementedError(f"{type(self).__name__} must define masks()")

    def training_method(self, context: PruneContext, *, resume: bool) -> TrainingMethod:
        metadata = self.metadata(context.settings)
        if resume:
            return self.finetuning(None, metadata, context)  # masks come back with the checkpoint
        masks = self.masks(context)
        how = f"({self.scheme(context.settings)} scheme, {context.settings.order} first)"
        if context.channels:
            removed, total = removed_channels(context.channel_groups(), masks)
            unprunable = unprunable_groups(context.model, context.example())
            context.log(f"{describe_channel_pruning(self.name, removed, total, unprunable)} {how}")
        else:
            context.log(f"{self.name}: pruned {masks.sparsity():.2%} of the scored weights {how}")
        return self.finetuning(masks, metadata, context)

    def finetuning(
        self, masks: WeightMasks | None, metadata: dict[str, Any], context: PruneContext
    ) -> MaskedTraining:
        """The training under `masks` (None: they come back with the checkpoint): fine-tuning,
        or the whole training of a method that starts from the initialization."""
        return MaskedTraining(masks, metadata)


class ScoredMethod(FixedMaskMethod):
    """Scores once, then the shared selection, then fine-tuning with the mask fixed.

    A subclass writes `scores` (name → tensor shaped like the parameter, higher = keep), and
    `channel_scores` when a channel's score is not the sum of its weights'.
    """

    kind = "scores once"

    def scores(self, context: PruneContext) -> dict[str, torch.Tensor]:
        """The method's own part: a score per weight (parameter name → tensor shaped like it,
        higher = keep), from which `masks` keeps the top of each layer or of the network."""
        raise NotImplementedError(f"{type(self).__name__} must define scores()")

    def channel_scores(
        self, context: PruneContext, groups: list[ChannelGroup]
    ) -> dict[str, torch.Tensor]:
        """A score per channel of each group (group name → [size], higher = keep): by default the
        method's weight scores summed over every slice the channel's removal removes."""
        return group_sums(self.scores(context), groups)

    def masks(self, context: PruneContext) -> WeightMasks:
        """The masks fine-tuning keeps fixed: the weights (or, with `--structure channels`, the
        channels) of highest score, at the run's sparsity and scheme."""
        prune = context.settings
        if context.channels:
            groups = context.channel_groups()
            keep = select_channels(
                self.channel_scores(context, groups),
                context.sparsity,
                scheme=self.scheme(prune),
                order=prune.order,
                seed=prune.seed,
            )
            return channel_weight_masks(context.model, groups, keep)
        return select(
            self.scores(context),
            context.sparsity,
            scheme=self.scheme(prune),
            order=prune.order,
            seed=prune.seed,
            rule=self.rule,
        )


class MaskLearningMethod(FixedMaskMethod):
    """Learns its masks in a training phase of its own (RUN_DIR/scores: HYDRA's scores, HARP's
    scores and rates), then fine-tuning under them.

    A subclass writes `mask_training`; its settings have a `score` phase (flags `--score-*`).
    """

    kind = "learns masks in a phase"

    def mask_phase(self, context: PruneContext) -> TrainConfig:
        """The training settings of the mask phase: the source run's, the method's `score` phase
        on top, and the pruning run's seed, data limit and where it runs."""
        return self.settings.score.applied_to(context.source, **phase_overrides(context.settings))

    def mask_training(self, context: PruneContext, config: TrainConfig) -> TrainingMethod:
        """The method's own part: the `TrainingMethod` of the mask phase (trained with `config`),
        whose `finish` saves the learnt masks as masks.safetensors in the phase's run directory
        (`WeightMasks.save`, with a record of its own) and applies them to the weights."""
        raise NotImplementedError(f"{type(self).__name__} must define mask_training()")

    def masks_learnt(self, context: PruneContext, record: dict[str, Any]) -> None:
        """Called with the record of the masks file once the phase is done (HARP says there
        when its rates had to be scaled to the target)."""

    def masks(self, context: PruneContext) -> WeightMasks:
        """Learn the masks in RUN_DIR/scores (resumed or reused); the network then carries the
        phase's weights (BN learnt with the scores) into fine-tuning."""
        config = self.mask_phase(context)
        masks, record = train_mask_phase(
            context, MASK_PHASE, config, self.mask_training(context, config)
        )
        self.masks_learnt(context, record)
        return masks


class MaskFindingMethod(FixedMaskMethod):
    """Finds a mask before the network trains (Robust Bird's early-bird ticket), then the sparse
    network trains under it, the mask fixed (`finetuning` is that training).

    A subclass writes `find_masks`; `train_mask_phase` trains a phase that finds them.
    """

    kind = "finds a mask before training"
    starts_from = INITIALIZATION

    def find_masks(self, context: PruneContext) -> WeightMasks:
        """The method's own part: the mask, found from `context.model` (the initialization). The
        sparse training starts from `context.model`'s weights as this leaves them: the
        initialization, unless it sets others (a ticket's)."""
        raise NotImplementedError(f"{type(self).__name__} must define find_masks()")

    def masks(self, context: PruneContext) -> WeightMasks:
        return self.find_masks(context)


class DynamicMaskMethod(PruningMethod):
    """Changes its masks while the network trains (Flying Bird's prune-and-grow): one training
    from the initialization under a `DynamicMaskTraining`, whose `update_masks` hook replaces the
    masks after an optimizer update; the masks are checkpointed, so a resume is exact.

    A subclass writes `initial_masks` and `mask_training`. It allocates its sparsity itself:
    `--scheme`, `--structure`, `--order` and `--include-bias` are refused unless it overrides
    `check`.
    """

    kind = "changes its masks while it trains"
    starts_from = INITIALIZATION

    def check(self, prune: PruneSettings) -> None:
        super().check(prune)
        refuse_selection(
            self, prune, ("scheme", "include_bias", "structure"), "allocates its own sparsity"
        )

    def resolved(self, prune: PruneSettings) -> dict[str, Any]:
        return {"sparsity": DEFAULT_SPARSITY if prune.sparsity is None else prune.sparsity}

    def initial_masks(self, context: PruneContext) -> WeightMasks:
        """The method's own part: the masks the training starts under, at the run's sparsity."""
        raise NotImplementedError(f"{type(self).__name__} must define initial_masks()")

    def mask_training(
        self, context: PruneContext, masks: WeightMasks | None, metadata: dict[str, Any]
    ) -> DynamicMaskTraining:
        """The method's own part: the training that updates `masks` (None: they come back with
        the checkpoint); `metadata` is what the model file records about the method."""
        raise NotImplementedError(f"{type(self).__name__} must define mask_training()")

    def training_method(self, context: PruneContext, *, resume: bool) -> TrainingMethod:
        metadata = self.metadata(context.settings)
        if resume:
            return self.mask_training(context, None, metadata)
        masks = self.initial_masks(context)
        context.log(
            f"{self.name}: starts with {masks.sparsity():.2%} of the weights pruned; the masks "
            "change while it trains"
        )
        return self.mask_training(context, masks, metadata)


class GateLearningMethod(PruningMethod):
    """Learns gates on units while it trains (ANP-VS): how much to remove is learnt, not set, and
    the run ends with the network exported at its pruned widths.

    A subclass writes `training_method`, the `TrainingMethod` that owns the gates.
    """

    kind = "learns gates"
    starts_from = TRAINED

    def check(self, prune: PruneSettings) -> None:
        super().check(prune)
        refuse_selection(self, prune, SELECTION_KEYS, "learns what to remove")

    def exports_network(self, prune: PruneSettings) -> bool:
        return True
