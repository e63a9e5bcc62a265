"""`advprune report DIR...`: tables and plots from run directories, nothing re-run."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "report", help="report.md, report.csv and plots from run directories (nothing re-run)"
    )
    parser.add_argument(
        "run_dirs", nargs="+", metavar="DIR", help="run directories, or folders holding them"
    )
    parser.add_argument("--out", required=True, help="folder for report.md, report.csv, *.png")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from advprune.report import write_report

    report = write_report(args.run_dirs, args.out)
    print(f"report written to {report} (with report.csv and the figures beside it)")
    return 0
