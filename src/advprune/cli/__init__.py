"""Command line: `advprune train | prune | eval | export | report | reproduce | status | …`.

Each subcommand is a module here with a small parser; settings flags are generated from the
config dataclasses and the registries. Errors caused by input are one line on stderr and a
non-zero exit; `--debug` shows the traceback. `train` and `prune` also run under
`torchrun --nproc-per-node N -m advprune ...` (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import signal
import sys
from collections.abc import Callable, Sequence

from advprune import __version__
from advprune.cli import evaluate, export, listing, prune, report, reproduce, status, train
from advprune.cli.flags import Parser
from advprune.core import distributed
from advprune.core.config import closest
from advprune.core.device import tune_process
from advprune.core.errors import AdvpruneError

# What to run after Ctrl-C (or SIGTERM), by subcommand.
CONTINUE_HINTS = {
    "train": "`advprune train --resume --run-dir DIR` continues the run",
    "prune": "running the same `advprune prune` command again continues it",
    "eval": "running `advprune eval` again keeps the attacks it finished",
    "export": "run `advprune export` again",
}


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; `argv` lets `prune` add the flags of the method it names."""
    parser = Parser(prog="advprune", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--version", action="version", version=f"advprune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train.add_parser(commands)
    prune.add_parser(commands, argv)
    evaluate.add_parser(commands)
    export.add_parser(commands)
    report.add_parser(commands)
    reproduce.add_parsers(commands)
    status.add_parser(commands)
    listing.add_parser(commands)
    return parser


def _trace_crashes() -> None:
    """A crash below Python (a collective, a kernel) prints every thread's Python stack instead of
    only 'Aborted': on a torchrun rank that is the only trace of where it happened."""
    if faulthandler.is_enabled():  # PYTHONFAULTHANDLER, pytest
        return
    # A stderr with no file descriptor (a notebook's) cannot take the traceback: run without it.
    with contextlib.suppress(OSError, ValueError, AttributeError):
        faulthandler.enable()


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (a scheduler's stop) is handled as Ctrl-C: the trainer saves its checkpoint."""
    raise KeyboardInterrupt


def options_of(parser: argparse.ArgumentParser, command: str) -> list[str]:
    """Every `--flag` of subcommand `command`."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [flag for action in commands.choices[command]._actions for flag in action.option_strings]


def unrecognized(command: str, extra: Sequence[str], options: Sequence[str] = ()) -> str:
    """One line for flags the command does not have, naming the methods that have them, or the
    flag meant (abbreviations are off: `--epoch` is not taken for `--epochs`)."""
    message = f"advprune: error: unrecognized arguments: {' '.join(extra)}"
    flags = [arg.partition("=")[0] for arg in extra if arg.startswith("--")]
    if command == "prune" and flags:
        owners = prune.methods_with_flag(flags[0])
        if owners:
            return f"{message} ({flags[0]} is an option of --method {' or '.join(owners)})"
    meant = closest(flags[0], options) if flags else ""
    return f"{message}{meant or f' (see advprune {command} --help)'}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as stop:  # --help, --version, or a usage error already printed
        return int(stop.code or 0)
    if extra:
        print(unrecognized(args.command, extra, options_of(parser, args.command)), file=sys.stderr)
        return 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    tune_process()
    _trace_crashes()
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    code = None
    try:
        code = handler(args)
        return code
    except AdvpruneError as err:
        if args.debug:
            raise
        rank = distributed.current().rank if distributed.current().enabled else None
        where = "" if rank is None else f" (rank {rank})"
        print(f"advprune: error{where}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        again = CONTINUE_HINTS.get(args.command, "running the same command again continues it")
        print(f"advprune: interrupted; {again}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        distributed.shutdown(finished=code == 0)
