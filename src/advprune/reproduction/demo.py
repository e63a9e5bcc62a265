"""`advprune demo`: the embedded default job, end to end, on Fashion-MNIST (recipes/demo.yaml)."""

from __future__ import annotations

import time
from pathlib import Path

from advprune.core.io import read_json
from advprune.report import format_results
from advprune.reproduction import reproduce


def run_demo(root: str | Path = "runs/demo", *, progress: bool = True) -> list[dict]:
    """Dense PGD-AT, then the pruning methods from it, evaluated alike; returns each row's run."""
    started = time.perf_counter()
    plan = reproduce("demo", root, progress=progress)
    results = [read_json(step.run_dir / "results.json", "results file") for step in plan.steps]
    print(format_results(results))
    print(
        f"[demo] total {time.perf_counter() - started:.0f}s; report in "
        f"{Path(root) / 'report' / 'report.md'} (AutoAttack on the first 64 test images, "
        "every other figure on the first 2,000)"
    )
    return results
