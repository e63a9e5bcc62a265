"""How long a `reproduce --jobs` step's process takes to start: spawned, or forked from the
forkserver that has imported what a step needs.

Each trial starts one process the way `reproduction.parallel` starts a step and times it from
`start()` until the process has imported the step's modules (`parallel.STEP_IMPORTS`) and said
so on a pipe. The two ways take turns, `--trials` each; the first forkserver trial, which starts
the server (and its imports), is reported apart, as it is paid once per reproduction.

    python benchmarks/step_start.py [--trials 5]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from multiprocessing import get_context
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext

from advprune.reproduction.parallel import STEP_IMPORTS, step_context


def ready(connection: Connection) -> None:
    """A step's first moment: its modules imported (a no-op where the server imported them)."""
    for name in STEP_IMPORTS:
        importlib.import_module(name)
    connection.send(time.perf_counter())
    connection.close()


def start_seconds(context: BaseContext) -> float:
    """Seconds from `Process.start()` to the process's first moment."""
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=ready, args=(send,))
    started = time.perf_counter()
    process.start()
    send.close()
    seconds = receive.recv() - started
    process.join()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    spawn, forkserver = get_context("spawn"), step_context()
    first = start_seconds(forkserver)
    times: dict[str, list[float]] = {"spawn": [], "forkserver": []}
    for _ in range(args.trials):
        times["spawn"].append(start_seconds(spawn))
        times["forkserver"].append(start_seconds(forkserver))
    median = {way: statistics.median(values) for way, values in times.items()}
    print(f"start method of the steps: {forkserver.get_start_method()}; {args.trials} trials each")
    print(f"  first forkserver step (starts the server): {first:.2f} s")
    for way, values in times.items():
        spread = f"min {min(values):.3f}, max {max(values):.3f}"
        print(f"  {way:<10} median {median[way]:.3f} s  ({spread})")
    print(f"  spawn / forkserver: {median['spawn'] / median['forkserver']:.1f}x")


if __name__ == "__main__":
    main()
