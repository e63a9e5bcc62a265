"""`advprune prune --method NAME`: any registered method, from a trained run (or, for a method
that trains from initialization, from the network `--model`, `--dataset`, … name), into a run
directory.

The method's own flags (`advprune prune --method mad --help`) come from its settings dataclass;
the flags every method shares come from `PruneSettings`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from advprune.cli.flags import add_config_flags, given, print_config
from advprune.cli.train import require_run_dir
from advprune.core import distributed
from advprune.core.errors import ConfigError
from advprune.methods import PruneSettings, get_method, method_names
from advprune.methods.base import INITIALIZATION, start_config, start_keys
from advprune.training import TrainConfig


def method_in(argv: Sequence[str]) -> str | None:
    """The value of `--method` on a prune command line, read before the parser is built, so that
    the method's own flags can be added."""
    for index, arg in enumerate(argv):
        if arg == "--method" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--method="):
            return arg.partition("=")[2]
    return None


def methods_with_flag(flag: str) -> list[str]:
    """The registered methods that have `--flag` among their own settings."""
    name = flag.removeprefix("--").partition("=")[0].replace("-", "_")
    return [m for m in method_names() if name in get_method(m).Settings.field_names()]


def add_parser(commands: argparse._SubParsersAction, argv: Sequence[str]) -> None:
    methods = method_names()
    parser = commands.add_parser(
        "prune",
        help=f"prune a trained run with a registered method ({', '.join(methods)})",
        epilog="Each method has its own options: advprune prune --method NAME --help. "
        "advprune list methods describes them.",
    )
    parser.add_argument("--run-dir", help="directory for the pruned run (required)")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved settings and stop"
    )
    generic = parser.add_argument_group("settings of every method")
    add_config_flags(generic, PruneSettings, exclude={"method", "from_run"})
    generic.add_argument(
        "--method", required=True, help=f"pruning method; choices: {', '.join(methods)}"
    )
    generic.add_argument(
        "--from", "--from-run", dest="from_run", help="the trained run directory to prune"
    )
    name = method_in(argv)
    starts = name in methods and get_method(name).starts_from == INITIALIZATION
    start = parser.add_argument_group(
        f"the network and data {name} starts from (its initialization, as `advprune train` "
        "builds it)"
    )
    add_config_flags(start, TrainConfig, only=start_keys(), hidden=not starts)
    if name in methods:
        cls = get_method(name)
        own = parser.add_argument_group(f"{name} options ({cls.description})")
        add_config_flags(own, cls.Settings)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from advprune.pipelines import prune_run

    cls = get_method(args.method)
    settings = PruneSettings.from_dict(given(args, PruneSettings.field_names()), "flags")
    own = cls.Settings.from_dict(given(args, cls.Settings.field_names()), "flags")
    start_values = given(args, start_keys())
    starts = cls.starts_from == INITIALIZATION
    if start_values and not starts:
        flag = next(iter(start_values)).replace("_", "-")
        raise ConfigError(
            f"{cls.name} prunes a trained run, whose network and data it takes: pass --from "
            f"RUN_DIR and drop --{flag}"
        )
    start = start_config(start_values, settings, "flags") if starts else None
    if args.print_config:
        return print_config(settings, *([start] if start else []), own)
    require_run_dir(args)
    model_file = Path(args.run_dir) / "model.safetensors"
    finished_before = model_file.exists()  # then prune_run says there is nothing to do
    prune_run(settings, cls(own), args.run_dir, start=start, progress=not args.quiet)
    if distributed.current().is_main and not finished_before:
        print(f"pruned model written to {model_file}")
    return 0
