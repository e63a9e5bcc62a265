"""`advprune train`: a dense run (standard, PGD-AT, TRADES, MART, fast AT) into a run directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from advprune.cli.flags import add_config_flags, given, print_config
from advprune.core import distributed
from advprune.core.errors import ConfigError
from advprune.core.run_dir import RunDir
from advprune.training import TrainConfig


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train", help="train a dense model (standard, PGD-AT, TRADES, MART, fast AT)"
    )
    parser.add_argument("--run-dir", help="directory for everything the run writes (required)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    parser.add_argument(
        "--recipe", help="start from a recipe's train settings: a packaged name (demo) or a path"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved settings and stop"
    )
    add_config_flags(parser.add_argument_group("training settings"), TrainConfig)
    parser.set_defaults(handler=run)


def require_run_dir(args: argparse.Namespace) -> None:
    if not args.run_dir:
        raise ConfigError("--run-dir is required: the directory the run writes into")


def resolve(args: argparse.Namespace) -> TrainConfig:
    """The run's settings: a resumed run's own (flags may change only where it runs), else the
    recipe's `train:` section with the flags on top."""
    from advprune.recipes import load_recipe

    flags = given(args, TrainConfig.field_names())
    if args.resume:
        run = RunDir.existing(args.run_dir)
        saved = TrainConfig.load(run.config)
        config = saved.replace(**flags)
        config.check_resume(saved, f"the run in {run.path}")
        return config
    if not args.recipe:
        return TrainConfig.from_dict(flags, source="flags")
    base = load_recipe(args.recipe).get("train")
    if not isinstance(base, dict):
        raise ConfigError(
            f"recipe {args.recipe} has no train section to start from; put the training "
            "settings under `train:` (e.g. `train: {epochs: 10}`)"
        )
    # The flags are known keys of the right types: an unknown or mistyped key is the file's.
    return TrainConfig.from_dict({**base, **flags}, source=f"recipe {args.recipe}: train")


def run(args: argparse.Namespace) -> int:
    from advprune.training import train

    if args.resume or not args.print_config:
        require_run_dir(args)
    config = resolve(args)
    if args.print_config:
        return print_config(config)
    run_dir = RunDir.at(args.run_dir)
    if args.resume and run_dir.model.exists():
        epochs = f"{config.epochs} epoch{'s' if config.epochs != 1 else ''}"
        print(f"the run in {run_dir.path} is finished ({epochs}); nothing to resume")
        return 0
    train(config, args.run_dir, resume=args.resume, progress=not args.quiet)
    if distributed.current().is_main:
        print(f"trained model written to {Path(args.run_dir) / 'model.safetensors'}")
    return 0
