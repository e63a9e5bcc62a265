"""Command line: `advprune train | prune | eval | export | report | reproduce | demo`.

Errors caused by input are one line on stderr and a non-zero exit; `--debug` shows the traceback.
`train` and `prune` also run under `torchrun --nproc-per-node N -m advprune ...` (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from advprune.core import distributed
from advprune.core.errors import AdvpruneError, ConfigError
from advprune.core.run_dir import RunDir

FLAG_TYPES: dict[str, dict[str, Any]] = {
    "str": {"type": str},
    "int": {"type": int},
    "float": {"type": float},
    "str | None": {"type": str},
    "int | None": {"type": int},
    "float | None": {"type": float},
    "bool": {"action": argparse.BooleanOptionalAction},
    "bool | None": {"action": argparse.BooleanOptionalAction},
    "list[float]": {"type": float, "nargs": "+"},
    "list[float] | None": {"type": str},  # comma-separated; the config parses and checks it
}


def add_dataclass_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    helps: dict[str, str],
    exclude: Collection[str] = (),
) -> None:
    """One `--flag` per dataclass field; unset flags stay absent so recipes keep their values."""
    for field in dataclasses.fields(cls):
        if field.name in exclude:
            continue
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(
            flag,
            dest=field.name,
            default=argparse.SUPPRESS,
            help=helps.get(field.name),
            **FLAG_TYPES[field.type],
        )


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def cmd_train(args: argparse.Namespace) -> int:
    from advprune.recipes import load_recipe
    from advprune.training import TrainConfig, train
    from advprune.training.config import EXECUTION_KEYS

    overrides = given(args, TrainConfig)
    if args.resume:
        run = RunDir.existing(args.run_dir)
        saved = TrainConfig.load(run.config)
        for key, value in overrides.items():
            if key not in EXECUTION_KEYS and getattr(saved, key) != value:
                raise ConfigError(
                    f"--resume: the run in {run.path} has {key}={getattr(saved, key)!r} but "
                    f"{value!r} was given; drop the flag or start a new --run-dir"
                )
        config = dataclasses.replace(saved, **overrides).validate()
    else:
        base: dict[str, Any] = {}
        if args.recipe:
            base = load_recipe(args.recipe).get("train", {})
        config = TrainConfig.from_dict({**base, **overrides}, source="--recipe and flags")
    train(config, args.run_dir, resume=args.resume, progress=not args.quiet)
    if distributed.current().is_main:
        print(f"trained model written to {Path(args.run_dir) / 'model.safetensors'}")
    return 0


def field_names(*classes: type) -> set[str]:
    return {field.name for cls in classes for field in dataclasses.fields(cls)}


def cmd_prune(args: argparse.Namespace) -> int:
    from advprune.methods.anpvs import ANPVSConfig
    from advprune.pruning import PruneConfig, prune_run
    from advprune.training import TrainConfig

    if getattr(args, "method", None) == "anpvs":
        return cmd_prune_anpvs(args)
    foreign = sorted(
        set(given(args, TrainConfig) | given(args, ANPVSConfig)) - field_names(PruneConfig)
    )
    if foreign or args.recipe:
        flag = "--" + (foreign[0].replace("_", "-") if foreign else "recipe")
        raise ConfigError(
            f"{flag} applies to --method anpvs only; drop it for {getattr(args, 'method', 'mad')}"
        )
    config = PruneConfig(**given(args, PruneConfig)).validate()
    prune_run(config, args.run_dir, progress=not args.quiet)
    if distributed.current().is_main:
        print(f"pruned, fine-tuned model written to {Path(args.run_dir) / 'model.safetensors'}")
    return 0


def single_process(command: str) -> None:
    """`eval` and `demo` write from every process they run in: refuse torchrun's several."""
    if distributed.launched_world_size() > 1:
        raise ConfigError(
            f"advprune {command} runs on one process; start it with python -m advprune or "
            "advprune, not torchrun"
        )


def cmd_prune_anpvs(args: argparse.Namespace) -> int:
    from advprune.gated_pruning import anpvs_configs, run_anpvs
    from advprune.methods.anpvs import ANPVSConfig
    from advprune.pruning import PruneConfig
    from advprune.recipes import load_recipe
    from advprune.training import TrainConfig

    prune_only = field_names(PruneConfig) - field_names(TrainConfig, ANPVSConfig) - {"method"}
    foreign = sorted(set(given(args, PruneConfig)) & prune_only)
    if foreign:
        raise ConfigError(
            f"--{foreign[0].replace('_', '-')} does not apply to --method anpvs, which learns "
            "which units to prune (set --beta, --vs-lambda, --init)"
        )
    base = load_recipe(args.recipe).get("anpvs", {}) if args.recipe else {}
    flags = {**given(args, TrainConfig), **given(args, ANPVSConfig)}
    train, config = anpvs_configs({**base, **flags}, source="--recipe and flags")
    run_anpvs(train, config, args.run_dir, progress=not args.quiet)
    if distributed.current().is_main:
        print(f"ANP-VS model written to {Path(args.run_dir) / 'model.safetensors'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from advprune.export import export_run

    rounding = {} if args.round_to is None else {"round_to": args.round_to}
    export_run(args.run_dir, threads=args.threads, repeats=args.repeats, **rounding)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from advprune.evaluation import EvalConfig, evaluate_run
    from advprune.report import format_results

    single_process("eval")
    config = EvalConfig.from_dict(given(args, EvalConfig), source="eval flags")
    run = RunDir.existing(args.run_dir)
    # With --out the run directory is only read: the lock goes where the results go.
    writes_to = RunDir.create(args.out) if args.out else run
    with writes_to.locked():
        results = evaluate_run(run.path, config, out_dir=args.out, progress=not args.quiet)
    print(format_results([results]))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from advprune.report import write_report

    report = write_report(args.run_dirs, args.out)
    print(f"report written to {report} (with report.csv and the figures beside it)")
    return 0


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """["device=cuda", "batch_size=256"] → {"device": "cuda", "batch_size": 256} (YAML values)."""
    import yaml

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            overrides[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {pair}: the value is not valid YAML") from err
    return overrides


def cmd_reproduce(args: argparse.Namespace) -> int:
    from advprune.reproduction import reproduce

    reproduce(
        args.recipe,
        args.runs_dir,
        scale=args.scale,
        data_dir=args.data_dir,
        download=args.download,
        overrides=parse_overrides(args.overrides),
        only=[name.strip() for name in args.steps.split(",") if name.strip()]
        if args.steps
        else None,
        progress=not args.quiet,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from advprune.demo import run_demo

    single_process("demo")
    run_demo(args.run_dir, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from advprune.evaluation import EvalConfig
    from advprune.methods.anpvs import ANPVSConfig
    from advprune.pruning import PruneConfig
    from advprune.training import TrainConfig

    parser = argparse.ArgumentParser(prog="advprune", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a dense model (standard, PGD-AT, TRADES)")
    train.add_argument("--run-dir", required=True, help="directory for everything the run writes")
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    train.add_argument("--recipe", help="start from a packaged recipe's train settings (e.g. demo)")
    add_dataclass_flags(
        train,
        TrainConfig,
        {
            "eps": "L∞ radius in [0, 1] pixels (default: the dataset's standard ε)",
            "attack_step_size": "PGD step (default 2.5·ε/steps)",
            "limit_train": "use only the first N training examples",
            "limit_test": "use only the first N test examples",
            "milestones": "step-schedule decay points as fractions of training",
            "checkpoint_every": "steps between mid-epoch checkpoints (0: at epoch ends only)",
            "tensorboard": "also write TensorBoard event files to RUN_DIR/tensorboard",
            "sync_batchnorm": "under torchrun on GPUs: BatchNorm statistics over all processes",
            "backend": "torchrun process group: nccl (GPUs) or gloo (CPU); default by device",
        },
    )
    train.set_defaults(handler=cmd_train)

    prune = commands.add_parser(
        "prune", help="prune a trained run (MAD, HYDRA, magnitude, random) or train ANP-VS (anpvs)"
    )
    prune.add_argument("--run-dir", required=True, help="directory for the pruned run")
    prune.add_argument("--recipe", help="anpvs: start from a packaged recipe's anpvs settings")
    add_dataclass_flags(
        prune,
        PruneConfig,
        {
            "from_run": "the trained dense run directory to prune",
            "sparsity": "fraction of the scored weights to remove, in [0, 1)",
            "scheme": "mad (global over conv layers, classifier per row) | global | layerwise",
            "order": "lowest (the method) | largest | random (ablations)",
            "saliency_fraction": "MAD: fraction of the training batches for the saliency",
            "score_epochs": "HYDRA: epochs learning the scores, weights frozen (RUN_DIR/scores)",
            "score_lr": "HYDRA: SGD learning rate of the scores (cosine schedule)",
            "objective": "fine-tuning objective (default: the dense run's)",
            "backend": "torchrun process group: nccl (GPUs) or gloo (CPU); default by device",
            "beta": "anpvs: weight of the gates' KL/N; others: TRADES/MART β of fine-tuning",
        },
    )
    prune.add_argument(
        "--from", dest="from_run", default=argparse.SUPPRESS, help="alias of --from-run"
    )
    add_dataclass_flags(
        prune,
        TrainConfig,
        {"eps": "L∞ radius in [0, 1] pixels", "epochs": "anpvs: training epochs"},
        exclude=field_names(PruneConfig),
    )
    add_dataclass_flags(
        prune,
        ANPVSConfig,
        {
            "init": "anpvs: trained run to start from (its dataset, model and eps by default)",
            "vs_lambda": "anpvs: weight of the vulnerability suppression loss (0: ANP)",
            "gates": "anpvs: --no-gates trains AT-VS (VS loss, no pruning)",
            "gate_lr": "anpvs: Adam lr of the gates, on the weights' schedule",
        },
        exclude=field_names(PruneConfig, TrainConfig),
    )
    prune.set_defaults(handler=cmd_prune)

    export = commands.add_parser(
        "export", help="remove an ANP-VS run's pruned units: a smaller plain model, its latency"
    )
    export.add_argument("run_dir", help="an ANP-VS run directory")
    export.add_argument("--threads", type=int, default=1, help="CPU threads for the latency")
    export.add_argument("--repeats", type=int, default=30, help="timed passes (median)")
    export.add_argument(
        "--round-to",
        type=int,
        help="keep widths multiples of N where they can be, with unused units as padding "
        "(default 8; 1: the exact pruned widths)",
    )
    export.set_defaults(handler=cmd_export)

    evaluate = commands.add_parser("eval", help="evaluate a run under attacks; writes results.json")
    evaluate.add_argument("run_dir", help="a run directory holding model.safetensors")
    evaluate.add_argument(
        "--out",
        help="write results, plots and attack state to this folder instead of the run directory "
        "(which is then only read)",
    )
    eval_helps = {
        field.name: field.metadata.get("help") for field in dataclasses.fields(EvalConfig)
    }
    add_dataclass_flags(evaluate, EvalConfig, eval_helps, exclude={"eps"})
    # A string, so that the config parses "8/255" (and refuses 8, which is not in [0, 1]).
    evaluate.add_argument("--eps", dest="eps", default=argparse.SUPPRESS, help=eval_helps["eps"])
    evaluate.set_defaults(
        handler=cmd_eval,
        interrupt_hint="running the same `advprune eval` again keeps the attacks it finished",
    )

    report = commands.add_parser(
        "report", help="report.md, report.csv and plots from run directories (nothing re-run)"
    )
    report.add_argument(
        "run_dirs", nargs="+", metavar="DIR", help="run directories, or folders holding them"
    )
    report.add_argument("--out", required=True, help="folder for report.md, report.csv, *.png")
    report.set_defaults(handler=cmd_report)

    reproduce = commands.add_parser(
        "reproduce", help="run a paper table's recipe end to end and compare with the paper"
    )
    reproduce.add_argument(
        "recipe", help="a recipe with steps, e.g. fashion-mnist-suite, mad-cifar10"
    )
    reproduce.add_argument("--data-dir", help="where the datasets are (standard formats)")
    reproduce.add_argument("--download", action="store_true", help="fetch missing datasets")
    reproduce.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="in (0, 1]: epochs ×F (≥ 1) and data ×F (≥ one batch) for a smoke run",
    )
    reproduce.add_argument(
        "--runs-dir", help="where the step runs go (default runs/reproduce/RECIPE[-scaleF])"
    )
    reproduce.add_argument(
        "--steps", help="comma-separated step names: run only these and the steps they need"
    )
    reproduce.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set KEY in every step that has it, e.g. --set device=cuda --set batch_size=256",
    )
    reproduce.set_defaults(handler=cmd_reproduce)

    demo = commands.add_parser("demo", help="the embedded default: PGD-AT LeNet on Fashion-MNIST")
    demo.add_argument("--run-dir", default="runs/demo", help="where the demo's runs go")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except AdvpruneError as err:
        if args.debug:
            raise
        rank = distributed.current().rank if distributed.current().enabled else None
        where = "" if rank is None else f" (rank {rank})"
        print(f"advprune: error{where}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        again = getattr(args, "interrupt_hint", None) or (
            "running the same command again continues it"
            if args.command == "reproduce"
            else "`advprune train --resume` continues a run"
        )
        print(f"advprune: interrupted; {again}", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()
