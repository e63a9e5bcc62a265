"""The checks an evaluation runs after its attacks, each written to results.json with its verdict.

- gradient_masking_check: the security curve falls with ε and reaches ≈ 0 at ε = 0.5
  (`sanity`), AutoAttack ≤ PGD on the same examples, black-box transfer ≥ white-box PGD;
- attack_failure_indicators: the six indicators of Pintor et al. (2022) (`indicators`);
- chance_check: a model at chance or with a layer emptied (`sanity.chance_check`).

Each returns the problems found; `evaluate_run` raises on them after everything is written.
"""

from __future__ import annotations

import time
from typing import Any

from advprune.attacks import ATTACKS
from advprune.data import BatchLoader
from advprune.evaluation.evaluate import AttackJob, Evaluation, run_job
from advprune.evaluation.indicators import attack_failure_indicators
from advprune.evaluation.plots import plot_security_curve
from advprune.evaluation.sanity import (
    chance_check,
    curve_eps_values,
    gradient_masking_problems,
    security_curve,
)
from advprune.evaluation.transfer import transfer_problems

AUTOATTACK_TOLERANCE = 0.005  # AutoAttack may beat PGD; exceeding it by more means a broken attack
PGD_ON_AUTOATTACK_EXAMPLES = "pgd_on_autoattack_examples"


def autoattack_problems(evaluation: Evaluation) -> list[str]:
    """AutoAttack ≤ PGD on the same examples, or one of the two attacks is broken."""
    accuracy = evaluation.store.data.get("accuracy", {})
    if "autoattack" not in accuracy:
        return []
    examples = evaluation.store.data["examples"]["autoattack"]
    job = AttackJob(PGD_ON_AUTOATTACK_EXAMPLES, ATTACKS["pgd"], examples=examples)
    pgd_accuracy = run_job(evaluation, job)
    if accuracy["autoattack"] > pgd_accuracy + AUTOATTACK_TOLERANCE:
        return [
            f"AutoAttack accuracy {accuracy['autoattack']:.3f} exceeds PGD's "
            f"{pgd_accuracy:.3f} on the same examples"
        ]
    return []


def curve_settings(evaluation: Evaluation) -> dict[str, Any]:
    config = evaluation.config
    examples = min(config.sanity_examples, len(evaluation.test))
    return {
        "model_sha256": evaluation.store.model_sha256,
        "examples": examples,
        "autoattack_examples": (
            min(config.curve_autoattack_examples, examples) if config.eps_curve else 0
        ),
        "pgd_steps": config.pgd_steps,
        "eps_values": curve_eps_values(config.eps_curve, evaluation.eps),
        "seed": config.seed,
        "batch_size": config.batch_size,
    }


def curve_check(evaluation: Evaluation, other_problems: list[str]) -> list[str]:
    """The security curve on the first `sanity_examples` test examples (kept from an earlier run
    with the same settings), its problems and `other_problems` recorded as the
    gradient-masking check; returns all of them.

    With a requested `eps_curve`, AutoAttack joins PGD at each ε on the first
    `curve_autoattack_examples`; the default curve is PGD only, a quick check on every evaluation.
    """
    settings = curve_settings(evaluation)
    stored = evaluation.store.section("gradient_masking_check", settings)
    if stored is not None:
        curve = stored["security_curve"]
        evaluation.log("  security curve kept from before")
    else:
        curve = measure_curve(evaluation, settings)
    problems = gradient_masking_problems(curve) + other_problems
    check = {
        "security_curve": curve,
        "examples": settings["examples"],
        "autoattack_examples": settings["autoattack_examples"],
        "pgd_steps": settings["pgd_steps"],
        "problems": problems,
        "passed": not problems,
        "settings": settings,
    }
    evaluation.store.record("gradient_masking_check", check)
    path = evaluation.output.file("security_curve", "png")
    if path is not None:
        plot_security_curve(
            curve,
            evaluation.eps,
            evaluation.title,
            path,
            examples=settings["examples"],
            autoattack_examples=settings["autoattack_examples"],
            pgd_steps=settings["pgd_steps"],
            chance=1 / evaluation.test.num_classes,
        )
    return problems


def measure_curve(evaluation: Evaluation, settings: dict[str, Any]) -> list[dict[str, float]]:
    started = time.perf_counter()
    evaluation.model.eval()
    curve = security_curve(
        evaluation.model,
        evaluation.test.take(settings["examples"]),
        settings["eps_values"],
        steps=settings["pgd_steps"],
        device=evaluation.device,
        batch_size=settings["batch_size"],
        autoattack_examples=settings["autoattack_examples"],
        seed=settings["seed"],
    )
    attacks = f"PGD-{settings['pgd_steps']}" + (
        f" / AutoAttack on the first {settings['autoattack_examples']}"
        if settings["autoattack_examples"]
        else ""
    )
    points = ", ".join(
        f"{p['eps']:g}: {p['accuracy']:.3f}"
        + (f" / {p['autoattack']:.3f}" if "autoattack" in p else "")
        for p in curve
    )
    evaluation.log(
        f"  security curve, {attacks} of {settings['examples']} examples "
        f"({time.perf_counter() - started:.0f}s): {points}"
    )
    return curve


def indicator_check(evaluation: Evaluation) -> list[str]:
    """The attack-failure indicators on the first `indicator_examples` test examples, with the
    evaluation's PGD and, as surrogate, the transfer source if there is one."""
    config = evaluation.config
    subset = evaluation.test.take(min(config.indicator_examples, len(evaluation.test)))
    settings = {
        "model_sha256": evaluation.store.model_sha256,
        "examples": len(subset),
        "eps": evaluation.eps,
        "pgd_steps": config.pgd_steps,
        "seed": config.seed,
        "surrogate_sha256": (evaluation.source_record or {}).get("source_sha256"),
    }
    result = evaluation.store.section("attack_failure_indicators", settings)
    if result is None:
        started = time.perf_counter()
        evaluation.model.eval()
        loader = BatchLoader(
            subset, None, len(subset), shuffle=False, augment=False, device=evaluation.device
        )
        x, y = next(iter(loader.epoch(0)))
        result = attack_failure_indicators(
            evaluation.model,
            x,
            y,
            evaluation.eps,
            steps=config.pgd_steps,
            seed=config.seed,
            surrogate=evaluation.source,
            batch_size=config.batch_size,
        )
        result["settings"] = settings
        evaluation.store.record("attack_failure_indicators", result)
        evaluation.log(
            f"  attack-failure indicators on {len(subset)} examples "
            f"({time.perf_counter() - started:.0f}s): "
            + ("passed" if result["passed"] else "FAILED")
        )
    else:
        evaluation.log("  attack-failure indicators kept from before")
    return [
        f"attack-failure indicator {name.replace('_', ' ')}: {entry['share']:.3f} > "
        f"{entry['limit']:g} ({entry['description']})"
        for name, entry in result["indicators"].items()
        if entry["passed"] is False
    ]


def run_checks(evaluation: Evaluation) -> list[str]:
    """Every check of the configuration; the problems found (empty: all passed)."""
    config = evaluation.config
    problems = autoattack_problems(evaluation)
    problems += transfer_problems(evaluation.store.data.get("accuracy", {}))
    if config.sanity_examples:
        problems = curve_check(evaluation, problems)
    if config.indicator_examples:
        problems += indicator_check(evaluation)
    chance = chance_check(
        evaluation.store.data.get("accuracy", {}).get("clean"),
        evaluation.test.num_classes,
        evaluation.model,
    )
    evaluation.store.record("chance_check", chance)
    return problems + chance["problems"]
