"""`advprune reproduce RECIPE`: run a recipe's steps, evaluate them, report, compare with the paper.

Each step is one run directory under the root. A stopped reproduction is resumed by running the
same command again: a step whose model is written is skipped, one with a checkpoint resumes from
it, and an evaluation runs only the attacks its results.json lacks. Each step records what it
computes in RUN_DIR/step.yaml; a rerun with other settings is refused instead of mixing runs.
"""

from __future__ import annotations

import contextlib
import copy
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from advprune.attacks import parse_attacks
from advprune.core.config import Config, choices_of, scalar_type
from advprune.core.device import tune_process
from advprune.core.errors import AdvpruneError, ConfigError, GradientMaskingError
from advprune.core.io import atomic_write_text, read_json
from advprune.core.run_dir import RunDir, undone_on_failure
from advprune.evaluation import evaluate_run, results_file
from advprune.recipes import recipe_name
from advprune.report import read_run, write_report
from advprune.report.comparison import compare, comparison_csv, comparison_markdown
from advprune.report.runs import RunSummary
from advprune.report.seeds import aggregate
from advprune.reproduction.executor import Executor
from advprune.reproduction.parallel import (
    BOTH,
    BUILD,
    EVALUATE,
    Slot,
    Task,
    describe_slots,
    make_slots,
    run_parallel,
    thread_budget,
)
from advprune.reproduction.plan import Plan, Step, make_plan

STEP_RECORD = "step.yaml"
# ROOT/reproduce.yaml: a submitted plan's arguments, from which `advprune status ROOT` plans again.
INVOCATION = "reproduce.yaml"
# `--jobs` when not given: docs/benchmarks.md has the measurement that chose it.
DEFAULT_JOBS: int | str = "auto"
AUTOATTACK_STATE = "autoattack.state"
# What `evaluate_run` measures under the attacks; other results (sizes, a method's own) stay.


def default_root(recipe: str, scale: float) -> Path:
    """runs/reproduce/RECIPE, or RECIPE-scaleF for a shrunk run, so the two never mix; a recipe
    file's runs go under its stem (`./my.yaml`: runs/reproduce/my), never beside the file."""
    suffix = "" if scale == 1 else f"-scale{scale:g}"
    return Path("runs") / "reproduce" / f"{recipe_name(recipe)}{suffix}"


def _saved_record(run: RunDir) -> dict[str, Any] | None:
    path = run.path / STEP_RECORD
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else None


def _check_record(step: Step, run: RunDir) -> None:
    """Write the step's record of what it computes, or check it against the one there: other
    training settings are refused. The evaluation's part is kept as it was until the
    evaluation it describes has run (`_evaluation_changed`)."""
    saved = _saved_record(run)
    wanted = step.record()
    if saved is not None:
        if any(saved.get(key) != wanted[key] for key in ("kind", "method", "settings")):
            changed = _changed(saved.get("settings") or {}, wanted["settings"])
            raise ConfigError(
                f"{run.path} holds step {step.name} with other settings "
                f"({', '.join(changed) or 'its kind or method'}); delete it or pass another "
                "--runs-dir"
            )
    elif any(p.exists() for p in (run.config, run.checkpoint, run.model, run.results)):
        raise ConfigError(
            f"{run.path} holds a run that this recipe did not start; delete it or pass another "
            "--runs-dir"
        )
    evaluated = (saved or {}).get("evaluate")
    atomic_write_text(
        run.path / STEP_RECORD, yaml.safe_dump({**wanted, "evaluate": evaluated}, sort_keys=False)
    )


def _evaluation_changed(step: Step, run: RunDir, log: Callable[[str], None]) -> bool:
    """Whether the results there were measured with other evaluation settings (each attack's
    entry in results.json records its settings, so no table mixes the two: what they change
    is evaluated again)."""
    evaluated = (_saved_record(run) or {}).get("evaluate")  # None: never evaluated here
    changed = evaluated is not None and evaluated != step.evaluation_record()
    if changed:
        log("  the evaluation settings changed: evaluating again what they change")
    return changed


def _record_evaluation(step: Step, run: RunDir) -> None:
    saved = _saved_record(run) or step.record()
    record = {**saved, "evaluate": step.evaluation_record()}
    atomic_write_text(run.path / STEP_RECORD, yaml.safe_dump(record, sort_keys=False))


def _changed(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The settings that differ between two records, across their configs."""
    flat = [
        {
            key: value
            for config in record.values()
            if isinstance(config, dict)
            for key, value in config.items()
        }
        for record in (before, now)
    ]
    return sorted(k for k in set(flat[0]) | set(flat[1]) if flat[0].get(k) != flat[1].get(k))


def _train_or_prune(step: Step, run: RunDir, progress: bool, log: Callable[[str], None]) -> None:
    if run.model.exists():
        log(f"  finished before: {run.model} exists")
        return
    step.step_kind.run(*step.configs, run.path, progress=progress, log=log)


def _finished(step: Step, run: RunDir) -> bool:
    """The step's results file has every attack and check its evaluation asks for."""
    config = step.evaluate
    path = results_file(run.path, config)
    results = read_json(path, "results file") if path.exists() else {}
    done = set(results.get("accuracy", {}))
    wanted = set(parse_attacks(config.attacks)) | ({"transfer"} if config.transfer_from else set())
    checked = config.sanity_examples == 0 or "gradient_masking_check" in results
    return wanted <= done and checked


def is_built(step: Step) -> bool:
    """The step's model is written with the settings the recipe asks for."""
    run = RunDir(step.run_dir)
    saved = _saved_record(run) if run.path.is_dir() else None
    if saved is None or not run.model.exists():
        return False
    return all(saved.get(key) == value for key, value in step.record().items())


def is_finished(step: Step) -> bool:
    """Nothing left to do: the step's record is the one there, its model is written and its
    evaluation has every attack. A parallel rerun books such a step without a process."""
    if not is_built(step):
        return False
    if step.evaluate is None:
        return True
    run = RunDir(step.run_dir)
    saved = _saved_record(run) or {}
    return saved.get("evaluate") == step.evaluation_record() and _finished(step, run)


def _evaluate(step: Step, run: RunDir, progress: bool, log: Callable[[str], None]) -> str | None:
    """Evaluate the step unless an earlier evaluation with the same settings finished it;
    `evaluate_run` keeps the attacks finished with the same model and settings. Returns a
    gradient-masking warning rather than stopping the reproduction (the report shows it)."""
    if not _evaluation_changed(step, run, log) and _finished(step, run):
        log("  evaluated before: results.json has every attack")
        return None
    try:
        evaluate_run(run.path, step.evaluate, progress=progress, log=log)
    except GradientMaskingError as err:
        log(f"  warning: {err}")
        return f"{step.label}: {err}"
    finally:
        _record_evaluation(step, run)
    return None


def run_step(
    step: Step, *, progress: bool, log: Callable[[str], None], phase: str = BOTH
) -> str | None:
    """Train or prune the step (resuming it), then evaluate it; returns its gradient-masking
    warning. `phase` BUILD or EVALUATE does one of the two: a parallel reproduction runs them
    as separate tasks, so that the steps needing this one start while it is being evaluated.
    The same in this process (`--jobs 1`) and in a task's own (parallel.work), both with the
    command line's process settings (`tune_process`: a task's process does not inherit them)."""
    tune_process()
    if phase != EVALUATE:
        # A step refused before it wrote a file of its own (a network that fails its check)
        # takes back its step.yaml and folders: the corrected recipe starts clean.
        try:
            with undone_on_failure(step.run_dir, [STEP_RECORD]):
                run = RunDir.create(step.run_dir)
                _check_record(step, run)
                _train_or_prune(step, run, progress, log)
        except AdvpruneError as err:
            raise with_set_hints(err, step.configs) from err
    run = RunDir.create(step.run_dir)
    if phase == BUILD or step.evaluate is None:
        return None
    try:
        return _evaluate(step, run, progress, log)
    except AdvpruneError as err:
        raise with_set_hints(err, [step.evaluate]) from err


# Flags `advprune reproduce` has itself: a hint naming them is right as it is.
REPRODUCE_FLAGS = frozenset({"data_dir", "download"})
# A flag, and the value a hint may give it ("--scheme layerwise", "--lr 0.01").
FLAG = re.compile(r"--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)(?: ([\w./+-]+))?")


def with_set_hints(err: AdvpruneError, configs: Sequence[Config]) -> AdvpruneError:
    """`err`, raised by the part of a step that `configs` set, with each flag of `train`,
    `prune` or `eval` its message names as the `--set KEY=VALUE` that changes that setting in a
    recipe: `reproduce` has no `--batch-size`."""
    fields = {key: entry for config in configs for key, entry in config.flat_fields().items()}

    def as_set(match: re.Match[str]) -> str:
        key, value = match.group(1).replace("-", "_"), match.group(2)
        if key not in fields and f"finetune_{key}" in fields:  # a prune step's phase
            key = f"finetune_{key}"
        if key not in fields or key in REPRODUCE_FLAGS:
            return match.group(0)
        field, annotation = fields[key]
        if scalar_type(annotation)[0] is bool:
            return f"--set {key}=true" + (f" {value}" if value else "")
        if value and (value in (choices_of(field) or ()) or re.fullmatch(r"[\d.e/+-]+", value)):
            return f"--set {key}={value}"
        return f"--set {key}=VALUE" + (f" {value}" if value else "")

    message = FLAG.sub(as_set, str(err))
    if message == str(err):
        return err
    hinted = copy.copy(err)
    hinted.args = (message,)
    return hinted


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """torch's thread count set to `count` for the block (None: left as it is)."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _run_here(
    steps: Sequence[Step], slot: Slot, progress: bool, log: Callable[[str], None]
) -> list[str]:
    """One step after the other in this process, with progress bars and the log on the console."""
    warnings = []
    with _threads(slot.threads):
        for index, step in enumerate(steps, 1):
            started = time.perf_counter()
            log(f"[reproduce] step {index}/{len(steps)} {step.label}: {step.describe()}")
            warning = run_step(slot.place(step), progress=progress, log=log)
            if warning:
                warnings.append(warning)
            log(f"[reproduce] step {step.label} done in {time.perf_counter() - started:.0f}s")
    return warnings


def run_plan(
    plan: Plan,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    jobs: int | str = DEFAULT_JOBS,
    devices: Sequence[str] | None = None,
    threads: int | None = None,
) -> list[str]:
    """Run the steps of `plan`: in order in this process on one slot, else each in its own
    process as soon as the steps it needs have finished (reproduction.parallel). Returns the
    gradient-masking warnings."""
    slots = make_slots(plan.steps, jobs, devices, threads)
    if len(slots) == 1:
        return _run_here(plan.steps, slots[0], progress, log)
    log(f"[reproduce] {describe_slots(slots)}; each step's output goes to its log.txt")
    widen_to = thread_budget() if threads is None and not devices else None
    return run_parallel(plan.steps, slots, log, skip=nothing_left, widen_to=widen_to)


def nothing_left(task: Task) -> bool:
    """The task is done: its build's model (BUILD), or also its evaluation, is there as the
    plan asks. Every executor skips such a task; `advprune status` shows it as done."""
    return is_built(task.step) if task.phase == BUILD else is_finished(task.step)


class LocalExecutor(Executor):
    """This machine (`--executor local`, the default): the steps one after the other in this
    process, or on `jobs` slots / one per device at once (reproduction.parallel)."""

    name = "local"

    def __init__(
        self,
        jobs: int | str = DEFAULT_JOBS,
        devices: Sequence[str] | None = None,
        threads: int | None = None,
        progress: bool = True,
    ) -> None:
        self.jobs, self.devices, self.threads, self.progress = jobs, devices, threads, progress

    def run(self, plan: Plan, log: Callable[[str], None]) -> list[str]:
        return run_plan(
            plan,
            progress=self.progress,
            log=log,
            jobs=self.jobs,
            devices=self.devices,
            threads=self.threads,
        )


def _by_step(plan: Plan, evaluated: Sequence[Step]) -> dict[str, RunSummary]:
    """Each evaluated recipe step's run as the paper comparison reads it: over several seeds,
    the mean of its runs."""
    runs: dict[str, list[RunSummary]] = {}
    for step in evaluated:
        summary = read_run(step.run_dir, results_file(step.run_dir, step.evaluate).name)
        runs.setdefault(step.name, []).append(summary)
    return {
        name: summaries[0] if len(summaries) == 1 else aggregate(summaries, plan.root / name)
        for name, summaries in runs.items()
    }


def write_outputs(plan: Plan, warnings: Sequence[str]) -> tuple[Path | None, str | None]:
    """The report of the evaluated steps, and the paper comparison; returns (report.md, table)."""
    evaluated = [step for step in plan.steps if step.evaluate is not None]
    if not evaluated:
        return None, None
    out = plan.root / "report"
    scale_note = "" if plan.scale == 1 else f" at --scale {plan.scale:g} (a smoke run)"
    report = write_report(
        [step.run_dir for step in evaluated],
        out,
        title=f"{plan.title}{scale_note}",
        results_names={s.run_dir: results_file(s.run_dir, s.evaluate).name for s in evaluated},
    )
    if not plan.paper:
        return report, None
    runs = _by_step(plan, evaluated)
    comparisons = compare(plan.paper["rows"], runs, plan.paper["reference"])
    table = comparison_markdown(comparisons)
    notes = [
        f"# Paper vs ours: {plan.title}",
        "",
        f"Paper: {plan.paper['source']}. Ours: the runs of `advprune reproduce {plan.recipe}`"
        f"{scale_note}, read from their results.json{_seeds_note(plan)}. Each cell: ours / paper "
        "(ours − paper); accuracies and sparsities in %; '–': not measured in our run.",
    ]
    if plan.scale != 1:
        notes.append("")
        notes.append(
            f"At --scale {plan.scale:g} the runs train on a fraction of the data for a fraction "
            "of the epochs: the differences say nothing about the method."
        )
    if warnings:
        notes += ["", "Gradient-masking check failed (robust accuracies not trustworthy):", ""]
        notes += [f"- {warning}" for warning in warnings]
    atomic_write_text(out / "paper_vs_ours.md", "\n".join([*notes, "", table, ""]))
    atomic_write_text(out / "paper_vs_ours.csv", comparison_csv(comparisons))
    return report, table


def _seeds_note(plan: Plan) -> str:
    if not plan.seeds or len(plan.seeds) == 1:
        return ""
    return f" (the mean over seeds {', '.join(map(str, plan.seeds))})"


def reproduce(
    recipe: str,
    root: str | Path | None = None,
    *,
    scale: float = 1.0,
    data_dir: str | None = None,
    download: bool = False,
    overrides: Mapping[str, Any] | None = None,
    only: Sequence[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    jobs: int | str = DEFAULT_JOBS,
    devices: Sequence[str] | None = None,
    threads: int | None = None,
    seeds: Sequence[int] | None = None,
    executor: Executor | None = None,
) -> Plan:
    """Plan `recipe` (all checks first), run its steps, write ROOT/report; returns the plan.

    `jobs`, `devices` and `threads` say how many steps run at once and where
    (reproduction.parallel); `seeds` runs every step once per seed (reproduction.plan).
    `executor` runs them elsewhere (reproduction.slurm.SlurmExecutor): it returns once they are
    submitted, and a task of its own writes the report when they have finished."""
    root = Path(root) if root is not None else default_root(recipe, scale)
    plan = make_plan(
        recipe,
        root,
        scale=scale,
        data_dir=data_dir,
        download=download,
        overrides=overrides,
        only=only,
        seeds=seeds,
    )
    executor = executor or LocalExecutor(jobs, devices, threads, progress)
    started = time.perf_counter()
    log(
        f"[reproduce] {plan.title}: {len(plan.steps)} step(s) in {plan.root}"
        + ("" if scale == 1 else f", scaled by {scale:g}")
        + ("" if not plan.seeds else f", seeds {', '.join(map(str, plan.seeds))}")
    )
    warnings = executor.run(plan, log)
    if not executor.waits:
        log(f"[reproduce] watch them with `advprune status {plan.root}`")
        return plan
    log(f"[reproduce] {len(plan.steps)} step(s) done in {time.perf_counter() - started:.0f}s")
    finish(plan, warnings, log)
    return plan


def finish(plan: Plan, warnings: Sequence[str], log: Callable[[str], None] = print) -> None:
    """Write the report and the paper comparison of a finished plan, and say where they are."""
    report, table = write_outputs(plan, warnings)
    if report is not None:
        log(f"[reproduce] report: {report}")
    if table is not None:
        log(f"[reproduce] paper vs ours (ours / paper (difference)):\n{table}")
        log(f"[reproduce] written to {plan.root / 'report' / 'paper_vs_ours.md'}")
    for warning in warnings:
        log(f"[reproduce] warning: gradient-masking check failed in {warning}")


def keep_arguments(plan: Plan) -> None:
    """Write ROOT/reproduce.yaml, from which `planned_at` (`advprune status ROOT`) plans again."""
    atomic_write_text(plan.root / INVOCATION, yaml.safe_dump(plan.arguments, sort_keys=False))


def planned_at(root: str | Path) -> Plan:
    """The plan of the reproduction submitted under `root` (ROOT/reproduce.yaml)."""
    path = Path(root) / INVOCATION
    if not path.is_file():
        raise ConfigError(
            f"{root} holds no submitted reproduction ({INVOCATION} is missing); pass the "
            "--runs-dir of an `advprune reproduce --executor slurm`, or run `advprune reproduce "
            "… --status` with the command's own arguments"
        )
    return make_plan(root=Path(root), **yaml.safe_load(path.read_text(encoding="utf-8")))
