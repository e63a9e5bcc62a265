"""`advprune reproduce RECIPE` and `advprune demo`: a recipe's steps end to end, then its report."""

from __future__ import annotations

import argparse

from advprune.cli.evaluate import single_process
from advprune.cli.flags import parse_overrides


def add_parsers(commands: argparse._SubParsersAction) -> None:
    from advprune.reproduction.runner import DEFAULT_JOBS

    parser = commands.add_parser(
        "reproduce", help="run a paper table's recipe end to end and compare with the paper"
    )
    parser.add_argument(
        "recipe", help="a recipe name (advprune list recipes) or the path of a YAML recipe"
    )
    parser.add_argument("--data-dir", help="where the datasets are (standard formats)")
    parser.add_argument("--download", action="store_true", help="fetch missing datasets")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="in (0, 1]: epochs ×F (≥ 1) and data ×F (≥ one batch) for a smoke run, which goes on "
        "where a tiny budget ends at chance",
    )
    parser.add_argument(
        "--runs-dir", help="where the step runs go (default runs/reproduce/RECIPE[-scaleF])"
    )
    parser.add_argument(
        "--steps", help="comma-separated step names: run only these and the steps they need"
    )
    parser.add_argument(
        "--jobs",
        type=_jobs,
        default=DEFAULT_JOBS,
        help="steps run at once, each in its own process with its share of the cores; auto: "
        "as many as the cores and the recipe allow (one with a GPU; docs/benchmarks.md)",
    )
    parser.add_argument(
        "--devices",
        type=_names,
        help="comma-separated devices, one step on each at a time, e.g. cuda:0,cuda:1",
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads per step (default: the cores // --jobs)"
    )
    parser.add_argument(
        "--seeds",
        type=_seeds,
        help="comma-separated seeds: every step once per seed, in RUNS_DIR/seed-S/STEP, and the "
        "report's mean ± std over them (default: the recipe's seeds, else none)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set KEY in every step that has it, e.g. --set device=cuda --set batch_size=256",
    )
    parser.set_defaults(handler=run_reproduce)
    demo = commands.add_parser("demo", help="the embedded default: PGD-AT LeNet on Fashion-MNIST")
    demo.add_argument("--run-dir", default="runs/demo", help="where the demo's runs go")
    demo.set_defaults(handler=run_demo)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _jobs(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--jobs takes a number or auto, got {text!r}") from None


def _seeds(text: str) -> list[int]:
    try:
        return [int(seed) for seed in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds takes integers like 0,1,2, got {text!r}"
        ) from None


def run_reproduce(args: argparse.Namespace) -> int:
    from advprune.reproduction import reproduce

    steps = [name.strip() for name in args.steps.split(",") if name.strip()] if args.steps else None
    reproduce(
        args.recipe,
        args.runs_dir,
        scale=args.scale,
        data_dir=args.data_dir,
        download=args.download,
        overrides=parse_overrides(args.overrides),
        only=steps,
        progress=not args.quiet,
        jobs=args.jobs,
        devices=args.devices,
        threads=args.threads,
        seeds=args.seeds,
    )
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from advprune.reproduction.demo import run_demo as demo

    single_process("demo")
    demo(args.run_dir, progress=not args.quiet)
    return 0
