"""A reproduction recipe as a plan: its steps in order, every setting resolved and validated.

A recipe (src/advprune/recipes/NAME.yaml) is a list of steps, each a run directory:

    title: what the recipe reproduces
    train: {...}      # defaults of every train step (TrainConfig keys)
    prune: {...}      # defaults of every prune step (keys its method's settings have)
    evaluate: {...}   # how every step is evaluated (EvalConfig keys); a step's `evaluate:` adds
                      # to it, and `evaluate: false` skips the step's evaluation
    steps:
      - {name: dense, train: {dataset: cifar10, model: vgg16, epochs: 100}}
      - {name: mad-90, prune: {method: mad, from: dense, sparsity: 0.9}}
    paper: {source: ..., reference: STEP, rows: {STEP: {metric: value}}}   # see report.comparison
    anchors: {...}    # YAML anchors that steps merge in (`<<: *name`); not read otherwise

`from: STEP` (and `init:`, `transfer_from:`) name an earlier step; the step gets that step's run
directory. Everything is checked before the first step starts, so a long run never fails on a
typo after hours; a method this build lacks is named with the steps that can run without it.

`--scale F` (0 < F ≤ 1) shrinks a recipe for a smoke run, exactly as follows: every epoch count
(epochs, finetune_epochs, score_epochs) becomes max(1, round(F·epochs)); the training examples
max(batch_size, ceil(F·N)) with N the dataset's training-set size (or the recipe's limit_train);
the test examples, the AutoAttack examples and the examples of the epoch monitor and of the
gradient-masking check each max(1, ceil(F·n)) of their full number n. A dataset with fewer
examples than these limits is used whole.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advprune.core.errors import ConfigError
from advprune.data import get_spec
from advprune.evaluation import EvalConfig
from advprune.pruning import METHODS, PruneConfig, prune_run
from advprune.recipes import load_recipe
from advprune.report.comparison import PAPER_METRICS
from advprune.training import TrainConfig


@dataclass(frozen=True)
class PruneMethod:
    """How a reproduction runs one `advprune prune --method NAME`."""

    settings: type  # dataclass of the method's settings, with a validate() method
    run: Callable[..., Any]  # run(settings, run_dir, *, progress, log): prunes into run_dir


# The pruning methods of this build: a method is one line here.
PRUNE_METHODS: dict[str, PruneMethod] = {
    name: PruneMethod(PruneConfig, prune_run) for name in METHODS
}

KINDS = ("train", "prune")
RECIPE_KEYS = ("title", "anchors", "train", "prune", "evaluate", "steps", "paper")
STEP_KEYS = ("name", *KINDS, "evaluate")
# Recipe keys that name an earlier step → the settings field that receives its run directory.
REFERENCES = {"from": "from_run", "init": "init", "transfer_from": "transfer_from"}
EPOCH_KEYS = ("epochs", "finetune_epochs", "score_epochs")
# Where a run executes, not what it computes: these may differ when a stopped run is resumed.
LOCATION_KEYS = ("device", "data_dir", "download")
STEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class Step:
    """One run directory of a recipe: what trains or prunes it, and how it is evaluated."""

    name: str
    kind: str  # "train" or "prune"
    method: str | None  # the pruning method of a prune step
    settings: Any  # TrainConfig, or the pruning method's settings
    evaluate: EvalConfig | None
    run_dir: Path
    dataset: str
    needs: dict[str, str] = field(default_factory=dict)  # settings field → step it names

    def record(self) -> dict[str, Any]:
        """What the step computes (not where), as stored in its run directory for resume."""
        settings = {
            key: f"step {self.needs[key]}" if key in self.needs else value
            for key, value in dataclasses.asdict(self.settings).items()
            if key not in LOCATION_KEYS
        }
        return {"kind": self.kind, "method": self.method, "settings": settings}

    def evaluation_record(self) -> dict[str, Any] | None:
        if self.evaluate is None:
            return None
        return {
            key: f"step {self.needs[key]}" if key in self.needs else value
            for key, value in dataclasses.asdict(self.evaluate).items()
            if key not in LOCATION_KEYS
        }

    def describe(self) -> str:
        if self.kind == "train":
            s = self.settings
            epochs = f"{s.epochs} epoch" + ("s" if s.epochs != 1 else "")
            return f"train {s.model} on {s.dataset} ({s.objective}, {epochs})"
        fields = _fields(type(self.settings))
        source = ", ".join(f"{key} {name}" for key, name in self.needs.items() if key in fields)
        sparsity = getattr(self.settings, "sparsity", None)
        target = f" to {sparsity:.0%}" if isinstance(sparsity, float) else ""
        return f"prune with {self.method}{target} ({source})"


@dataclass
class Plan:
    recipe: str
    title: str
    root: Path
    scale: float
    steps: list[Step]
    paper: dict[str, Any] | None


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping of settings, got {value!r}")
    return dict(value)


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """`cls(**values)`, validated; an unknown key names the step and the known keys."""
    unknown = sorted(set(values) - _fields(cls))
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_fields(cls)))}"
        )
    values = dict(values)
    if isinstance(values.get("attacks"), list):
        values["attacks"] = ",".join(values["attacks"])
    try:
        return cls(**values).validate()
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err


def _scaled_count(factor: float, full: int, minimum: int) -> int:
    return min(full, max(minimum, math.ceil(factor * full)))


def scale_settings(settings: Any, factor: float, dataset: str) -> Any:
    """The settings shrunk by `factor` as the module docstring states; unchanged at 1."""
    if factor == 1:
        return settings
    spec = get_spec(dataset)
    changes: dict[str, Any] = {}
    names = _fields(type(settings))
    for key in EPOCH_KEYS:
        if key in names:
            changes[key] = max(1, round(factor * getattr(settings, key)))
    if "limit_train" in names and spec.train_size is not None:
        full = settings.limit_train or spec.train_size
        changes["limit_train"] = _scaled_count(factor, full, getattr(settings, "batch_size", 1))
    for key in ("limit_test", "autoattack_limit"):
        if key in names and spec.test_size is not None:
            changes[key] = _scaled_count(factor, getattr(settings, key) or spec.test_size, 1)
    for key in ("monitor_examples", "sanity_examples"):
        if key in names and getattr(settings, key) > 0:
            changes[key] = _scaled_count(factor, getattr(settings, key), 1)
    return dataclasses.replace(settings, **changes).validate()


def check_scale(scale: float) -> None:
    if not (math.isfinite(scale) and 0 < scale <= 1):
        raise ConfigError(f"--scale must be in (0, 1] (a fraction of the recipe), got {scale}")


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
        unknown = sorted(set(raw) - set(RECIPE_KEYS))
        if unknown:
            raise ConfigError(f"recipe {name}: unknown key(s) {', '.join(unknown)}")
        self.title = str(raw.get("title", name))
        self.defaults = {kind: _mapping(raw.get(kind), f"recipe {name}: {kind}") for kind in KINDS}
        self.evaluate = raw.get("evaluate")
        self.paper = raw.get("paper")
        self.steps = self._steps(raw["steps"])
        self.overrides = dict(overrides)
        self._check_keys(self.defaults["train"], {TrainConfig}, "train defaults")
        self._check_keys(self.defaults["prune"], self._prune_classes(), "prune defaults")
        self._check_keys(self.overrides, {TrainConfig, EvalConfig, *self._prune_classes()}, "--set")

    @staticmethod
    def _prune_classes() -> set[type]:
        return {method.settings for method in PRUNE_METHODS.values()}

    def _check_keys(self, values: Mapping[str, Any], classes: set[type], where: str) -> None:
        known = set().union(*(_fields(cls) for cls in classes)) | set(REFERENCES) | {"method"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"recipe {self.name}: {where}: no step has a setting {', '.join(unknown)}"
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
                    f"optionally evaluate (found {', '.join(sorted(step))})"
                )
            for key, target in self._references(step).items():
                if target not in names:
                    raise ConfigError(
                        f"{where}: {key}: {target!r} is not an earlier step; steps before it: "
                        f"{', '.join(names) or 'none'}"
                    )
            names.append(name)
        return [dict(step) for step in steps]

    def _references(self, step: Mapping[str, Any]) -> dict[str, str]:
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
                pending += self._references(by_name[name]).values()
        return [step["name"] for step in self.steps if step["name"] in wanted]

    def missing_feature(self, step: Mapping[str, Any]) -> str | None:
        """What this build lacks for the step (its method, a setting), or None."""
        if "prune" in step:
            method = _mapping(step["prune"], "prune").get("method")
            if method is None:
                return "no method (prune needs `method:`)"
            if method not in PRUNE_METHODS:
                return f"method {method}"
        for key in self._references(step):
            field_name = REFERENCES[key]
            holders = {TrainConfig, EvalConfig, *self._prune_classes()}
            if not any(field_name in _fields(cls) for cls in holders):
                return f"setting {key}"
        return None


def runnable_steps(recipe: str) -> list[str]:
    """The recipe's steps this build can run: those whose method and settings (and whose
    dependencies' methods and settings) exist."""
    parsed = _Recipe(recipe, {})
    broken: set[str] = set()
    runnable = []
    for step in parsed.steps:
        needs = set(parsed._references(step).values())
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
) -> Plan:
    """Resolve and validate every selected step (all by default) of `recipe`, under `root`."""
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
    steps: dict[str, Step] = {}
    for name in names:
        steps[name] = _plan_step(parsed, by_name[name], root, scale, location, steps)
    paper = _check_paper(parsed)
    return Plan(recipe, parsed.title, root, scale, list(steps.values()), paper)


def _known(values: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """The entries of `values` that are settings of `cls` (where a default or --set applies)."""
    names = _fields(cls)
    return {key: value for key, value in values.items() if key in names}


def _resolve_references(
    values: dict[str, Any], cls: type, steps: Mapping[str, Step], where: str
) -> tuple[dict[str, Any], dict[str, str]]:
    needs = {}
    for key in [k for k in values if k in REFERENCES]:
        target = values.pop(key)
        field_name = REFERENCES[key]
        if field_name not in _fields(cls):
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
    method = section.pop("method", None) if kind == "prune" else None
    cls = TrainConfig if kind == "train" else PRUNE_METHODS[method].settings
    values = {
        **_known(recipe.defaults[kind], cls),
        **section,
        **_known(recipe.overrides, cls),
        **_known(location, cls),
    }
    if "method" in _fields(cls):
        values["method"] = method
    values, needs = _resolve_references(values, cls, steps, where)
    settings = _build(cls, values, where)
    if kind == "train":
        dataset = settings.dataset
    else:
        dataset = getattr(settings, "dataset", None) or steps[next(iter(needs.values()))].dataset
    settings = scale_settings(settings, scale, dataset)
    evaluate = _plan_evaluation(recipe, raw, where, scale, dataset, location, steps, needs)
    return Step(name, kind, method, settings, evaluate, root / name, dataset, needs)


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
    values, eval_needs = _resolve_references(values, EvalConfig, steps, f"{where}: evaluate")
    needs.update(eval_needs)
    return scale_settings(_build(EvalConfig, values, f"{where}: evaluate"), scale, dataset)


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
