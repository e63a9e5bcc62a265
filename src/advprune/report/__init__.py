"""Reports: tables (markdown, CSV, plain text) and figures from the files in run directories."""

from advprune.report.runs import RunSummary, find_runs, read_run, summarize
from advprune.report.table import format_results
from advprune.report.writer import write_report

__all__ = ["RunSummary", "find_runs", "format_results", "read_run", "summarize", "write_report"]
