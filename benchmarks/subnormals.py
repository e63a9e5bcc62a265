"""ANP-VS's first training steps with subnormal floats computed, then flushed to zero.

ANP-VS's relaxed-Bernoulli gates (temperature 0.1) saturate, and their samples and gradients
reach subnormal floats, on which x86 arithmetic is many times slower. The command line flushes
them to zero (`core.device.flush_denormals`). This script times the same ANP-VS run (the demo's
settings, from a trained run's model, on the first `--images` training images, one epoch, one
thread) with subnormals computed and then flushed, in one process, and prints the ratio and how
far the two runs' weights end apart.

    python benchmarks/subnormals.py RUN_DIR [--images 6000] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import advprune
from advprune.core.run_dir import RunDir
from advprune.data import load_dataset
from advprune.models.serialization import load_model

DEMO_ANPVS = {
    "finetune_epochs": 1, "finetune_attack_steps": 3, "finetune_batch_size": 128,
    "finetune_optimizer": "adam", "finetune_lr": 1e-3, "finetune_weight_decay": 1e-4,
    "beta": 6.0, "vs_lambda": 1.0, "gate_lr": 0.2, "conv_gate_init": -1.0, "dense_gate_init": 3.0,
}  # fmt: skip


def timed_run(model: torch.nn.Module, data: tuple, eps: float, flush: bool) -> tuple[float, dict]:
    torch.set_flush_denormal(flush)
    torch.manual_seed(0)
    start = time.perf_counter()
    pruned = advprune.prune(model, data, method="anpvs", eps=eps, **DEMO_ANPVS)
    return time.perf_counter() - start, pruned.state_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a trained run (e.g. runs/demo/pgd-at)")
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, metadata = load_model(RunDir.existing(args.run_dir).model)
    train = load_dataset(metadata["config"]["dataset"], "train", limit=args.images)
    data, eps = (train.images, train.labels), metadata["eps"]
    print(f"ANP-VS, one epoch of {args.images} images, {args.threads} thread(s)")
    computed, first = timed_run(model, data, eps, flush=False)
    flushed, second = timed_run(model, data, eps, flush=True)
    gap = max((first[k].float() - second[k].float()).abs().max().item() for k in first)
    print(f"subnormals computed  {computed:6.1f} s")
    print(f"subnormals flushed   {flushed:6.1f} s   {computed / flushed:.2f}x faster")
    print(f"largest weight difference between the two runs: {gap:.2e}")


if __name__ == "__main__":
    main()
