"""`advprune export RUN_DIR`: a run whose units were removed, as a smaller plain network.

The run is an ANP-VS run (gated) or a structured scored run (`--structure channels`: its pruned
channels are zero in every slice). Writes RUN_DIR/exported/model.safetensors — plain conv/linear/BN
layers at their pruned widths, rebuilt by `load_model` from the zoo architecture and the recorded
layer shapes, no gate code — and merges into RUN_DIR/results.json the channels (`channel_sparsity`,
the benchmark's structured sparsity, for both kinds of run), units and weights removed, the width
multiple kept (`round_to`: by default the fastest of exact widths, multiples of 8 and of 16 on the
measuring device, or a smaller one within 2 % of it, with the times it was chosen by,
`round_to_ms`), the size and FLOPs of the dense and exported networks, the CPU latency of each
(`latency`) and the measured speed-up (`measured_speedup`): the exported network against the dense
one, interleaved in pairs in one process, on CUDA when there is one, as the median of the per-pair
ratios with their min–max, at batch 1 and 128. `advprune eval RUN_DIR/exported` evaluates the
exported network like any run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advprune.core.device import resolve_device
from advprune.core.errors import ConfigError
from advprune.core.io import atomic_write_json, read_json
from advprune.core.run_dir import RunDir
from advprune.evaluation.complexity import gated_complexity, model_complexity
from advprune.evaluation.latency import fastest_model, latency_comparison, measured_speedup
from advprune.masks.export import channel_sparsity, export_gated, layer_shapes
from advprune.masks.gated import find_gates, fold_gates
from advprune.models import create_model, input_shape
from advprune.models.layer_types import PRUNABLE
from advprune.models.serialization import architecture_arguments, load_model, save_model

ROUNDINGS = (1, 8, 16)  # the width multiples `advprune export` chooses from: exact, 8 or 16 lanes
# A padded export is kept only where it runs this much faster than the smaller ones: padding costs
# parameters and memory (39 % more for the demo's ANP-VS at 16), and below this the three exports
# can tie (the demo's within 0.3 % of each other), so the choice would be a coin toss.
PADDING_MUST_SAVE = 0.02


def export_run(
    run_dir: str | Path,
    *,
    threads: int = 1,
    repeats: int = 30,
    batch_sizes: Sequence[int] = (1, 128),
    round_to: int | None = None,
    device: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Export the run's gated or channel-masked model (widths multiples of `round_to` where they
    can be; by default whichever of `ROUNDINGS` runs fastest on `device`), measure it against the
    dense network (`repeats` passes or pairs; the speed-up on `device`, default CUDA when there
    is one), and merge the figures into results.json."""
    if round_to is not None and round_to < 1:
        raise ConfigError(f"round_to must be ≥ 1, got {round_to}; 1 keeps the exact widths")
    if threads < 1 or repeats < 1 or any(b < 1 for b in batch_sizes):
        raise ConfigError("threads, repeats and batch sizes must be ≥ 1")
    target_device = resolve_device(device)
    run = RunDir.existing(run_dir)
    model, metadata = load_model(run.model)
    gated = bool(find_gates(model))
    if not gated and metadata.get("method", {}).get("prune", {}).get("structure") != "channels":
        raise ConfigError(
            f"{run.model} has no removed units; export applies to runs of `advprune prune "
            "--method anpvs` or `advprune prune --structure channels`"
        )
    architecture = metadata["architecture"]
    shape = input_shape(architecture)
    example = torch.zeros(1, *shape)
    choice: dict[str, Any] = {"round_to": round_to, "round_to_ms": {}}
    if round_to is None:
        exported, choice = fastest_export(
            model, example, batch_size=max(batch_sizes), threads=threads, device=target_device
        )
    else:
        exported = export_gated(model, example, round_to)
    target = _save_exported(exported, metadata, run)
    summary = gated_complexity(model, shape, exported) if gated else masked_complexity(
        model, shape, exported
    )  # fmt: skip
    summary.update(channel_sparsity(fold_gates(model, example) if gated else model, example))
    dense = create_model(**architecture_arguments(architecture))
    summary["latency"] = latency_comparison(
        dense, exported, shape, batch_sizes, threads=threads, repeats=repeats,
        device=target_device,
    )  # fmt: skip
    summary["measured_speedup"] = measured_speedup(summary["latency"])
    summary["exported_model"] = str(target.model)
    summary.update(choice)
    results = read_json(run.results, "results") if run.results.exists() else {}
    atomic_write_json(run.results, {**results, **summary})
    log(format_export(summary))
    return summary


def _save_exported(exported: nn.Module, metadata: dict[str, Any], run: RunDir) -> RunDir:
    """The exported network in the run's `exported/` folder, its metadata naming the source."""
    target = RunDir.create(run.exported)
    save_model(
        target.model,
        exported,
        {
            **metadata,
            "architecture": {**metadata["architecture"], "layer_shapes": layer_shapes(exported)},
            "method": {
                "name": f"{metadata['method']['name']} (exported)",
                "exported_from": str(run.path),
            },
        },
    )
    return target


def fastest_export(
    model: nn.Module, example: torch.Tensor, *, batch_size: int, threads: int, device: torch.device
) -> tuple[nn.Module, dict[str, Any]]:
    """The export of `model` among the roundings `ROUNDINGS` that runs fastest on `device`, or a
    smaller one no more than `PADDING_MUST_SAVE` slower, and the choice:
    {"round_to", "round_to_ms": median ms of each distinct export at `batch_size`}. Which
    rounding is fastest depends on the device and the widths (on an AVX-512 CPU, 16 for the
    demo's ANP-VS LeNet, the exact widths for a VGG-16 at 90 % of its channels;
    docs/benchmarks.md), so it is measured; the reported latency is timed afresh afterwards."""
    exports: dict[int, nn.Module] = {}
    for round_to in ROUNDINGS:
        candidate = export_gated(model, example, round_to)
        if all(layer_shapes(candidate) != layer_shapes(other) for other in exports.values()):
            exports[round_to] = candidate  # the smallest rounding that gives these widths
    best, medians = next(iter(exports)), {}
    if len(exports) > 1:
        best, medians = fastest_model(  # `exports` lists the smaller widths first
            exports,
            example.shape[1:],
            batch_size,
            threads=threads,
            device=device,
            prefer_within=PADDING_MUST_SAVE,
        )
    return exports[best], {
        "round_to": best,
        "round_to_ms": {str(key): value for key, value in medians.items()},
    }


def masked_complexity(model: nn.Module, shape: Sequence[int], exported: nn.Module) -> dict:
    """Sizes of a channel-masked network (as dense) and of its export, and what was removed:
    `sparsity` counts the conv/linear weights zero or removed, as for a gated network."""
    sizes = {"dense": model_complexity(model, shape), "exported": model_complexity(exported, shape)}
    dense_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, PRUNABLE))
    kept = sum(int((m.weight != 0).sum()) for m in exported.modules() if isinstance(m, PRUNABLE))
    return {
        "sparsity": 1 - kept / dense_weights,
        "complexity": sizes,
        "memory_fraction": sizes["exported"]["memory_bytes"] / sizes["dense"]["memory_bytes"],
        "flops_speedup": sizes["dense"]["flops"] / sizes["exported"]["flops"],
    }


def format_export(summary: dict[str, Any]) -> str:
    """The export's figures in a few lines, as `advprune export` prints them."""
    sizes = summary["complexity"]
    channels = summary["channels"]
    lines = [
        f"channels kept {channels['kept']}/{channels['total']} of the prunable groups "
        f"(channel sparsity {summary['channel_sparsity']:.2%})",
        f"params {sizes['dense']['params']:,} dense → {sizes['exported']['params']:,} exported "
        f"(widths multiples of {summary.get('round_to', 1)} where they can be); "
        f"memory {summary['memory_fraction']:.2%} of dense; "
        f"FLOPs ×{summary['flops_speedup']:.2f} fewer",
    ]
    if "units" in summary:
        units = summary["units"]
        lines.append(
            f"gated units kept {units['kept']}/{units['total']} "
            f"(unit sparsity {summary['unit_sparsity']:.2%})"
        )
    latency = summary.get("latency", {})
    for key, value in latency.items():
        if key.startswith("batch_"):
            lines.append(
                f"latency ({value['clock']} time), batch {key.removeprefix('batch_')}, "
                f"{latency['threads']} thread(s): dense {value['dense']:.3f} ms "
                f"({value['layout']['dense']}), exported {value['exported']:.3f} ms "
                f"({value['layout']['exported']}) (×{value['speedup']:.2f}; in wall time "
                f"×{value['wall_time']['speedup']:.2f})"
            )
    speedup = summary.get("measured_speedup", {})
    for key, value in speedup.items():
        if key.startswith("batch_"):
            lines.append(
                f"measured speed-up on {speedup['device']}, batch {key.removeprefix('batch_')}: "
                f"×{value['median']:.2f} (min {value['min']:.2f}, max {value['max']:.2f}, "
                f"{speedup['pairs']} pairs)"
            )
    lines.append(f"exported model: {summary.get('exported_model', '–')}")
    return "\n".join(lines)
