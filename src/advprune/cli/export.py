"""`advprune export RUN`: the run's network at its pruned widths, with its measured latency."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export", help="remove a run's pruned units: a smaller plain model, and its latency"
    )
    parser.add_argument(
        "run_dir", help="a run whose units were removed (ANP-VS, or --structure channels)"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for the latency")
    parser.add_argument("--repeats", type=int, default=30, help="timed passes or pairs (median)")
    parser.add_argument(
        "--device", default=None, help="where the speed-up is measured (default: CUDA if present)"
    )
    parser.add_argument(
        "--round-to",
        type=int,
        default=None,
        help="keep widths multiples of N where they can be, with unused units as padding "
        "(default: whichever of 1, 8 and 16 runs fastest on the device, or the smallest "
        "within 2 %% of it; 1: the exact widths)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from advprune.pipelines import export_run

    export_run(
        args.run_dir,
        threads=args.threads,
        repeats=args.repeats,
        round_to=args.round_to,
        device=args.device,
    )
    return 0
