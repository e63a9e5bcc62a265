"""Attacking a finished run in NCHW against channels_last, the layout `advprune eval` now uses
for a run that trained in it (`models.in_trained_layout`): PGD-20 over the first `--images` test
images and AutoAttack standard over the first `--autoattack-images`, as an evaluation batches
them (500). CPU seconds of this process, the two layouts taking turns `--repeats` times;
medians, their ratio, and on how many examples the two layouts' verdicts differ (float rounding).

    python benchmarks/eval_layout.py [--run runs/demo/pgd-at] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from advprune.attacks import pgd
from advprune.attacks.autoattack import autoattack
from advprune.core.errors import CheckpointError
from advprune.data.registry import load_dataset
from advprune.evaluation.latency import LAYOUTS
from advprune.evaluation.robustness import correctness
from advprune.models.serialization import load_model


def timed(run: Callable[[], Tensor]) -> tuple[float, Tensor]:
    start = time.process_time()
    result = run()
    return time.process_time() - start, result


def compare(name: str, models: dict[str, nn.Module], run: Callable, repeats: int) -> None:
    """`run(model)` in each layout, in turns; median CPU seconds and the ratio."""
    times: dict[str, list[float]] = {layout: [] for layout in models}
    results: dict[str, Tensor] = {}
    for _ in range(repeats):
        for layout, model in models.items():
            torch.manual_seed(0)  # the same random starts in both layouts
            seconds, results[layout] = timed(partial(run, model))
            times[layout].append(seconds)
    nchw, last = (statistics.median(times[layout]) for layout in LAYOUTS)
    differ = int((results["nchw"] != results["channels_last"]).sum())
    accuracy = results["channels_last"].float().mean().item()
    print(
        f"  {name:<28} nchw {nchw:7.2f} s   channels_last {last:7.2f} s   {nchw / last:5.2f}x"
        f"   accuracy {100 * accuracy:.2f} %, the layouts differ on {differ} examples"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/demo/pgd-at", help="a finished run (make demo)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--autoattack-images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, metadata = load_model(f"{args.run}/model.safetensors")
    except CheckpointError as error:
        sys.exit(f"{error} (`make demo` makes the default run; or pass --run RUN_DIR)")
    model.eval().requires_grad_(False)
    eps = metadata["eps"]
    test = load_dataset(metadata["config"]["dataset"], "test", limit=args.images)
    models = {
        layout: copy.deepcopy(model).to(memory_format=form) for layout, form in LAYOUTS.items()
    }
    print(
        f"{metadata['architecture']['name']} from {args.run}, eps {eps:g}, torch "
        f"{torch.__version__}, threads {torch.get_num_threads()}; median of {args.repeats}, CPU s"
    )
    attack = partial(pgd, eps=eps, steps=20)
    attacked = partial(correctness, dataset=test, attack=attack)
    compare(f"PGD-20, {len(test)} images", models, attacked, args.repeats)
    few = test.take(args.autoattack_images)
    standard = partial(correctness, dataset=few, attack=partial(autoattack, eps=eps))
    compare(f"AutoAttack, {len(few)} images", models, standard, args.repeats)


if __name__ == "__main__":
    main()
