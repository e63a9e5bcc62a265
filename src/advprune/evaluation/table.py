"""Results as a plain-text table, the way `advprune eval` and `advprune demo` print them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

COLUMNS = ("clean", "fgsm", "pgd", "cw", "autoattack")


def format_results(results: Sequence[dict[str, Any]]) -> str:
    """One row per result: accuracies in %, with the number of examples when not the full set."""
    header = f"{'run':<28} {'params':>10} {'sparsity':>8} " + " ".join(f"{c:>11}" for c in COLUMNS)
    lines = [header, "-" * len(header)]
    for result in results:
        accuracy, examples = result.get("accuracy", {}), result.get("examples", {})
        full = examples.get("clean")
        cells = []
        for column in COLUMNS:
            if column not in accuracy:
                cells.append(f"{'–':>11}")
                continue
            subset = examples.get(column)
            suffix = f"/{subset}" if subset and full and subset != full else ""
            cells.append(f"{100 * accuracy[column]:>6.2f}{suffix:>5}")
        run = str(result.get("run", "?"))[-28:]
        params = result.get("params", "–")
        sparsity = result.get("sparsity")
        sparsity = "–" if sparsity is None else f"{100 * sparsity:.1f}%"
        lines.append(f"{run:<28} {params:>10} {sparsity:>8} " + " ".join(cells))
    lines.append(
        f"accuracy in % at eps {results[0].get('eps', '?')}; '/N': on the first N test "
        "examples only"
    )
    return "\n".join(lines)
