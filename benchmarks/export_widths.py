"""How much the exported widths' rounding changes a pruned network's measured speed-up.

`advprune export` keeps each width a multiple of `round_to` where it can, padding with zeroed
units (same outputs). This script exports the same run's model at each rounding, and times every
export against the dense network with `evaluation.latency.latency_comparison`, as `advprune
export` does (interleaved pairs in one process, CPU time, each model in its faster layout). It
prints each rounding's widths and its batch-128 speed-up, and that speed-up over the first
rounding's (the reference, measured in the same run). It is the evidence for `advprune export`'s
default, which measures the roundings and keeps the fastest (`pipelines.export.fastest_export`).

    python benchmarks/export_widths.py RUN_DIR [RUN_DIR …] [--round-to 1,8,16] [--pairs 30]
                                       [--batch-size 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import torch
from torch import nn

from advprune.core.run_dir import RunDir
from advprune.evaluation.complexity import model_complexity
from advprune.evaluation.latency import latency_comparison, measured_speedup
from advprune.masks.export import export_gated
from advprune.models import create_model, input_shape
from advprune.models.serialization import ARCHITECTURE_KEYS, load_model


def widths(model: nn.Module) -> str:
    """The output widths of the conv and linear layers, e.g. "20/24/88/500/10"."""
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    return "/".join(
        str(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features) for m in layers
    )


def compare_roundings(run_dir: Path, roundings: list[int], args: argparse.Namespace) -> None:
    model, metadata = load_model(RunDir.existing(run_dir).model)
    architecture = metadata["architecture"]
    shape = input_shape(architecture)
    dense = create_model(**{key: architecture[key] for key in ARCHITECTURE_KEYS})
    dense_flops = model_complexity(dense, shape)["flops"]
    reference = None
    print(f"{run_dir}")
    for round_to in roundings:
        exported = export_gated(model, torch.zeros(1, *shape), round_to)
        comparison = latency_comparison(
            dense, exported, shape, (args.batch_size,), threads=args.threads, repeats=args.pairs
        )
        speedup = measured_speedup(comparison)[f"batch_{args.batch_size}"]
        reference = reference or speedup["median"]
        flops = dense_flops / model_complexity(exported, shape)["flops"]
        print(
            f"  round-to {round_to:3}  widths {widths(exported):22} FLOPs {flops:5.2f}x  "
            f"speed-up {speedup['median']:5.2f}x ({speedup['min']:.2f}–{speedup['max']:.2f})  "
            f"{speedup['median'] / reference:5.3f} of round-to {roundings[0]}'s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="ANP-VS or structured runs")
    parser.add_argument("--round-to", default="1,8,16", help="comma-separated roundings")
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    roundings = [int(value) for value in args.round_to.split(",")]
    print(
        f"cpu ({platform.machine()}, {torch.backends.cpu.get_cpu_capability()}), torch "
        f"{torch.__version__}, {args.threads} thread(s), batch "
        f"{args.batch_size}, {args.pairs} pairs; load average {os.getloadavg()[0]:.2f}"
    )
    for run_dir in args.run_dirs:
        compare_roundings(run_dir, roundings, args)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
