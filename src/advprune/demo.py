"""`advprune demo`: the embedded default job, end to end, on Fashion-MNIST."""

from __future__ import annotations

import time
from pathlib import Path

from advprune.evaluation import EvalConfig, evaluate_run
from advprune.recipes import load_recipe
from advprune.report import format_results
from advprune.training import TrainConfig
from advprune.training.trainer import train_or_reuse


def run_demo(root: str | Path = "runs/demo", *, progress: bool = True) -> dict:
    """PGD-AT LeNet-5-Caffe at ε = 0.1, then clean/FGSM/PGD-20/CW/AutoAttack; returns results."""
    recipe = load_recipe("demo")
    train_config = TrainConfig.from_dict(recipe["train"], source="demo recipe")
    eval_config = EvalConfig.from_dict(recipe["evaluate"])
    run_dir = Path(root) / "pgd-at"
    started = time.perf_counter()
    print(
        f"[demo] PGD-AT {train_config.model} on {train_config.dataset}, eps {train_config.eps}, "
        f"{train_config.epochs} epochs → {run_dir}"
    )
    train_or_reuse(train_config, str(run_dir), progress=progress)
    trained = time.perf_counter()
    print(
        f"[demo] training took {trained - started:.0f}s; evaluating on the full test set "
        f"(AutoAttack on the first {eval_config.autoattack_limit} test images)"
    )
    results = evaluate_run(run_dir, eval_config, progress=progress)
    print(format_results([results]))
    print(
        f"[demo] evaluation took {time.perf_counter() - trained:.0f}s, "
        f"total {time.perf_counter() - started:.0f}s; results in {run_dir / 'results.json'}"
    )
    return results
