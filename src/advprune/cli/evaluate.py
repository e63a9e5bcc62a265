"""`advprune eval RUN`: accuracy under attacks, sizes, and the checks that make it trustworthy."""

from __future__ import annotations

import argparse

from advprune.cli.flags import add_config_flags, given
from advprune.core import distributed
from advprune.core.errors import ConfigError
from advprune.core.run_dir import RunDir


def add_parser(commands: argparse._SubParsersAction) -> None:
    from advprune.evaluation import EvalConfig

    parser = commands.add_parser("eval", help="evaluate a run under attacks; writes results.json")
    parser.add_argument("run_dir", help="a run directory holding model.safetensors")
    parser.add_argument(
        "--out",
        help="write results, plots and attack state to this folder instead of the run directory "
        "(which is then only read)",
    )
    add_config_flags(parser.add_argument_group("evaluation settings"), EvalConfig)
    parser.set_defaults(handler=run)


def single_process(command: str) -> None:
    """`eval` and `demo` write from every process they run in: refuse torchrun's several."""
    if distributed.launched_world_size() > 1:
        raise ConfigError(
            f"advprune {command} runs on one process; start it with python -m advprune or "
            "advprune, not torchrun"
        )


def run(args: argparse.Namespace) -> int:
    from advprune.evaluation import EvalConfig, evaluate_run
    from advprune.report import format_results

    single_process("eval")
    config = EvalConfig.from_dict(given(args, EvalConfig.field_names()), source="eval flags")
    run_dir = RunDir.existing(args.run_dir)
    # With --out the run directory is only read: the lock goes where the results go.
    writes_to = RunDir.create(args.out) if args.out else run_dir
    with writes_to.locked():
        results = evaluate_run(run_dir.path, config, out_dir=args.out, progress=not args.quiet)
    print(format_results([results]))
    return 0
