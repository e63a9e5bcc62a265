"""The method protocol and its registry: every pruning method is one file behind this interface.

`PruningMethod` is the protocol; a method subclasses the kind (`advprune.methods.kinds`) that says
when and how it prunes, and the kind does the common work:

- **scores once** (`ScoredMethod`: magnitude, random, MAD): it ranks the prunable entries, the
  shared selection (`masks.select`) removes the lowest, and the network is fine-tuned with the
  mask fixed. With `--structure channels` the entries are whole channels of Torch-Pruning
  dependency groups (`masks.channels`), and the run ends with the smaller network exported;
- **learns masks in a phase** (`MaskLearningMethod`: HYDRA, HARP): a training phase of its own
  learns scores (and rates), the masks are read from it, then fine-tuning;
- **finds a mask before training** (`MaskFindingMethod`: Robust Bird): the mask is found from the
  initialization, then the sparse network trains under it;
- **changes its masks while the network trains** (`DynamicMaskMethod`: Flying Bird): one training
  from the initialization whose masks a hook updates;
- **learns gates** (`GateLearningMethod`: ANP-VS): gates learn what to remove while it trains,
  and the run ends with the network exported at its pruned widths.

Either way the pipeline (`advprune.pipelines.prune`) loads the network the method starts from
(`starts_from`), builds a `PruneContext`, asks the method for its `TrainingMethod` and trains the
method's phase with it. A method registers itself where it is defined, and the CLI, recipes, the
report and the Python API find it by name:

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
    check_sparsity,
)
from advprune.masks.channels import (
    STRUCTURES,
    ChannelGroup,
    channel_groups,
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
from advprune.training.keep import KEEP_METRICS, KEEPS
from advprune.training.method import TrainingMethod
from advprune.training.trainer import TrainingData

PLUGINS_VARIABLE = "ADVPRUNE_PLUGINS"
ENTRY_POINT_GROUP = "advprune.methods"
DEFAULT_SPARSITY = 0.9
# What a method starts from (`PruningMethod.starts_from`).
TRAINED, INITIALIZATION = "trained", "initialization"
# Pruning-run settings that every phase of the method takes over (data limit, where it runs).
PHASE_KEYS = ("limit_train", "device", "backend", "checkpoint_every", "allow_chance")
# Which epoch the method's phase ends with: the pruning run's choice, never the source run's.
KEEP_KEYS = ("keep", "keep_metric", "keep_examples")
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
    keep: str = setting(
        "last",
        "the epoch the method's training ends with: last; best-validation (best --keep-metric "
        "accuracy on --keep-examples held-out training images); best-test (on the test split: "
        "the official HYDRA/HARP/MAD model_best, whose figures are then optimistic)",
        choices=KEEPS,
    )
    keep_metric: str = setting("pgd10", "what --keep best-* ranks epochs by", choices=KEEP_METRICS)
    keep_examples: int = setting(1000, "images --keep best-* ranks epochs on")

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
    return TrainConfig.from_dict({**values, **phase_overrides(prune)}, source=source)


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


def phase_overrides(prune: PruneSettings) -> dict[str, Any]:
    """What every phase of a pruning run takes from it: its seed, data limit, where it runs and
    which epoch it keeps."""
    overrides: dict[str, Any] = {"seed": prune.seed, **{k: getattr(prune, k) for k in KEEP_KEYS}}
    for key in PHASE_KEYS:
        if getattr(prune, key) is not None:
            overrides[key] = getattr(prune, key)
    return overrides


def _is_budget(key: str) -> bool:
    """ "finetune_epochs", "seed": sizes a run, the algorithm stays the published one."""
    return key in BUDGET_KEYS or key.split("_", 1)[-1] in BUDGET_KEYS


class PruningMethod:
    """Base of every method. Subclass its kind (`advprune.methods.kinds`), not this."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # The kind's label for `advprune list methods` ("scores once"); set by each kind.
    kind: ClassVar[str] = ""
    # What the method starts from: a trained network (`--from RUN_DIR`) or the initialization
    # of the network it trains; set by each kind.
    starts_from: ClassVar[str] = TRAINED
    # The paper and code a method reproduces; None for a generic baseline (magnitude, random)
    # and for advprune's own methods, which say so in `origin`.
    reference: ClassVar[str | None] = None
    origin: ClassVar[str] = "baseline"  # "published" | "baseline" | "advprune's own"
    Settings: ClassVar[type[MethodSettings]] = MethodSettings
    start_hint: ClassVar[str] = "prune a trained run: pass --from RUN_DIR"
    # True: runs from one source share a cached pass (MAD's saliency, whatever the sparsity), so
    # a parallel reproduction starts a second one only after the first.
    caches_pass: ClassVar[bool] = False

    def __init__(self, settings: MethodSettings | None = None) -> None:
        self.settings = (settings or self.Settings()).validate()

    def check(self, prune: PruneSettings) -> None:
        """Refuse generic settings that this method does not have (before anything runs)."""

    def training_method(self, context: PruneContext, *, resume: bool) -> TrainingMethod:
        """The `TrainingMethod` of the method's phase (on resume, one that reloads its state)."""
        raise NotImplementedError

    def exports_network(self, prune: PruneSettings) -> bool:
        """Whether the run ends with `advprune export`: this run prunes whole channels (a
        gate-learning method always exports)."""
        return prune.structure == "channels"

    def phase(self, source: TrainConfig, prune: PruneSettings) -> TrainConfig:
        """The training settings of the method's phase: the source run's, this method's
        `finetune` on top, and the pruning run's seed, data limit and where it runs."""
        return self.settings.finetune.applied_to(source, **phase_overrides(prune))

    # ---- what a run records ------------------------------------------------------------------

    def published_prune_settings(self) -> dict[str, Any]:
        """The generic settings the published method uses (scored methods: scheme, biases)."""
        return {}

    def departures(self, prune: PruneSettings) -> dict[str, Any]:
        """Settings of this run that differ from the published method's (budget keys aside),
        and, for any method, a kept epoch other than the last (a table must show a test-set
        selection)."""
        kept = {"keep": prune.keep} if prune.keep != "last" else {}
        if self.reference is None:
            return kept
        published = self.Settings().to_flat()
        ours = self.settings.to_flat()
        changed = {k: v for k, v in ours.items() if v != published.get(k) and not _is_budget(k)}
        for key, value in self.published_prune_settings().items():
            given = getattr(prune, key)
            if given is not None and given != value:
                changed[key] = given
        if prune.order != "lowest":
            changed["order"] = prune.order
        return {**changed, **kept}

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


# ---- the registry ------------------------------------------------------------------------------

_REGISTRY: dict[str, type[PruningMethod]] = {}
_PLUGINS_LOADED = False


def register_method(name: str, *, description: str) -> Callable[[type], type]:
    """Class decorator: make a `PruningMethod` subclass available as `--method name`."""

    def register(cls: type[PruningMethod]) -> type[PruningMethod]:
        if not (isinstance(cls, type) and issubclass(cls, PruningMethod) and cls.kind):
            raise TypeError(
                f"{cls!r} must subclass a kind of method (advprune.methods.kinds: "
                "ScoredMethod, MaskLearningMethod, MaskFindingMethod, DynamicMaskMethod, "
                "GateLearningMethod)"
            )
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
