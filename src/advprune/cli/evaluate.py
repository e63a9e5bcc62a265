"""`advprune eval RUN`: accuracy under attacks, sizes and the gradient-masking checks."""

from __future__ import annotations

import argparse
import dataclasses

from advprune.cli.flags import given
from advprune.core import distributed
from advprune.core.errors import ConfigError
from advprune.core.run_dir import RunDir

HELPS = {
    "attacks": "comma-separated: clean,fgsm,pgd,cw,autoattack",
    "autoattack_limit": "AutoAttack on the first N test examples (default: all)",
    "sanity_examples": "test examples of the security curve / gradient-masking check",
    "latency_repeats": "timed passes of the CPU latency at batch 1 and 128 (0: skip)",
    "eps_curve": "security curve at these radii, e.g. 0,0.02,0.05,0.1 (0.5 is always added)",
    "curve_autoattack_examples": "with --eps-curve: AutoAttack at each radius on the first N",
    "transfer_from": "black-box accuracy: PGD-40 crafted on this separately trained run",
}
TYPES = {
    "str": {"type": str},
    "int": {"type": int},
    "float | None": {"type": float},
    "int | None": {"type": int},
    "str | None": {"type": str},
    "bool": {"action": argparse.BooleanOptionalAction},
    "list[float] | None": {"type": str},
}


def add_parser(commands: argparse._SubParsersAction) -> None:
    from advprune.evaluation import EvalConfig

    parser = commands.add_parser("eval", help="evaluate a run under attacks; writes results.json")
    parser.add_argument("run_dir", help="a run directory holding model.safetensors")
    for field in dataclasses.fields(EvalConfig):
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            default=argparse.SUPPRESS,
            help=f"{HELPS.get(field.name, field.name.replace('_', ' '))}; default: {field.default}",
            **TYPES[field.type],
        )
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
    names = {field.name for field in dataclasses.fields(EvalConfig)}
    config = EvalConfig.from_dict(given(args, names))
    with RunDir.existing(args.run_dir).locked():
        results = evaluate_run(args.run_dir, config, progress=not args.quiet)
    print(format_results([results]))
    return 0
