"""How far a paired latency ratio of two identical networks strays from 1.00×, by method.

Two LeNet-5-Caffe networks of the same architecture are timed against each other with
`evaluation.latency.time_interleaved`, several times over: once as the evaluation did before
(one pass per sample, wall-clock time) and once as it does now (blocks of passes of at least
`MIN_SAMPLE_MS`, CPU time on a CPU). The true ratio is 1; what each method reports beyond it is its
noise. Run it on a loaded machine (e.g. beside `advprune reproduce --jobs 2`) to see what the
suite's latency column is up against.

    python benchmarks/latency_noise.py [--trials 4] [--pairs 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

from advprune.evaluation.latency import MIN_SAMPLE_MS, time_interleaved
from advprune.models import create_model

METHODS = {  # name: (min_sample_ms, clock)
    "one pass, wall time (before)": (0.0, "wall"),
    f"{MIN_SAMPLE_MS:.0f} ms blocks, CPU time (now)": (MIN_SAMPLE_MS, "cpu"),
}


def median_ratio(batch: int, pairs: int, threads: int, min_sample_ms: float, clock: str) -> float:
    """The median per-pair ratio of two identical networks (their weights differ, their sizes
    do not), as `paired_latency` computes it."""
    networks = {}
    for seed, name in enumerate(("a", "b")):
        torch.manual_seed(seed)
        model = create_model("lenet5-caffe", 10, 1, image_size=28)
        networks[name] = model.to(memory_format=torch.channels_last)
    times = time_interleaved(
        networks, (1, 28, 28), batch, threads=threads, repeats=pairs, min_sample_ms=min_sample_ms
    )[clock]
    return statistics.median(a / b for a, b in zip(times["a"], times["b"], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cores, load "
        f"{os.getloadavg()[0]:.1f}; lenet5-caffe against itself, {args.pairs} pairs a trial"
    )
    for batch in (1, 128):
        for method, (min_sample_ms, clock) in METHODS.items():
            found = [
                median_ratio(batch, args.pairs, args.threads, min_sample_ms, clock)
                for _ in range(args.trials)
            ]
            worst = max(abs(r - 1) for r in found)
            print(
                f"batch {batch:>3}  {method:<34} ratios "
                + " ".join(f"{r:.3f}" for r in found)
                + f"   worst |ratio − 1| {worst:.3f}"
            )
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
