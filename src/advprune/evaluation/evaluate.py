"""Evaluate a model or a run directory: accuracy under each attack, size, and sanity checks.

`results.json` holds {"accuracy": {"clean": .., "fgsm": .., "pgd": .., "transfer": .., ...},
"params", "flops", "sparsity", "vulnerability": {"overall": .., "per_layer": {..}},
"gradient_masking_check": {"security_curve": [...], ...}, ...} with accuracies as fractions in
[0, 1]; the latent vulnerability is measured on the PGD examples. A gated (ANP-VS) model is
evaluated with its deterministic gates and also gets `unit_sparsity` and the sizes of its gated
and exported networks. It is written before the gradient-masking verdict, so a failed check never
loses the numbers; the check then fails loudly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advprune.attacks import ATTACKS, CLEAN, parse_attacks
from advprune.core.device import resolve_device
from advprune.core.errors import CheckpointError
from advprune.core.io import atomic_write_json, read_json
from advprune.core.run_dir import RunDir
from advprune.data import ImageDataset, get_spec, load_dataset
from advprune.evaluation.complexity import gated_complexity, model_complexity
from advprune.evaluation.config import EvalConfig
from advprune.evaluation.latency import model_latency
from advprune.evaluation.plots import plot_security_curve, plot_vulnerability
from advprune.evaluation.robustness import accuracy
from advprune.evaluation.sanity import (
    curve_eps_values,
    gradient_masking_problems,
    raise_on_gradient_masking,
    security_curve,
)
from advprune.evaluation.transfer import (
    load_source,
    transfer_accuracy,
    transfer_problems,
    transfer_settings,
)
from advprune.evaluation.vulnerability import VulnerabilityMeter
from advprune.masks.gated import find_gates
from advprune.models import input_shape
from advprune.models.serialization import load_model

AUTOATTACK_TOLERANCE = 0.005  # AutoAttack may beat PGD; exceeding it by more means a broken attack


STEPPED_LOSSES = {"pgd": "cross-entropy", "cw": "the CW margin loss"}


def attack_options(name: str, config: EvalConfig) -> dict[str, Any]:
    """Overrides of the registry's protocol settings: the number of PGD steps."""
    steps = {"pgd": config.pgd_steps, "cw": config.cw_steps}.get(name)
    return {} if steps is None else {"steps": steps}


def attack_settings(name: str, eps: float, config: EvalConfig) -> dict[str, Any]:
    """What results.json records about an attack, so a table can state it."""
    settings: dict[str, Any] = {
        "eps": eps,
        "norm": "linf",
        "description": ATTACKS[name].description,
    }
    steps = attack_options(name, config).get("steps")
    if steps is not None:
        settings.update(steps=steps, step_size=2.5 * eps / steps, random_start=True)
        settings["description"] = (
            f"PGD-{steps} on {STEPPED_LOSSES[name]}, uniform random start, step 2.5·eps/{steps}"
        )
    return settings


def evaluate_model(
    model: nn.Module,
    test: ImageDataset,
    eps: float,
    config: EvalConfig,
    *,
    device: torch.device,
    autoattack_state: Path | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Accuracy under each attack of `config` (model in eval mode: deterministic, frozen BN)."""
    model.eval()
    results: dict[str, Any] = {"eps": eps, "accuracy": {}, "examples": {}, "attacks": {}}
    for name in parse_attacks(config.attacks):
        started = time.perf_counter()
        subset = test
        if name == CLEAN:
            attack = None
        elif name == "autoattack":
            subset = test.take(min(config.autoattack_limit or len(test), len(test)))
            attack = partial(
                ATTACKS[name].run,
                eps=eps,
                seed=config.seed,
                batch_size=config.batch_size,
                state_path=autoattack_state,
            )
        else:
            attack = partial(
                ATTACKS[name].run, eps=eps, seed=config.seed, **attack_options(name, config)
            )
        if name != CLEAN:
            results["attacks"][name] = attack_settings(name, eps, config)
        # AutoAttack runs on the whole subset in one call so that its state file can resume it.
        batch_size = len(subset) if name == "autoattack" else config.batch_size
        meter = VulnerabilityMeter(model) if name == "pgd" else None
        results["accuracy"][name] = accuracy(
            model,
            subset,
            attack,
            device=device,
            batch_size=batch_size,
            progress=progress,
            desc=name,
            observe=meter.update if meter else None,
        )
        if meter is not None:
            results["vulnerability"] = {**meter.result(), "attack": name}
        results["examples"][name] = len(subset)
        log(
            f"  {name:<11} {results['accuracy'][name]:.4f}  on {len(subset)} examples "
            f"({time.perf_counter() - started:.0f}s)"
        )
    return results


def autoattack_problems(
    model: nn.Module, test: ImageDataset, results: dict, config: EvalConfig, device: torch.device
) -> list[str]:
    """AutoAttack ≤ PGD on the same examples, or one of the two attacks is broken."""
    if "autoattack" not in results["accuracy"]:
        return []
    subset = test.take(results["examples"]["autoattack"])
    pgd_accuracy = accuracy(
        model,
        subset,
        partial(ATTACKS["pgd"].run, eps=results["eps"], seed=config.seed, steps=config.pgd_steps),
        device=device,
        batch_size=config.batch_size,
    )
    results["accuracy"]["pgd_on_autoattack_examples"] = pgd_accuracy
    if results["accuracy"]["autoattack"] > pgd_accuracy + AUTOATTACK_TOLERANCE:
        return [
            f"AutoAttack accuracy {results['accuracy']['autoattack']:.3f} exceeds PGD's "
            f"{pgd_accuracy:.3f} on the same examples"
        ]
    return []


def curve_check(
    model: nn.Module,
    test: ImageDataset,
    eps: float,
    config: EvalConfig,
    *,
    device: torch.device,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The security curve on the first `sanity_examples` test examples and what is wrong with it.

    With a requested `eps_curve`, AutoAttack joins PGD at each ε on the first
    `curve_autoattack_examples`; the default curve is PGD only, a quick check on every evaluation.
    """
    examples = test.take(min(config.sanity_examples, len(test)))
    autoattack_examples = (
        min(config.curve_autoattack_examples, len(examples)) if config.eps_curve else 0
    )
    started = time.perf_counter()
    curve = security_curve(
        model,
        examples,
        curve_eps_values(config.eps_curve, eps),
        steps=config.pgd_steps,
        device=device,
        batch_size=config.batch_size,
        autoattack_examples=autoattack_examples,
        seed=config.seed,
    )
    attacks = f"PGD-{config.pgd_steps}" + (
        f" / AutoAttack on the first {autoattack_examples}" if autoattack_examples else ""
    )
    points = ", ".join(
        f"{p['eps']:g}: {p['accuracy']:.3f}"
        + (f" / {p['autoattack']:.3f}" if "autoattack" in p else "")
        for p in curve
    )
    log(
        f"  security curve, {attacks} of {len(examples)} examples "
        f"({time.perf_counter() - started:.0f}s): {points}"
    )
    return {
        "security_curve": curve,
        "examples": len(examples),
        "autoattack_examples": autoattack_examples,
        "pgd_steps": config.pgd_steps,
        "problems": gradient_masking_problems(curve),
    }


def evaluate_run(
    run_dir: str | Path,
    config: EvalConfig,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate `RUN_DIR/model.safetensors` and merge the results into `RUN_DIR/results.json`."""
    config.validate()
    run = RunDir.existing(run_dir)
    device = resolve_device(config.device)
    model, metadata = load_model(run.model, device=device)
    architecture = metadata["architecture"]
    trained = metadata.get("config", {})
    dataset = trained.get("dataset")
    if dataset is None:
        raise CheckpointError(
            f"{run.model} does not name its dataset; it was not written by `advprune train`"
        )
    spec = get_spec(dataset)
    eps = config.eps if config.eps is not None else metadata.get("eps", spec.default_eps)
    test = load_dataset(
        dataset,
        "test",
        data_dir=config.data_dir or trained.get("data_dir"),
        download=config.download,
        limit=config.limit_test,
    )
    source, source_metadata = None, {}
    if config.transfer_from:  # checked before any attack runs
        source, source_metadata = load_source(config.transfer_from, run, metadata, device)
    log(f"evaluating {run.path} ({architecture['name']}, {dataset}, eps {eps:g}) on {device}")

    results = evaluate_model(
        model,
        test,
        eps,
        config,
        device=device,
        progress=progress,
        log=log,
        autoattack_state=run.path / "autoattack.state",
    )
    if source is not None:
        started = time.perf_counter()
        results["accuracy"]["transfer"] = transfer_accuracy(
            model,
            source,
            test,
            eps,
            seed=config.seed,
            device=device,
            batch_size=config.batch_size,
            progress=progress,
        )
        results["examples"]["transfer"] = len(test)
        results["attacks"]["transfer"] = transfer_settings(
            config.transfer_from, source_metadata, eps
        )
        log(
            f"  {'transfer':<11} {results['accuracy']['transfer']:.4f}  on {len(test)} examples "
            f"({time.perf_counter() - started:.0f}s)"
        )
    problems = autoattack_problems(model, test, results, config, device)
    problems += transfer_problems(results["accuracy"])
    if config.sanity_examples:
        check = curve_check(model, test, eps, config, device=device, log=log)
        problems += check["problems"]
        check.update(problems=problems, passed=not problems)
        plot_security_curve(
            check["security_curve"],
            eps,
            f"{architecture['name']} on {dataset}",
            run.path / "security_curve.png",
        )
        results["gradient_masking_check"] = check
    shape = input_shape(architecture)
    results.update(model_complexity(model, shape))
    previous = read_json(run.results, "results") if run.results.exists() else {}
    if config.latency_repeats and "latency" not in previous:  # an exported run has its own
        results["latency"] = model_latency(model, shape, repeats=config.latency_repeats)
    if find_gates(model):  # the exported network's sizes, as `advprune export` wrote it
        exported_file = run.exported / "model.safetensors"
        exported = load_model(exported_file, device=device)[0] if exported_file.exists() else None
        results.update(gated_complexity(model, shape, exported))
    if "vulnerability" in results:
        plot_vulnerability(
            results["vulnerability"]["per_layer"],
            f"{architecture['name']} on {dataset}: latent vulnerability",
            run.path / "vulnerability.png",
        )
    results.update(
        run=str(run.path),
        model=architecture["name"],
        dataset=dataset,
        method=metadata.get("method", {}).get("name", trained.get("objective")),
    )
    merged = previous
    merged.update(
        {k: v for k, v in results.items() if k not in ("accuracy", "examples", "attacks")}
    )
    for key in ("accuracy", "examples", "attacks"):
        merged[key] = {**merged.get(key, {}), **results[key]}
    atomic_write_json(run.results, merged)
    raise_on_gradient_masking(problems, str(run.path))
    return merged
