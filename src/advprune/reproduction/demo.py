"""`advprune demo`: the embedded default job, end to end, on Fashion-MNIST (recipes/demo.yaml)."""

from __future__ import annotations

import time
from pathlib import Path

from advprune.core.io import read_json
from advprune.report import format_results
from advprune.reproduction import reproduce
from advprune.reproduction.claims import (
    Results,
    above_chance,
    alive,
    at_least,
    fewer_flops,
    less_memory,
    speedup,
    units_removed,
    verdicts,
    within,
)
from advprune.reproduction.plan import Plan, Step

# Each paper's own claims, at the demo's scale. ANP-VS (Madaan et al. 2020, Table 1, MNIST
# LeNet-5-Caffe): most units removed, robustness kept, ×10.57 fewer FLOPs and 6.81 % of the memory.
# MAD (Lee et al. 2022): 90 % of the weights gone with the dense model's robustness, above
# layer-wise magnitude pruning (its LWM baseline). HARP (Zhao & Wressnegger 2023): alive at 99 %,
# and above HYDRA (Sehwag et al. 2020) there, as in the adversarial-pruning benchmark.
CLAIMS = [
    units_removed("anpvs", 0.70, paper=0.8416),
    within("anpvs", "pgd-at", "pgd", 1.0),
    fewer_flops("anpvs", paper=10.57),
    less_memory("anpvs", paper=0.0681),
    speedup("anpvs", [1, 128]),
    within("mad-90", "pgd-at-bn", "pgd", 2.0),
    at_least("mad-90", "magnitude-90", "pgd"),
    above_chance("hydra-99", "pgd"),
    above_chance("harp-99", "pgd"),
    at_least("harp-99", "hydra-99", "pgd"),
]

# The adversarial-pruning benchmark's figures (Piras et al. 2024; CIFAR-10, clean / AutoAttack %,
# VGG16 and ResNet-18, 100 fine-tuning epochs for HYDRA and HARP, 60 for MAD), beside a demo row
# that ends at chance, so that a reader sees what the method does where its paper ran it.
BENCHMARK = {
    ("hydra", 0.9): "78.31/43.81 (VGG16), 76.74/43.34 (ResNet-18)",
    ("hydra", 0.99): "70.59/35.56 (VGG16), 72.21/38.80 (ResNet-18)",
    ("harp", 0.9): "80.70/42.83 (VGG16), 83.38/45.40 (ResNet-18)",
    ("harp", 0.99): "79.42/42.02 (VGG16), 83.11/45.50 (ResNet-18)",
    ("mad", 0.9): "72.09/39.80 (VGG16), 73.67/41.10 (ResNet-18)",
    ("mad", 0.99): "43.35/25.90 (VGG16), 58.90/29.26 (ResNet-18)",
}


def run_demo(root: str | Path = "runs/demo", *, progress: bool = True) -> list[dict]:
    """Dense PGD-AT, then the pruning methods from it, evaluated alike; returns each row's run."""
    started = time.perf_counter()
    plan = reproduce("demo", root, progress=progress)
    results = [read_json(step.run_dir / "results.json", "results file") for step in plan.steps]
    print(format_results(results))
    by_name = {step.name: result for step, result in zip(plan.steps, results, strict=True)}
    print("each paper's claims, at the demo's scale:")
    print("\n".join(verdicts(CLAIMS, by_name)))
    print("\n".join(chance_notes(plan.steps, by_name)))
    print(
        f"[demo] total {time.perf_counter() - started:.0f}s; report in "
        f"{Path(root) / 'report' / 'report.md'} ({subsets(plan)})"
    )
    return results


def chance_notes(steps: list[Step], results: Results) -> list[str]:
    """A line for each pruned row at chance: what the benchmark measured for its method at that
    sparsity where the paper's budget was spent, and what this row was given."""
    notes = []
    for step in steps:
        key = (step.method, step.setting("sparsity"))
        result = results[step.name]
        if key not in BENCHMARK or alive(result, "pgd"):
            continue
        weights = result["nonzero_params"]
        notes.append(
            f"  {step.name} is at chance here ({100 * result['accuracy']['pgd']:.1f} % PGD-20, "
            f"{weights:,} weights left after {step.setting('finetune_epochs')} fine-tuning "
            f"epochs of {step.setting('limit_train'):,} images); the benchmark's {step.method} at "
            f"{key[1]:.0%} keeps {BENCHMARK[key]} clean/AutoAttack % on CIFAR-10"
        )
    return notes


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
