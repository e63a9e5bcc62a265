"""Data-parallel throughput: PGD-AT images/s with N processes against 1, through torchrun.

Each run is `torchrun --standalone --nproc-per-node N -m advprune train ...` on the real CLI with
the same global batch, one thread per process (OMP_NUM_THREADS=1) and gloo on CPU (nccl on
GPUs); the rate is the training set over the training loop's own seconds (metrics.jsonl, no
start-up, no evaluation), best of the epochs. The runs alternate, so a machine whose load changes
affects both alike.

    python benchmarks/ddp_throughput.py [--processes 2] [--model lenet5-caffe]
        [--limit-train 8192] [--batch-size 128] [--attack-steps 3] [--epochs 2]
        [--repeats 2] [--backend gloo]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def images_per_second(processes: int, args: argparse.Namespace, run_dir: Path) -> float:
    """Best epoch rate of one torchrun training run with `processes` processes."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", str(processes), "-m", "advprune", "--quiet", "train"]
    command += ["--run-dir", str(run_dir), "--model", args.model, "--objective", "pgd-at"]
    command += ["--limit-train", str(args.limit_train), "--batch-size", str(args.batch_size)]
    command += ["--attack-steps", str(args.attack_steps), "--epochs", str(args.epochs)]
    command += ["--limit-test", "500", "--monitor-examples", "0", "--checkpoint-every", "0"]
    command += ["--backend", args.backend, "--seed", "0"]
    source = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": source}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = args.limit_train // args.batch_size
    return max(steps * args.batch_size / record["seconds"] for record in records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--model", default="lenet5-caffe")
    parser.add_argument("--limit-train", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--attack-steps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backend", default="gloo")
    args = parser.parse_args()
    print(
        f"PGD-{args.attack_steps} AT, {args.model}, Fashion-MNIST ({args.limit_train} examples), "
        f"global batch {args.batch_size}, {args.backend}, 1 thread per process"
    )
    rates: dict[int, list[float]] = {1: [], args.processes: []}
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(args.repeats):
            for processes in rates:
                run_dir = Path(root) / f"n{processes}-{repeat}"
                rate = images_per_second(processes, args, run_dir)
                rates[processes].append(rate)
                print(f"  {processes} process(es), run {repeat + 1}: {rate:,.0f} img/s")
    single, multi = max(rates[1]), max(rates[args.processes])
    print(f"best: 1 process {single:,.0f} img/s, {args.processes} processes {multi:,.0f} img/s")
    print(f"ratio {args.processes} : 1 = {multi / single:.2f}")


if __name__ == "__main__":
    main()
