"""`advprune reproduce RECIPE` and `advprune demo`: a recipe's steps end to end, then its report."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from advprune.cli.evaluate import single_process
from advprune.cli.flags import parse_overrides
from advprune.core.errors import ConfigError

if TYPE_CHECKING:
    from advprune.reproduction.executor import Executor


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
    parser.add_argument(
        "--status",
        action="store_true",
        help="show each step's state (done, running, queued, failed) instead of running it",
    )
    _add_executor_flags(parser)
    parser.set_defaults(handler=run_reproduce)
    demo = commands.add_parser("demo", help="the embedded default: PGD-AT LeNet on Fashion-MNIST")
    demo.add_argument("--run-dir", default="runs/demo", help="where the demo's runs go")
    demo.set_defaults(handler=run_demo)


def _add_executor_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "executor", "where the steps run; the Slurm flags win over the recipe's `slurm:` sections"
    )
    group.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="local: this machine (--jobs, --devices); slurm: one Slurm job per step's build "
        "and evaluation, submitted through submitit, and the command returns (docs/scaling.md)",
    )
    group.add_argument(
        "--partition",
        help="Slurm: the partition of every job (else the recipe's, else the cluster's default)",
    )
    group.add_argument("--gpus", type=int, help="Slurm: GPUs per job (else the recipe's, else 0)")
    group.add_argument(
        "--cpus",
        type=int,
        help="Slurm: CPUs per job, its torch threads (else the recipe's, else 1)",
    )
    group.add_argument(
        "--mem",
        help="Slurm: memory per job, e.g. 32G (else the recipe's, else the cluster's default)",
    )
    group.add_argument(
        "--time",
        help="Slurm: time limit per job, e.g. 12:00:00 (else the recipe's, else 24:00:00); a "
        "job near it is requeued and resumes from its checkpoint",
    )
    group.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="Slurm: any other sbatch option of every job, e.g. --sbatch qos=high",
    )


def _executor(args: argparse.Namespace) -> Executor | None:
    """The executor the flags ask for; None: the local one, with --jobs and --devices."""
    slurm_flags = {
        key: getattr(args, key)
        for key in ("partition", "gpus", "cpus", "mem", "time")
        if getattr(args, key) is not None
    }
    if args.sbatch:
        slurm_flags["sbatch"] = {k: str(v) for k, v in parse_overrides(args.sbatch).items()}
    if args.executor == "local":
        if slurm_flags:
            raise ConfigError(f"--{next(iter(slurm_flags))} is a Slurm flag; add --executor slurm")
        return None
    from advprune.reproduction.slurm import SlurmExecutor

    return SlurmExecutor(slurm_flags)


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
    overrides = parse_overrides(args.overrides)
    if args.status:
        return _print_status(args, steps, overrides)
    reproduce(
        args.recipe,
        args.runs_dir,
        scale=args.scale,
        data_dir=args.data_dir,
        download=args.download,
        overrides=overrides,
        only=steps,
        progress=not args.quiet,
        jobs=args.jobs,
        devices=args.devices,
        threads=args.threads,
        seeds=args.seeds,
        executor=_executor(args),
    )
    return 0


def _print_status(args: argparse.Namespace, steps: list[str] | None, overrides: dict) -> int:
    """`reproduce … --status`: the state of each task of the plan this command runs."""
    from advprune.reproduction.plan import make_plan
    from advprune.reproduction.runner import default_root
    from advprune.reproduction.slurm import status_lines

    plan = make_plan(
        args.recipe,
        args.runs_dir or default_root(args.recipe, args.scale),
        scale=args.scale,
        data_dir=args.data_dir,
        download=args.download,
        overrides=overrides,
        only=steps,
        seeds=args.seeds,
    )
    print("\n".join(status_lines(plan)))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from advprune.reproduction.demo import run_demo as demo

    single_process("demo")
    demo(args.run_dir, progress=not args.quiet)
    return 0
