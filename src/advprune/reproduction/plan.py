"""A reproduction recipe as a plan: its steps in order, every setting resolved and validated.

A recipe (src/advprune/recipes/NAME.yaml) is a list of steps, each a run directory:

    title: what the recipe reproduces
    train: {...}      # defaults of every train step (TrainConfig keys)
    prune: {...}      # defaults of every prune step (PruneSettings keys and its method's own)
    evaluate: {...}   # how every step is evaluated (EvalConfig keys); a step's `evaluate:` adds
                      # to it, and `evaluate: false` skips the step's evaluation
    steps:
      - {name: dense, train: {dataset: cifar10, model: resnet18, epochs: 100}}
      - {name: mad-90, prune: {method: mad, from: dense, sparsity: 0.9}}
    paper: {source: ..., reference: STEP, rows: {STEP: {metric: value}}}   # see report.comparison
    seeds: [0, 1, 2]  # optional: every step once per seed (`--seeds` wins over it)
    slurm: {...}      # optional: what each step's jobs ask of Slurm (executor.Resources keys);
                      # a step's `slurm:` adds to it, `reproduce --partition …` wins over both
    anchors: {...}    # YAML anchors that steps merge in (`<<: *name`); not read otherwise

`from: STEP` (and `init:`, `transfer_from:`) name an earlier step; the step gets that step's run
directory. A prune step's method is any registered one (`advprune list methods`); its settings
are flat keys, a phase's with its prefix (`finetune_lr`, `score_epochs`). Everything is checked
before the first step starts, so a long run never fails on a typo after hours; a method this
build lacks is named with the steps that can run without it.

With seeds (the recipe's `seeds:` or `--seeds 0,1,2`) the whole recipe runs once per seed S, in
ROOT/seed-S/STEP: every setting named `seed` (the training's, the pruning's, the evaluation's) is
S, and `from:` names the step of the same seed, so each pruned row comes from its own seed's
dense run. A seed given this way wins over the recipe's own `seed:` keys; `--set seed=S` with
seeds is refused (it would say two things).

`--scale F` (0 < F ≤ 1) shrinks a recipe for a smoke run, exactly as follows: every epoch count
(epochs, finetune_epochs, score_epochs, …) becomes max(1, round(F·epochs)); the training examples
max(B, ceil(F·N)) with N the dataset's training-set size (or the recipe's limit_train) and B the
largest batch the step trains with (a fine-tuning phase's own, else its source run's), so every
step has a full batch; the test examples, the AutoAttack examples and the examples of the epoch
monitor and of the gradient-masking check each max(1, ceil(F·n)) of their full number n. A dataset
with fewer examples than these limits is used whole. A weight of a term divided by the training-set
size (ANP-VS's β of the gates' KL/N: a method's `PER_DATASET_WEIGHTS`) becomes F·β, so that a
scaled run's loss per example is the full run's; unscaled, β/N grew 5× at F = 0.2 and the gates of
the Fashion-MNIST suite closed within an epoch. A scaled run measures no latency: a smoke run's
timings mean nothing, and a VGG at batch 128 would cost it minutes of CPU. A scaled run goes on
when an epoch ends at chance (`allow_chance`): on a smoke run's budget that is a result, which the
report and the evaluation's checks show, not a reason to stop the recipe. A setting given with
`--set` is not scaled (`--scale 0.5 --set autoattack_limit=500`: AutoAttack on 500 examples).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from advprune.core.config import Config, closest
from advprune.core.errors import ConfigError
from advprune.data import get_spec
from advprune.evaluation import EvalConfig
from advprune.methods import PruneSettings, get_method, method_names
from advprune.methods.base import INITIALIZATION, start_config, start_keys
from advprune.pipelines import prune_run, train_phase
from advprune.recipes import load_recipe
from advprune.report.comparison import PAPER_METRICS
from advprune.reproduction.executor import Resources
from advprune.training import TrainConfig


@dataclass(frozen=True)
class StepKind:
    """How a reproduction builds and runs one kind of step ("train", or "prune" with a method).

    A step's settings are one flat mapping (recipe defaults, the step's section, --set on top);
    `make` splits it over the kind's settings classes (each gets the keys it has, every key must
    fit one) and validates each.
    """

    settings: tuple[type[Config], ...]
    run: Callable[..., Any]
    # A method that trains from initialization: the step also has the `advprune train` settings
    # of the network it builds (`start_keys`), made into a TrainConfig after the others.
    start: bool = False

    @property
    def fields(self) -> set[str]:
        own = set().union(*(cls.field_names() for cls in self.settings))
        return own | start_keys() if self.start else own

    def make(self, values: dict[str, Any], where: str) -> tuple[Config, ...]:
        unknown = sorted(set(values) - self.fields)
        if unknown:
            raise _unknown_settings(unknown, self.fields, where)
        configs = tuple(
            cls.from_dict(_known(values, cls.field_names()), source=where) for cls in self.settings
        )
        if not self.start:
            return configs
        return (*configs, start_config(_known(values, start_keys()), configs[0], where))


def _train(config: TrainConfig, run_dir: Path, *, progress: bool, log: Callable) -> None:
    train_phase(config, run_dir, progress=progress, log=log)


def _prune(settings: PruneSettings, method_settings: Config, run_dir: Path, **output: Any) -> None:
    method = get_method(settings.method)(method_settings)
    prune_run(settings, method, run_dir, **output)


def _prune_from_initialization(
    settings: PruneSettings, method_settings: Config, start: TrainConfig, run_dir: Path, **output
) -> None:
    method = get_method(settings.method)(method_settings)
    prune_run(settings, method, run_dir, start=start, **output)


TRAINING = StepKind((TrainConfig,), _train)
KINDS = ("train", "prune")
STEP_KEYS = ("name", *KINDS, "evaluate", "slurm")
# Recipe keys that name an earlier step → the settings field that receives its run directory.
REFERENCES = {"from": "from_run", "init": "init", "transfer_from": "transfer_from"}
STEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def pruning(method: str) -> StepKind:
    """The step kind of a prune step with `method`: the generic settings and the method's own
    (and, for a method that trains from initialization, the network and data it starts from)."""
    cls = get_method(method)
    if cls.starts_from == INITIALIZATION:
        return StepKind((PruneSettings, cls.Settings), _prune_from_initialization, start=True)
    return StepKind((PruneSettings, cls.Settings), _prune)


@dataclass
class Step:
    """One run directory of a recipe: what trains or prunes it, and how it is evaluated."""

    name: str
    kind: str  # "train" or "prune"
    method: str | None  # the pruning method of a prune step
    configs: tuple[Any, ...]  # (TrainConfig,) or the pruning method's settings
    evaluate: EvalConfig | None
    run_dir: Path
    dataset: str
    needs: dict[str, str] = field(default_factory=dict)  # settings field → step it names
    batch: int = 1  # the largest batch it trains with (`training_batch`)
    seed: int | None = None  # the seed of a run with seeds; its run directory is ROOT/seed-S/NAME
    resources: Resources = field(default_factory=Resources)  # its jobs' on a cluster

    @property
    def label(self) -> str:
        """How the console, the logs and the report name the step: NAME, or seed-S/NAME."""
        return self.name if self.seed is None else f"seed-{self.seed}/{self.name}"

    def needed_labels(self) -> set[str]:
        """The labels of the steps this one needs finished before it starts (its seed's)."""
        prefix = "" if self.seed is None else f"seed-{self.seed}/"
        return {prefix + name for name in self.needs.values()}

    def setting(self, name: str) -> Any:
        """The value of flat setting `name` in the first of the step's configs that has it."""
        return next((c.to_flat()[name] for c in self.configs if name in c.to_flat()), None)

    def _described(self, config: Config) -> dict[str, Any]:
        return {
            key: f"step {self.needs[key]}" if key in self.needs else value
            for key, value in config.computed().items()
        }

    def record(self) -> dict[str, Any]:
        """What the step computes (not where), as stored in its run directory for resume."""
        settings = {type(c).__name__: self._described(c) for c in self.configs}
        return {"kind": self.kind, "method": self.method, "settings": settings}

    @property
    def step_kind(self) -> StepKind:
        return TRAINING if self.kind == "train" else pruning(self.method)

    def evaluation_record(self) -> dict[str, Any] | None:
        """The evaluation settings that change what is measured under attack: a change of these
        drops a finished evaluation (latency_repeats changes none of it)."""
        if self.evaluate is None:
            return None
        record = self._described(self.evaluate)
        record.pop("latency_repeats", None)
        return record

    def describe(self) -> str:
        if self.kind == "train":
            epochs = self.setting("epochs")
            return (
                f"train {self.setting('model')} on {self.dataset} ({self.setting('objective')}, "
                f"{epochs} epoch{'s' if epochs != 1 else ''})"
            )
        source = ", ".join(
            f"{key} {name}" for key, name in self.needs.items() if key != "transfer_from"
        )
        sparsity = self.setting("sparsity")
        target = f" to {sparsity:.0%}" if isinstance(sparsity, float) else ""
        return f"prune with {self.method}{target} ({source or 'from initialization'})"


@dataclass
class Plan:
    recipe: str
    title: str
    root: Path
    scale: float
    steps: list[Step]
    paper: dict[str, Any] | None
    seeds: tuple[int, ...] | None = None  # each step ran once per seed (ROOT/seed-S/STEP)
    # What it was made from: `make_plan(root=plan.root, **plan.arguments)` makes it again.
    arguments: dict[str, Any] = field(default_factory=dict)


def _unknown_settings(unknown: Sequence[str], known: set[str], where: str) -> ConfigError:
    """The error for settings that do not exist: the nearest known one, or else all of them."""
    meant = closest(unknown[0], known) or f"; known: {', '.join(sorted(known))}"
    return ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}{meant}")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping of settings, got {value!r}")
    return dict(value)


def _fields(cls: type[Config]) -> set[str]:
    return cls.field_names()


def _build(cls: type[Config], values: Mapping[str, Any], where: str) -> Config:
    """`cls` from `values`, validated; an unknown key names the step and the known keys."""
    unknown = sorted(set(values) - _fields(cls))
    if unknown:
        raise _unknown_settings(unknown, _fields(cls), where)
    return cls.from_dict(values, source=where)


def _scaled_count(factor: float, full: int, minimum: int) -> int:
    return min(full, max(minimum, math.ceil(factor * full)))


def training_batch(configs: Iterable[Config], source: Step | None) -> int:
    """The largest batch a step trains with: its own batch sizes, and for a phase that sets
    none the batch of the run it starts from (what `PruningMethod.phase` inherits)."""
    sizes = [
        value if value is not None else (source.batch if source else None)
        for config in configs
        for key, value in config.to_flat().items()
        if key in ("batch_size", "finetune_batch_size", "score_batch_size")
    ]
    return max((size for size in sizes if size), default=1)


def scale_settings(
    settings: Config,
    factor: float,
    dataset: str,
    keep: Iterable[str] = (),
    batch: int | None = None,
) -> Config:
    """The settings shrunk by `factor` as the module docstring states, but those named in `keep`
    (set with `--set`: what the user asked for wins); unchanged at 1. `batch` is the largest
    batch the step trains with (`training_batch`; default: the settings' own): no fewer training
    examples are kept."""
    if factor == 1:
        return settings
    spec = get_spec(dataset)
    flat = settings.to_flat()
    changes: dict[str, Any] = {}
    for key, value in flat.items():
        if (key == "epochs" or key.endswith("_epochs")) and value is not None:
            changes[key] = max(1, round(factor * value))
    if "limit_train" in flat and spec.train_size is not None:
        full = flat["limit_train"] or spec.train_size
        batch = batch or training_batch([settings], None)
        changes["limit_train"] = _scaled_count(factor, full, batch)
    for key in ("limit_test", "autoattack_limit"):
        if key in flat and spec.test_size is not None:
            changes[key] = _scaled_count(factor, flat[key] or spec.test_size, 1)
    for key in ("monitor_examples", "monitor_clean_examples", "sanity_examples"):
        if key in flat and flat[key] > 0:
            changes[key] = _scaled_count(factor, flat[key], 1)
    if "latency_repeats" in flat:
        changes["latency_repeats"] = 0
    if "allow_chance" in flat:
        changes["allow_chance"] = True
    for key in getattr(settings, "PER_DATASET_WEIGHTS", ()):
        changes[key] = factor * flat[key]
    kept = set(keep)
    return settings.replace(**{k: v for k, v in changes.items() if k not in kept})


def check_seeds(seeds: Any, where: str) -> tuple[int, ...]:
    """Distinct integers ≥ 0, at least one: a list of seeds from a recipe or `--seeds`."""
    if (
        not isinstance(seeds, list | tuple)
        or not seeds
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ConfigError(f"{where} must be distinct integers ≥ 0, e.g. [0, 1, 2]; got {seeds!r}")
    return tuple(seeds)


def check_scale(scale: float) -> None:
    if not (math.isfinite(scale) and 0 < scale <= 1):
        raise ConfigError(f"--scale must be in (0, 1] (a fraction of the recipe), got {scale}")


def _prune_fields() -> set[str]:
    return set().union(*(pruning(name).fields for name in method_names()))


def _all_fields() -> set[str]:
    """Every setting some step of this build can have."""
    return TRAINING.fields | _prune_fields() | _fields(EvalConfig)


class _Recipe:
    """The recipe's YAML, checked for shape, with its defaults and the settings each key fits."""

    def __init__(self, name: str, overrides: Mapping[str, Any]) -> None:
        self.name = name
        raw = load_recipe(name)
        if not isinstance(raw, Mapping) or "steps" not in raw:
            raise ConfigError(
                f"recipe {name} has no steps, so it is not a reproduction; run it with "
                f"`advprune {name}` or `advprune train --recipe {name}`"
            )
        self.title = str(raw.get("title", name))
        self.defaults = {kind: _mapping(raw.get(kind), f"recipe {name}: {kind}") for kind in KINDS}
        self.evaluate = raw.get("evaluate")
        self.paper = raw.get("paper")
        self.slurm = Resources.from_mapping(
            _mapping(raw.get("slurm"), f"recipe {name}: slurm"), f"recipe {name}: slurm"
        )
        self.seeds = (
            None if raw.get("seeds") is None else check_seeds(raw["seeds"], f"recipe {name}: seeds")
        )
        self.steps = self._steps(raw["steps"])
        self.overrides = dict(overrides)
        self._check_keys(self.defaults["train"], TRAINING.fields, "train defaults")
        self._check_keys(self.defaults["prune"], _prune_fields(), "prune defaults")
        self._check_keys(self.overrides, _all_fields(), "--set")

    def with_seed(self, seed: int) -> _Recipe:
        """This recipe with every `seed` setting set to `seed`, as `--set seed=S` would."""
        if "seed" in self.overrides:
            raise ConfigError(
                "--set seed and seeds (--seeds or the recipe's) both set the seed; drop one"
            )
        seeded = copy.copy(self)
        seeded.overrides = {**self.overrides, "seed": seed}
        return seeded

    def _check_keys(self, values: Mapping[str, Any], known: set[str], where: str) -> None:
        unknown = sorted(set(values) - known - set(REFERENCES))
        if unknown:
            raise ConfigError(
                f"recipe {self.name}: {where}: no step has a setting {', '.join(unknown)}"
                + (closest(unknown[0], known) or "; check its spelling")
            )

    def _steps(self, steps: Any) -> list[dict[str, Any]]:
        if not isinstance(steps, list) or not steps:
            raise ConfigError(f"recipe {self.name}: steps must be a non-empty list")
        names: list[str] = []
        for step in steps:
            if not isinstance(step, Mapping) or not isinstance(step.get("name"), str):
                raise ConfigError(f"recipe {self.name}: every step needs a name, got {step!r}")
            name = step["name"]
            where = f"recipe {self.name}, step {name}"
            if not STEP_NAME.fullmatch(name) or name in names or name == "report":
                raise ConfigError(
                    f"{where}: a step name must be unique, not 'report', and made of letters, "
                    "digits, '.', '_' or '-' (it names the run directory)"
                )
            unknown = sorted(set(step) - set(STEP_KEYS))
            kinds = [kind for kind in KINDS if kind in step]
            if unknown or len(kinds) != 1:
                raise ConfigError(
                    f"{where}: a step has a name, exactly one of {' or '.join(KINDS)}, and "
                    f"optionally evaluate and slurm (found {', '.join(sorted(step))})"
                )
            if "prune" in step and not _mapping(step["prune"], f"{where}: prune").get("method"):
                raise ConfigError(f"{where}: prune needs a method, e.g. `method: magnitude`")
            for key, target in self.references(step).items():
                if target not in names:
                    raise ConfigError(
                        f"{where}: {key}: {target!r} is not an earlier step; steps before it: "
                        f"{', '.join(names) or 'none'}"
                    )
            names.append(name)
        return [dict(step) for step in steps]

    def references(self, step: Mapping[str, Any]) -> dict[str, str]:
        """Keys of the step's sections that name another step → that step's name."""
        sections = [step.get(kind) for kind in KINDS]
        if step.get("evaluate") is not False:
            sections += [self.evaluate, step.get("evaluate")]
        found = {}
        for section in sections:
            if isinstance(section, Mapping):
                found.update({k: str(v) for k, v in section.items() if k in REFERENCES})
        return found

    def needed(self, names: Sequence[str]) -> list[str]:
        """`names` and every step they depend on, in recipe order."""
        by_name = {step["name"]: step for step in self.steps}
        unknown = [name for name in names if name not in by_name]
        if unknown:
            raise ConfigError(
                f"recipe {self.name} has no step {', '.join(unknown)}; its steps: "
                f"{', '.join(by_name)}"
            )
        wanted: set[str] = set()
        pending = list(names)
        while pending:
            name = pending.pop()
            if name not in wanted:
                wanted.add(name)
                pending += self.references(by_name[name]).values()
        return [step["name"] for step in self.steps if step["name"] in wanted]

    def missing_feature(self, step: Mapping[str, Any]) -> str | None:
        """What this build lacks for the step (its method, a setting), or None."""
        method = step["prune"]["method"] if "prune" in step else None
        if method is not None and method not in method_names():
            return f"method {method}"
        for key in self.references(step):
            if REFERENCES[key] not in _all_fields():
                return f"setting {key}"
        return None


def runnable_steps(recipe: str) -> list[str]:
    """The recipe's steps this build can run: those whose method and settings (and whose
    dependencies' methods and settings) exist."""
    parsed = _Recipe(recipe, {})
    broken: set[str] = set()
    runnable = []
    for step in parsed.steps:
        needs = set(parsed.references(step).values())
        if parsed.missing_feature(step) or needs & broken:
            broken.add(step["name"])
        else:
            runnable.append(step["name"])
    return runnable


def make_plan(
    recipe: str,
    root: str | Path,
    *,
    scale: float = 1.0,
    data_dir: str | None = None,
    download: bool = False,
    overrides: Mapping[str, Any] | None = None,
    only: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> Plan:
    """Resolve and validate every selected step (all by default) of `recipe`, under `root`;
    with `seeds` (else the recipe's own), every step once per seed under ROOT/seed-S."""
    check_scale(scale)
    parsed = _Recipe(recipe, overrides or {})
    names = parsed.needed(only) if only else [step["name"] for step in parsed.steps]
    by_name = {step["name"]: step for step in parsed.steps}
    lacking = {name: parsed.missing_feature(by_name[name]) for name in names}
    lacking = {name: what for name, what in lacking.items() if what}
    if lacking:
        listed = "; ".join(f"step {name} needs {what}" for name, what in lacking.items())
        runnable = [name for name in runnable_steps(recipe) if name in names]
        raise ConfigError(
            f"recipe {recipe}: not available in this build: {listed}; run the others with "
            f"--steps {','.join(runnable) or '(none)'}"
        )
    location = {"data_dir": data_dir, "download": download}
    root = Path(root)
    arguments = {
        "recipe": str(Path(recipe).resolve()) if Path(recipe).is_file() else recipe,
        "scale": scale,
        **location,
        "overrides": dict(overrides or {}),
        "only": list(only) if only else None,
        "seeds": None if seeds is None else list(seeds),
    }
    seeds = parsed.seeds if seeds is None else check_seeds(seeds, "--seeds")
    paper = _check_paper(parsed)
    if seeds is None:
        steps = _plan_steps(parsed, [by_name[name] for name in names], root, scale, location)
        return Plan(recipe, parsed.title, root, scale, steps, paper, arguments=arguments)
    steps = []
    for seed in seeds:
        seeded = _plan_steps(
            parsed.with_seed(seed),
            [by_name[n] for n in names],
            root / f"seed-{seed}",
            scale,
            location,
        )
        steps += [replace(step, seed=seed) for step in seeded]
    return Plan(recipe, parsed.title, root, scale, steps, paper, seeds, arguments)


def _plan_steps(
    recipe: _Recipe,
    raws: Sequence[Mapping[str, Any]],
    root: Path,
    scale: float,
    location: Mapping[str, Any],
) -> list[Step]:
    """The steps `raws` of `recipe` under `root`, each referring to the ones before it."""
    steps: dict[str, Step] = {}
    for raw in raws:
        steps[raw["name"]] = _plan_step(recipe, raw, root, scale, location, steps)
    return list(steps.values())


def _known(values: Mapping[str, Any], names: type | set[str]) -> dict[str, Any]:
    """The entries of `values` that are settings in `names` (a dataclass or a set of names):
    defaults and --set apply where they fit."""
    names = _fields(names) if isinstance(names, type) else names
    return {key: value for key, value in values.items() if key in names}


def _resolve_references(
    values: dict[str, Any], names: set[str], steps: Mapping[str, Step], where: str
) -> tuple[dict[str, Any], dict[str, str]]:
    needs = {}
    for key in [k for k in values if k in REFERENCES]:
        target = values.pop(key)
        field_name = REFERENCES[key]
        if field_name not in names:
            raise ConfigError(f"{where}: {key} does not apply here")
        values[field_name] = str(steps[target].run_dir)
        needs[field_name] = target
    return values, needs


def _plan_step(
    recipe: _Recipe,
    raw: Mapping[str, Any],
    root: Path,
    scale: float,
    location: Mapping[str, Any],
    steps: Mapping[str, Step],
) -> Step:
    name = raw["name"]
    where = f"recipe {recipe.name}, step {name}"
    kind = next(kind for kind in KINDS if kind in raw)
    section = _mapping(raw[kind], f"{where}: {kind}")
    method_name = section.pop("method", None) if kind == "prune" else None
    kind_of_step = TRAINING if kind == "train" else pruning(method_name)
    names = kind_of_step.fields
    values = {
        **_known(recipe.defaults[kind], names),
        **section,
        **_known(recipe.overrides, names),
        **_known(location, names),
    }
    if "method" in names:
        values["method"] = method_name
    values, needs = _resolve_references(values, names, steps, where)
    source = steps[next(iter(needs.values()))] if needs else None
    configs = kind_of_step.make(values, where)
    dataset = next((c.dataset for c in configs if hasattr(c, "dataset")), None)
    dataset = dataset or source.dataset
    batch = training_batch(configs, source)
    configs = tuple(scale_settings(c, scale, dataset, recipe.overrides, batch) for c in configs)
    evaluate = _plan_evaluation(recipe, raw, where, scale, dataset, location, steps, needs)
    resources = recipe.slurm.merged(_mapping(raw.get("slurm"), f"{where}: slurm"), where)
    return Step(
        name,
        kind,
        method_name,
        configs,
        evaluate,
        root / name,
        dataset,
        needs,
        batch,
        resources=resources,
    )


def _plan_evaluation(
    recipe: _Recipe,
    raw: Mapping[str, Any],
    where: str,
    scale: float,
    dataset: str,
    location: Mapping[str, Any],
    steps: Mapping[str, Step],
    needs: dict[str, str],
) -> EvalConfig | None:
    own = raw.get("evaluate", {})
    if own is False:
        return None
    values = {
        **_mapping(recipe.evaluate, f"recipe {recipe.name}: evaluate"),
        **_mapping(own, f"{where}: evaluate"),
    }
    values.update({**_known(recipe.overrides, EvalConfig), **_known(location, EvalConfig)})
    where = f"{where}: evaluate"
    values, eval_needs = _resolve_references(values, _fields(EvalConfig), steps, where)
    needs.update(eval_needs)
    return scale_settings(_build(EvalConfig, values, where), scale, dataset, recipe.overrides)


def _check_paper(recipe: _Recipe) -> dict[str, Any] | None:
    """The paper's figures: rows keyed by step, metrics from `PAPER_METRICS`, numbers only."""
    if recipe.paper is None:
        return None
    paper = _mapping(recipe.paper, f"recipe {recipe.name}: paper")
    where = f"recipe {recipe.name}: paper"
    names = {step["name"] for step in recipe.steps}
    reference = paper.get("reference")
    if reference is not None and reference not in names:
        raise ConfigError(f"{where}: reference {reference!r} is not a step")
    rows = _mapping(paper.get("rows"), f"{where}: rows")
    for step, metrics in rows.items():
        if step not in names:
            raise ConfigError(f"{where}: row {step!r} is not a step of the recipe")
        for metric, value in _mapping(metrics, f"{where}: {step}").items():
            if metric not in PAPER_METRICS:
                raise ConfigError(
                    f"{where}: {step}: unknown metric {metric!r}; use {', '.join(PAPER_METRICS)}"
                )
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}: {step}: {metric} must be a number, got {value!r}")
            if PAPER_METRICS[metric].relative and reference is None:
                raise ConfigError(f"{where}: {metric} needs `reference: STEP` (the 100 % model)")
    return {"source": str(paper.get("source", "")), "reference": reference, "rows": rows}
