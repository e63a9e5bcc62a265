"""`advprune export RUN_DIR`: a run whose units were removed, as a smaller plain network.

Writes RUN_DIR/exported/model.safetensors — plain conv/linear/BN layers at their pruned widths,
rebuilt by `load_model` from the zoo architecture and the recorded layer shapes, no gate code — and
merges into RUN_DIR/results.json the units and weights removed, the size and FLOPs of the dense,
gated and exported networks, and the measured CPU latency of the exported network next to the
dense one's. `advprune eval RUN_DIR/exported` evaluates the exported network like any run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from advprune.core.errors import ConfigError
from advprune.core.io import atomic_write_json, read_json
from advprune.core.run_dir import RunDir
from advprune.evaluation.complexity import gated_complexity
from advprune.evaluation.latency import latency_comparison
from advprune.masks.export import ROUND_TO, export_gated, layer_shapes
from advprune.masks.gated import find_gates
from advprune.models import create_model, input_shape
from advprune.models.serialization import ARCHITECTURE_KEYS, load_model, save_model


def export_run(
    run_dir: str | Path,
    *,
    threads: int = 1,
    repeats: int = 30,
    batch_sizes: Sequence[int] = (1, 128),
    round_to: int = ROUND_TO,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Export the run's gated model (widths multiples of `round_to` where they can be), measure
    it, and merge the figures into results.json."""
    if threads < 1 or repeats < 1 or round_to < 1 or any(b < 1 for b in batch_sizes):
        raise ConfigError("threads, repeats, round_to and batch sizes must be ≥ 1")
    run = RunDir.existing(run_dir)
    model, metadata = load_model(run.model)
    if not find_gates(model):
        raise ConfigError(
            f"{run.model} has no gates to remove; export applies to runs of "
            "`advprune prune --method anpvs`"
        )
    architecture = metadata["architecture"]
    shape = input_shape(architecture)
    exported = export_gated(model, torch.zeros(1, *shape), round_to)
    target = RunDir.create(run.exported)
    save_model(
        target.model,
        exported,
        {
            **metadata,
            "architecture": {**architecture, "layer_shapes": layer_shapes(exported)},
            "method": {
                "name": f"{metadata['method']['name']} (exported)",
                "exported_from": str(run.path),
            },
        },
    )
    summary = gated_complexity(model, shape, exported)
    dense = create_model(**{key: architecture[key] for key in ARCHITECTURE_KEYS})
    summary["latency"] = latency_comparison(
        dense, exported, shape, batch_sizes, threads=threads, repeats=repeats
    )
    summary["exported_model"] = str(target.model)
    results = read_json(run.results, "results") if run.results.exists() else {}
    atomic_write_json(run.results, {**results, **summary})
    log(format_export(summary))
    return summary


def format_export(summary: dict[str, Any]) -> str:
    """The export's figures in a few lines, as `advprune export` prints them."""
    sizes = summary["complexity"]
    units = summary["units"]
    lines = [
        f"units kept {units['kept']}/{units['total']} "
        f"(unit sparsity {summary['unit_sparsity']:.2%}); "
        f"weights zero or removed {summary['sparsity']:.2%}",
        f"params {sizes['dense']['params']:,} dense → {sizes['exported']['params']:,} exported; "
        f"memory {summary['memory_fraction']:.2%} of dense; "
        f"FLOPs ×{summary['flops_speedup']:.2f} fewer",
    ]
    latency = summary.get("latency", {})
    for key, value in latency.items():
        if key.startswith("batch_"):
            lines.append(
                f"CPU latency, batch {key.removeprefix('batch_')}, {latency['threads']} thread(s): "
                f"dense {value['dense']:.3f} ms ({value['layout']['dense']}), exported "
                f"{value['exported']:.3f} ms ({value['layout']['exported']}) "
                f"(×{value['speedup']:.2f}; in CPU time ×{value['cpu_time']['speedup']:.2f})"
            )
    lines.append(f"exported model: {summary.get('exported_model', '–')}")
    return "\n".join(lines)
