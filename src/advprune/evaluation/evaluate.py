"""Evaluate a model or a run directory: accuracy under each attack, size, cost and checks.

`results.json` holds {"accuracy": {"clean": .., "fgsm": .., "pgd": .., "transfer": .., ...,
"worst_case": ..}, "examples", "accuracy_interval", "attacks", "per_example", "params", "flops",
"sparsity", "vulnerability", "gradient_masking_check", "attack_failure_indicators",
"chance_check", "latency", "provenance", ...} with accuracies as fractions in [0, 1] (see
`evaluation.results` for how it is written and resumed). The evaluator is a loop over the
registry's attacks (`advprune.attacks.registry`): what an attack needs is what its spec says. A
gated (ANP-VS) model is evaluated with its deterministic gates, and with `sampled_gates` also as
the stochastic network (`evaluation.stochastic`). Every check runs after the numbers are written,
so a failed check never loses them; `evaluate_run` then raises GradientMaskingError (exit 3).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advprune.attacks import ATTACKS, CLEAN, SOURCE, AttackSpec, parse_attacks
from advprune.data import ImageDataset
from advprune.evaluation.config import EvalConfig
from advprune.evaluation.min_norm import distance_summary, distances_over, save_distances
from advprune.evaluation.plots import plot_distance_curve, plot_vulnerability
from advprune.evaluation.provenance import model_sha256
from advprune.evaluation.results import EvalOutput, ResultsStore
from advprune.evaluation.robustness import correctness
from advprune.evaluation.stochastic import sampled_gates
from advprune.evaluation.vulnerability import VulnerabilityMeter
from advprune.models.layer_names import display_names

SAMPLED = "_sampled"  # suffix of the clean accuracy of the stochastic network


@dataclass
class Evaluation:
    """What one evaluation works with: the model, its data and ε, and where results go."""

    model: nn.Module
    test: ImageDataset
    eps: float
    config: EvalConfig
    device: torch.device
    store: ResultsStore
    output: EvalOutput
    title: str
    source: nn.Module | None = None
    source_record: dict[str, Any] | None = None
    progress: bool = False
    log: Callable[[str], None] = print


@dataclass(frozen=True)
class AttackJob:
    """One accuracy to measure: under `spec` (None: clean), on the deterministic or the stochastic
    network, stored under `key`, on the first `examples` test examples (None: the spec's limit)."""

    key: str
    spec: AttackSpec | None
    stochastic: bool = False
    examples: int | None = None


def attack_jobs(config: EvalConfig) -> list[AttackJob]:
    """The attacks of `config` in order, clean first; those that need a source model whenever
    one is given (transfer); with sampled gates each attack's stochastic counterpart (the
    registry's `sampled`) and the stochastic network's clean accuracy."""
    names = [name for name in parse_attacks(config.attacks) if name != CLEAN]
    if config.transfer_from:
        names += [name for name, spec in ATTACKS.items() if SOURCE in spec.needs]
    if config.sampled_gates:
        names += [ATTACKS[name].sampled for name in names if ATTACKS[name].sampled]
    jobs = [AttackJob(CLEAN, None)]
    if config.sampled_gates:
        jobs.append(AttackJob(CLEAN + SAMPLED, None, stochastic=True))
    for name in dict.fromkeys(names):  # what each needs was checked by EvalConfig.validate
        jobs.append(AttackJob(name, ATTACKS[name], stochastic=ATTACKS[name].stochastic))
    return jobs


def job_settings(evaluation: Evaluation, job: AttackJob, examples: int) -> dict[str, Any]:
    """What `job` computes with, as results.json records it and a rerun compares."""
    settings: dict[str, Any] = {
        "model_sha256": evaluation.store.model_sha256,
        "network": "sampled gates" if job.stochastic else "deterministic",
        "examples": examples,
    }
    config = evaluation.config
    if job.stochastic:  # the gate noise is drawn from the seed
        settings["seed"] = config.seed
    if job.spec is None:
        return settings
    settings.update(job.spec.record(evaluation.eps, job_options(job.spec, config)))
    settings.update(seed=config.seed, batch_size=config.batch_size)
    if SOURCE in job.spec.needs:
        settings.update(evaluation.source_record or {})
    return settings


def job_options(spec: AttackSpec, config: EvalConfig) -> dict[str, Any]:
    """The spec's options taken from evaluation settings (e.g. steps from pgd_steps)."""
    return {option: getattr(config, name) for option, name in spec.settings.items()}


def job_subset(evaluation: Evaluation, job: AttackJob) -> ImageDataset:
    limit = job.examples
    if limit is None and job.spec is not None and job.spec.limit:
        limit = getattr(evaluation.config, job.spec.limit)
    return evaluation.test.take(limit)


@contextlib.contextmanager
def network(evaluation: Evaluation, job: AttackJob) -> Iterator[nn.Module]:
    """The model in eval mode, or its stochastic network (gate noise seeded by the seed)."""
    evaluation.model.eval()
    if not job.stochastic:
        yield evaluation.model
        return
    with sampled_gates(evaluation.model, evaluation.config.seed) as stochastic:
        yield stochastic


def run_job(evaluation: Evaluation, job: AttackJob) -> float:
    """Measure `job` unless results.json holds it for this model and these settings; returns the
    accuracy. The results file is written as soon as it is measured."""
    subset = job_subset(evaluation, job)
    settings = job_settings(evaluation, job, len(subset))
    store, started = evaluation.store, time.perf_counter()
    if store.finished(job.key, settings):
        evaluation.log(f"  {job.key:<16} {store.data['accuracy'][job.key]:.4f}  kept from before")
        return store.data["accuracy"][job.key]
    with network(evaluation, job) as model:
        correct = measure(evaluation, job, model, subset, settings)
    accuracy = store.record_attack(job.key, correct, settings)
    low, high = store.data["accuracy_interval"][job.key]
    evaluation.log(
        f"  {job.key:<16} {accuracy:.4f} [{low:.3f}, {high:.3f}] on {len(subset)} examples "
        f"({time.perf_counter() - started:.0f}s)"
    )
    return accuracy


def measure(
    evaluation: Evaluation,
    job: AttackJob,
    model: nn.Module,
    subset: ImageDataset,
    settings: dict[str, Any],
) -> torch.Tensor:
    """Per-example correctness under the job's attack, as its spec says to run it."""
    spec, config = job.spec, evaluation.config
    common = {"device": evaluation.device, "progress": evaluation.progress, "desc": job.key}
    if spec is None:
        return correctness(model, subset, None, batch_size=config.batch_size, **common)
    if spec.distances is not None:
        return minimum_norm(evaluation, job, model, subset, settings)
    context: dict[str, Any] = {}
    if SOURCE in spec.needs:
        context[SOURCE] = evaluation.source
    if spec.state_file:
        context["state_path"] = evaluation.output.file(job.key, "state")
    if spec.whole_subset:
        context["batch_size"] = config.batch_size
    attack = partial(
        spec.run, eps=evaluation.eps, seed=config.seed, **job_options(spec, config), **context
    )
    # A whole-subset attack (AutoAttack) runs in one call so that its state file can resume it.
    batch_size = len(subset) if spec.whole_subset else config.batch_size
    meter = VulnerabilityMeter(model) if spec.vulnerability and not job.stochastic else None
    correct = correctness(
        model, subset, attack, batch_size=batch_size, observe=meter and meter.update, **common
    )
    if meter is not None:
        record_vulnerability(evaluation, job, meter)
    return correct


def minimum_norm(
    evaluation: Evaluation,
    job: AttackJob,
    model: nn.Module,
    subset: ImageDataset,
    settings: dict[str, Any],
) -> torch.Tensor:
    """A minimum-norm attack: distances saved beside results.json, their summary and security
    curve under "min_norm", the curve drawn; correct at ε where the distance exceeds ε."""
    spec, config, output = job.spec, evaluation.config, evaluation.output
    distances = distances_over(
        model,
        subset,
        spec.distances,
        job_options(spec, config),
        device=evaluation.device,
        batch_size=config.batch_size,
        progress=evaluation.progress,
    )
    summary = {
        "attack": job.key,
        "settings": settings,
        **distance_summary(distances, evaluation.eps),
    }
    path, plot = (
        output.file(f"{job.key}_distances", "safetensors"),
        output.file(f"{job.key}_security_curve", "png"),
    )
    if path is not None and plot is not None:
        save_distances(path, distances, settings)
        chance = 1 / subset.num_classes
        plot_distance_curve(distances, evaluation.eps, evaluation.title, plot, chance=chance)
        summary.update(file=path.name, plot=plot.name)
    evaluation.store.record("min_norm", summary)
    return distances > evaluation.eps


def record_vulnerability(evaluation: Evaluation, job: AttackJob, meter: VulnerabilityMeter) -> None:
    result = meter.result()
    settings = {"model_sha256": evaluation.store.model_sha256, "attack": job.key}
    evaluation.store.record("vulnerability", {**result, "attack": job.key, "settings": settings})
    path = evaluation.output.file("vulnerability", "png")
    if path is not None and result["per_layer"]:
        plot_vulnerability(
            result["per_layer"],
            evaluation.title,
            path,
            names=display_names(evaluation.model),
            examples=meter.examples,
        )


def evaluate_model(
    model: nn.Module,
    test: ImageDataset,
    eps: float,
    config: EvalConfig,
    *,
    device: torch.device,
    results_path: str | Path | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Accuracy of any `model` under each attack of `config` (eval mode: deterministic, frozen
    BN), kept in `results_path` (resumed from it) or in memory; returns the results."""
    path = Path(results_path) if results_path is not None else None
    output = EvalOutput(path.parent if path else None)
    store = ResultsStore(path, model_sha256(model), log)
    evaluation = Evaluation(
        model,
        test,
        eps,
        config.validate(),
        device,
        store,
        output,
        "model",
        progress=progress,
        log=log,
    )
    run_attacks(evaluation)
    return store.data


def run_attacks(evaluation: Evaluation) -> None:
    """Every job of the configuration in order, then the worst case over the deterministic
    network's attacks."""
    evaluation.store.data["eps"] = evaluation.eps
    for job in attack_jobs(evaluation.config):
        run_job(evaluation, job)
    evaluation.store.update_worst_case()
