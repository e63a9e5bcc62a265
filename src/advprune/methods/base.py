"""The method protocol and its registry: every pruning method is one file behind this interface.

Two kinds of method (Torch-Pruning's split of *what* to remove from *how*):

- a **scored** method (`ScoredMethod`) ranks the prunable entries and the shared selection
  (`masks.select`) removes the lowest; the network is then fine-tuned with the mask fixed. It
  writes `scores(context)` (magnitude, random, MAD), or `masks(context)` when its masks come out of
  a learning phase of its own (HYDRA, HARP). With `--structure channels` the entries are whole
  channels of Torch-Pruning dependency groups (`masks.channels`): a method scores each channel
  (`channel_scores`, by default its weight scores summed over the channel's slices), the shared
  `select_channels` keeps the highest, and the run ends with the smaller network exported;
- a **learnt** method (`LearntMethod`) learns what to remove while it trains (ANP-VS): it gives
  the `TrainingMethod` its run trains with, and what it does after the run.

Either way the pipeline (`advprune.pipelines.prune`) loads the trained source run, builds a
`PruneContext`, asks the method for its `TrainingMethod` and trains the method's phase with it.
A method registers itself where it is defined, and the CLI, recipes, the report and the Python API
find it by name:

    @register_method("magnitude", description="prune the smallest |w|")
    class Magnitude(ScoredMethod):
        def scores(self, context):
            return magnitude_scores(context.model, include_bias=context.scores_bias)

Each method has a settings dataclass (`Settings`, a `MethodSettings`): its own knobs and the
defaults of its training phase (`finetune`), set to the published values. A run records every
setting that departs from them (`departures`), and the report shows them beside the name.
Methods outside this package register the same way; name their modules in the environment
variable ADVPRUNE_PLUGINS (comma-separated) or in an `advprune.methods` entry point, and the CLI
imports them.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from advprune.core.config import Config, closest, group, setting
from advprune.core.distributed import BACKENDS
from advprune.core.errors import ConfigError
from advprune.masks import (
    ORDERS,
    SCHEMES,
    SEEDED,
    SelectionRule,
    WeightMasks,
    check_sparsity,
    select,
)
from advprune.masks.channels import (
    CHANNEL_SCHEMES,
    STRUCTURES,
    ChannelGroup,
    channel_groups,
    channel_weight_masks,
    describe_channel_pruning,
    group_sums,
    removed_channels,
    select_channels,
    unprunable_groups,
)
from advprune.training.config import (
    OBJECTIVES,
    OPTIMIZERS,
    SCHEDULES,
    TrainConfig,
    check_eps,
    check_milestones,
    check_positive_counts,
)
from advprune.training.method import MaskedTraining, TrainingMethod
from advprune.training.trainer import TrainingData

PLUGINS_VARIABLE = "ADVPRUNE_PLUGINS"
ENTRY_POINT_GROUP = "advprune.methods"
DEFAULT_SPARSITY = 0.9
# Pruning-run settings that every phase of the method takes over (data limit, where it runs).
PHASE_KEYS = ("limit_train", "device", "backend", "checkpoint_every", "allow_chance")
# Settings that size a run rather than define the algorithm: not departures from a paper.
BUDGET_KEYS = frozenset({"epochs", "limit_train", "seed", "sparsity", "from_run"})


@dataclass
class PhaseSettings(Config):
    """A training phase of a pruning method (its fine-tuning, HYDRA's score phase): each setting
    left unset comes from the source run's training."""

    UNSET = "the source run's"

    objective: str | None = setting(None, "objective", choices=OBJECTIVES)
    epochs: int | None = setting(None, "epochs")
    eps: float | None = setting(None, "L∞ radius of the training attack")
    attack_steps: int | None = setting(None, "PGD steps of the training attack")
    attack_step_size: float | None = setting(None, "PGD step size")
    beta: float | None = setting(None, "TRADES/MART β")
    batch_size: int | None = setting(None, "batch size")
    optimizer: str | None = setting(None, "optimizer", choices=OPTIMIZERS)
    lr: float | None = setting(None, "peak learning rate")
    momentum: float | None = setting(None, "SGD momentum")
    weight_decay: float | None = setting(None, "weight decay")
    schedule: str | None = setting(None, "learning-rate schedule", choices=SCHEDULES)
    milestones: list[float] | None = setting(None, "step schedule: decay points (fractions)")
    gamma: float | None = setting(None, "step schedule: factor at each milestone")

    def validate(self) -> PhaseSettings:
        super().validate()
        check_positive_counts(self, ("epochs", "attack_steps", "batch_size"))
        if self.eps is not None:
            check_eps(self.eps)
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        check_milestones(self.milestones)
        return self

    def applied_to(self, source: TrainConfig, **overrides: Any) -> TrainConfig:
        """The source run's training with this phase's settings (and `overrides`) on top."""
        changes = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return source.replace(**{**changes, **overrides})


@dataclass
class MethodSettings(Config):
    """Base of a method's own settings: the defaults of its training phase."""

    # Weights of a loss term divided by the training-set size N (a variational KL/N): a run on
    # F·N examples (`reproduce --scale F`) multiplies them by F, so that each example's loss
    # weighs the prior as the full run's does.
    PER_DATASET_WEIGHTS: ClassVar[tuple[str, ...]] = ()

    finetune: PhaseSettings = group(PhaseSettings, "the method's training phase", epochs=10)


@dataclass
class PruneSettings(Config):
    """What every pruning run has, whichever the method (its own settings are the method's)."""

    EXECUTION_KEYS = frozenset(
        {"device", "backend", "cache_dir", "checkpoint_every", "allow_chance"}
    )

    method: str = setting("magnitude", "pruning method", choices=lambda: method_names())
    from_run: str | None = setting(None, "the trained run directory to prune (--from)")
    sparsity: float | None = setting(
        None, "scored methods: fraction of the scored entries removed (default 0.9)"
    )
    scheme: str | None = setting(
        None,
        "scored methods: global | layerwise | mad (global over convs, classifier per row); "
        "default: the method's",
        choices=SCHEMES,
    )
    structure: str | None = setting(
        None,
        "scored methods: weights (unstructured, the default) | channels (whole channels of "
        "each dependency group; sparsity = fraction of channels removed; exported smaller)",
        choices=STRUCTURES,
    )
    order: str = setting(
        "lowest",
        "scored methods: lowest (the method) | largest | random (ablations)",
        choices=ORDERS,
    )
    include_bias: bool | None = setting(
        None, "scored methods: score and prune biases too (default: the method's)"
    )
    seed: int = setting(0, "seed of tie-breaking, random scores and the data order")
    limit_train: int | None = setting(None, "score and fine-tune on the first N training examples")
    cache_dir: str | None = setting(
        None, "where passes shared between runs are cached (default ~/.cache/advprune)"
    )
    device: str | None = setting(None, "cpu, cuda, cuda:N or auto (default: the source run's)")
    backend: str | None = setting(None, "torchrun process group", choices=BACKENDS)
    checkpoint_every: int | None = setting(None, "steps between mid-epoch checkpoints")
    allow_chance: bool | None = setting(
        None, "keep fine-tuning when its first epoch ends at chance (default: stop with an error)"
    )

    def validate(self) -> PruneSettings:
        super().validate()
        if self.sparsity is not None:
            check_sparsity(self.sparsity)
        check_positive_counts(self, ("limit_train",))
        return self


def start_keys() -> set[str]:
    """The `advprune train` settings that build the network and read the data of a method that
    trains from initialization (--model, --dataset, --eps, --batch-size, …); its training phase's
    own settings are the method's (`--finetune-epochs`), and seed, data limit and device the
    pruning run's."""
    phase = PhaseSettings.field_names() - {"eps", "batch_size"}
    return TrainConfig.field_names() - phase - PruneSettings.field_names() - {"init"}


def start_config(values: dict[str, Any], prune: PruneSettings, source: str) -> TrainConfig:
    """The `advprune train` settings a method that trains from initialization starts from:
    `values` (start keys), with the pruning run's seed, data limit and where it runs."""
    shared = {key: getattr(prune, key) for key in ("seed", *PHASE_KEYS)}
    shared = {key: value for key, value in shared.items() if value is not None}
    return TrainConfig.from_dict({**values, **shared}, source=source)


@dataclass
class PruneContext:
    """What a method sees of the run it prunes (built by the pipeline)."""

    model: nn.Module  # the trained network, on `device`, in eval mode
    data: TrainingData  # its training and test splits
    source: TrainConfig  # how it was trained: dataset, ε, attack
    settings: PruneSettings
    device: torch.device
    run_dir: Path  # the pruning run; a method keeps its own phases below it
    cache_dir: Path | None  # passes that several runs can share (None: no cache)
    source_key: str  # identifies the source weights, for cache keys
    # run_phase(name, config, method, initial_weights) trains a phase into run_dir/name,
    # resuming it, or reusing it when finished, and returns its model.
    run_phase: Callable[..., nn.Module]
    progress: bool = True
    log: Callable[[str], None] = print

    @property
    def sparsity(self) -> float:
        return DEFAULT_SPARSITY if self.settings.sparsity is None else self.settings.sparsity

    @property
    def channels(self) -> bool:
        """Structured pruning: whole channels (`--structure channels`)."""
        return self.settings.structure == "channels"

    def example(self) -> torch.Tensor:
        """One zero input on the run's device, to trace the network's layers and couplings."""
        return torch.zeros(1, *self.data.train.images.shape[1:], device=self.device)

    def channel_groups(self) -> list[ChannelGroup]:
        return channel_groups(self.model, self.example())


def _is_budget(key: str) -> bool:
    """ "finetune_epochs", "seed": sizes a run, the algorithm stays the published one."""
    return key in BUDGET_KEYS or key.split("_", 1)[-1] in BUDGET_KEYS


class PruningMethod:
    """Base of every method. Subclass `ScoredMethod` or `LearntMethod`, not this."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # The paper and code a method reproduces; None for a generic baseline (magnitude, random)
    # and for advprune's own methods, which say so in `origin`.
    reference: ClassVar[str | None] = None
    origin: ClassVar[str] = "baseline"  # "published" | "baseline" | "advprune's own"
    Settings: ClassVar[type[MethodSettings]] = MethodSettings
    uses_sparsity: ClassVar[bool] = True  # False: the method learns how much to remove
    exports: ClassVar[bool] = False  # True: the run ends with `advprune export` (smaller network)
    start_hint: ClassVar[str] = "prune a trained run: pass --from RUN_DIR"
    # True: the method trains from initialization (Flying Bird, Robust Bird): its run starts from
    # a network built as `advprune train` builds it (--model, --dataset, …), not from --from.
    starts_from_initialization: ClassVar[bool] = False
    # True: runs from one source share a cached pass (MAD's saliency, whatever the sparsity), so
    # a parallel reproduction starts a second one only after the first.
    caches_pass: ClassVar[bool] = False

    def __init__(self, settings: MethodSettings | None = None) -> None:
        self.settings = (settings or self.Settings()).validate()

    def check(self, prune: PruneSettings) -> None:
        """Refuse generic settings that this method does not have (before anything runs)."""
        if not self.uses_sparsity:
            keys = ("sparsity", "scheme", "include_bias", "structure")
            given = [k for k in keys if getattr(prune, k)]
            given += ["order"] if prune.order != "lowest" else []
            if given:
                raise ConfigError(
                    f"{self.name} learns what to remove; drop --{given[0].replace('_', '-')}"
                )

    def training_method(self, context: PruneContext, *, resume: bool) -> TrainingMethod:
        """The `TrainingMethod` of the method's phase (on resume, one that reloads its state)."""
        raise NotImplementedError

    def exports_network(self, prune: PruneSettings) -> bool:
        """Whether the run ends with `advprune export`: the method removes units (ANP-VS), or
        this run prunes whole channels."""
        return self.exports or prune.structure == "channels"

    def phase(self, source: TrainConfig, prune: PruneSettings) -> TrainConfig:
        """The training settings of the method's phase: the source run's, this method's
        `finetune` on top, and the pruning run's seed, data limit and where it runs."""
        overrides = {"seed": prune.seed}
        for key in PHASE_KEYS:
            if getattr(prune, key) is not None:
                overrides[key] = getattr(prune, key)
        return self.settings.finetune.applied_to(source, **overrides)

    # ---- what a run records ------------------------------------------------------------------

    def published_prune_settings(self) -> dict[str, Any]:
        """The generic settings the published method uses (scored methods: scheme, biases)."""
        return {}

    def departures(self, prune: PruneSettings) -> dict[str, Any]:
        """Settings of this run that differ from the published method's (budget keys aside)."""
        if self.reference is None:
            return {}
        published = self.Settings().to_flat()
        ours = self.settings.to_flat()
        changed = {k: v for k, v in ours.items() if v != published.get(k) and not _is_budget(k)}
        for key, value in self.published_prune_settings().items():
            given = getattr(prune, key)
            if given is not None and given != value:
                changed[key] = given
        if prune.order != "lowest":
            changed["order"] = prune.order
        return changed

    def label(self, prune: PruneSettings) -> str:
        """The name as tables show it: `mad`, or `mad [scheme=global]` when a setting departs."""
        departures = self.departures(prune)
        if not departures:
            return self.name
        return f"{self.name} [{', '.join(f'{k}={v}' for k, v in departures.items())}]"

    def resolved(self, prune: PruneSettings) -> dict[str, Any]:
        """What this run of the method does, defaults resolved (e.g. the scheme MAD prunes by),
        so that a run's files state it rather than leave it to the code's defaults."""
        return {}

    def metadata(self, prune: PruneSettings) -> dict[str, Any]:
        """What the model file and results record about the method."""
        return {
            "name": self.name,
            "label": self.label(prune),
            "reference": self.reference,
            "departures": self.departures(prune),
            "resolved": self.resolved(prune),
            "settings": self.settings.to_dict(),
            "prune": prune.to_dict(),
        }


class ScoredMethod(PruningMethod):
    """Scores, then the shared selection, then fine-tuning with the mask fixed.

    Subclasses write `scores` (name → tensor shaped like the parameter, higher = keep), or
    `masks` for masks learnt in a phase of their own.
    """

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

    def scores(self, context: PruneContext) -> dict[str, torch.Tensor]:
        """The method's own part: a score per weight (parameter name → tensor shaped like it,
        higher = keep), from which `masks` keeps the top of each layer or of the network."""
        raise NotImplementedError(f"{type(self).__name__} must define scores() or masks()")

    def channel_scores(
        self, context: PruneContext, groups: list[ChannelGroup]
    ) -> dict[str, torch.Tensor]:
        """A score per channel of each group (group name → [size], higher = keep): by default the
        method's weight scores summed over every slice the channel's removal removes."""
        return group_sums(self.scores(context), groups)

    def masks(self, context: PruneContext) -> WeightMasks:
        """The masks fine-tuning keeps fixed: the weights (or, with `--structure channels`, the
        channels) of highest score, at the run's sparsity and scheme. A method whose masks come
        from a phase of its own overrides this instead of `scores`."""
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
        """Fine-tuning under `masks` (None: they come back with the checkpoint)."""
        return MaskedTraining(masks, metadata)


class LearntMethod(PruningMethod):
    """A method that learns what to remove while its phase trains (ANP-VS)."""

    uses_sparsity = False


# ---- the registry ------------------------------------------------------------------------------

_REGISTRY: dict[str, type[PruningMethod]] = {}
_PLUGINS_LOADED = False


def register_method(name: str, *, description: str) -> Callable[[type], type]:
    """Class decorator: make a `PruningMethod` subclass available as `--method name`."""

    def register(cls: type[PruningMethod]) -> type[PruningMethod]:
        if not (isinstance(cls, type) and issubclass(cls, ScoredMethod | LearntMethod)):
            raise TypeError(f"{cls!r} must subclass ScoredMethod or LearntMethod")
        if name in _REGISTRY and _REGISTRY[name].__qualname__ != cls.__qualname__:
            raise ValueError(f"a pruning method named {name!r} is already registered")
        cls.name, cls.description = name, description
        _REGISTRY[name] = cls
        return cls

    return register


def load_plugins() -> None:
    """Import the modules named in ADVPRUNE_PLUGINS and the `advprune.methods` entry points."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    import advprune.methods  # noqa: F401  (the built-in methods register on import)

    modules = [m.strip() for m in os.environ.get(PLUGINS_VARIABLE, "").split(",") if m.strip()]
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ConfigError(
                f"{PLUGINS_VARIABLE} names {module!r}, which cannot be imported ({err}); put "
                "it on PYTHONPATH or fix the name"
            ) from err
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()


def method_names(pattern: str = "*") -> list[str]:
    """Registered method names matching a wildcard pattern, in registration order."""
    load_plugins()
    return [name for name in _REGISTRY if fnmatch.fnmatchcase(name, pattern)]


def get_method(name: str) -> type[PruningMethod]:
    """The registered method class; an unknown name is an error, never a fallback."""
    load_plugins()
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown method {name!r}; choose one of {', '.join(_REGISTRY)}"
            + closest(name, _REGISTRY)
        )
    return _REGISTRY[name]


def create_method(name: str, values: dict[str, Any] | None = None, source: str = "settings"):
    """`get_method(name)` built with its settings from flat or nested `values`."""
    cls = get_method(name)
    return cls(cls.Settings.from_dict(values or {}, source=source))
