"""`advprune status ROOT`: each step of a reproduction, done, running, queued or failed."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "status",
        help="each step of a reproduction: done, running or queued (its Slurm job), failed "
        "(its log's last line)",
    )
    parser.add_argument("root", help="the reproduction's --runs-dir (runs/reproduce/RECIPE)")
    parser.set_defaults(handler=lambda args: print_status(args.root))


def print_status(root: str | Path) -> int:
    """Print one line per task of the reproduction under `root`, as planned by its command."""
    from advprune.reproduction.runner import planned_at
    from advprune.reproduction.slurm import status_lines

    print("\n".join(status_lines(planned_at(root))))
    return 0
