"""`advprune demo`: the embedded default job, end to end, on Fashion-MNIST (recipes/demo.yaml)."""

from __future__ import annotations

import time
from pathlib import Path

from advprune.core.io import read_json
from advprune.report import format_results
from advprune.reproduction import reproduce
from advprune.reproduction.claims import same_order, speedup, units_removed, verdicts, within
from advprune.reproduction.plan import Plan

# What each method claims, on the demo's own settings (issue thresholds: ANP-VS's paper claims
# near-dense robustness at a fraction of the units and time; MAD's, 90 % at the dense model's).
CLAIMS = [
    units_removed("anpvs", 0.70),
    within("anpvs", "pgd-at", "pgd", 1.0),
    speedup("anpvs", 128, 1.5),
    within("mad-90", "pgd-at", "pgd", 2.0),
    within("mad-obd-90", "pgd-at", "pgd", 2.0),
    same_order(["magnitude-99", "hydra-99", "mad-99"], ["pgd", "autoattack"]),
]


def run_demo(root: str | Path = "runs/demo", *, progress: bool = True) -> list[dict]:
    """Dense PGD-AT, then the pruning methods from it, evaluated alike; returns each row's run."""
    started = time.perf_counter()
    plan = reproduce("demo", root, progress=progress)
    results = [read_json(step.run_dir / "results.json", "results file") for step in plan.steps]
    print(format_results(results))
    print("claims, on the demo's settings (a row at chance claims nothing):")
    print(
        "\n".join(verdicts(CLAIMS, {s.name: r for s, r in zip(plan.steps, results, strict=True)}))
    )
    print(
        f"[demo] total {time.perf_counter() - started:.0f}s; report in "
        f"{Path(root) / 'report' / 'report.md'} ({subsets(plan)})"
    )
    return results


def subsets(plan: Plan) -> str:
    """What the rows were evaluated on, from the recipe: "every row on the first 1,000 test
    images; AutoAttack on the first 32 for pgd-at, mad-99", and which rows' latency was not
    timed."""
    evaluated = [step for step in plan.steps if step.evaluate is not None]
    tests = {_first(step.evaluate.limit_test) for step in evaluated}
    with_aa = [s for s in evaluated if "autoattack" in s.evaluate.attacks.split(",")]
    text = f"every row on {' or '.join(sorted(tests))} test images"
    if with_aa:
        names = ", ".join(step.label for step in with_aa)
        limits = {_first(step.evaluate.autoattack_limit) for step in with_aa}
        text += f"; AutoAttack on {' or '.join(sorted(limits))} for {names}"
    untimed = [step for step in evaluated if not step.evaluate.latency_repeats]
    if len(untimed) == len(evaluated):
        text += "; no row's latency timed (an exported network's speed-up is timed by its export)"
    elif untimed:
        text += f"; latency not timed for {', '.join(step.label for step in untimed)}"
    return text


def _first(limit: int | None) -> str:
    return "all" if limit is None else f"the first {limit:,}"
