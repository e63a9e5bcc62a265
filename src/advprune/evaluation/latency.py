"""Measured CPU latency: what a physically smaller network buys, as opposed to counted FLOPs.

A latency in milliseconds says as much about the machine as about the network, and two runs timed
minutes apart on a shared machine differ by more than many pruning methods gain. So every model is
timed against its dense reference in the same process, interleaved — A B A B …, one pass of each
per repeat — and what results.json keeps is the ratio: the median over repeats of the per-pair
ratio model/dense, with its min–max range. A load change during the measurement slows both members
of a pair alike and cancels in their ratio. Absolute times are kept beside the device name.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from advprune.evaluation.provenance import device_name

LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def time_interleaved(
    models: dict[Any, nn.Module],
    input_shape: Sequence[int],
    batch_size: int,
    *,
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 30,
    device: torch.device | str = "cpu",
) -> dict[str, dict[Any, list[float]]]:
    """Milliseconds of each forward pass of each model (already on `device`) under `threads` CPU
    threads, the models taking turns within every repeat: {"wall": {name: [ms per repeat]},
    "cpu": {…}}. On CUDA each pass is timed between two synchronisations.

    Wall-clock time is the latency; the process's CPU time is kept beside it because, on a machine
    shared with other jobs, it is what preemption does not inflate. Inference mode, after `warmup`
    untimed passes of each model.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    synchronize = torch.cuda.synchronize if torch.device(device).type == "cuda" else _no_sync
    try:
        x = torch.rand((batch_size, *input_shape), generator=torch.Generator().manual_seed(0))
        x = x.to(device)
        wall: dict[Any, list[float]] = {name: [] for name in models}
        cpu: dict[Any, list[float]] = {name: [] for name in models}
        with torch.inference_mode():
            for model in models.values():
                model.eval()
                for _ in range(warmup):
                    model(x)
            for _ in range(repeats):
                for name, model in models.items():
                    synchronize()
                    started, started_cpu = time.perf_counter(), time.process_time()
                    model(x)
                    synchronize()
                    wall[name].append(1000 * (time.perf_counter() - started))
                    cpu[name].append(1000 * (time.process_time() - started_cpu))
    finally:
        torch.set_num_threads(previous)
    return {"wall": wall, "cpu": cpu}


def _no_sync() -> None:
    """CPU passes end when the call returns."""


def paired_latency(
    model: nn.Module,
    dense: nn.Module,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 128),
    *,
    threads: int = 1,
    repeats: int = 30,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """`model`'s latency as a multiple of `dense`'s, per batch size, on `device`: {"batch_B":
    {"ratio": median of model/dense over the pairs, "ratio_range": [min, max], "model": ms,
    "dense": ms, "layout": {name: layout}, "cpu_time": {…}}} plus the device, its name, threads
    and repeats.

    Each network is timed in both memory layouts and counted in its faster one: on CPU a layout
    can change a layer's time several-fold (NCHW max-pooling is ~7× slower than channels_last
    here), and a ratio against a baseline left in its slow layout would be the layout's.
    """
    names = {"model": model, "dense": dense}
    copies = {
        (name, layout): copy.deepcopy(network).to(device, memory_format=memory_format)
        for name, network in names.items()
        for layout, memory_format in LAYOUTS.items()
    }
    result: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name(torch.device(device)),
        "threads": threads,
        "repeats": repeats,
        "unit": "ms",
        "ratio_of": "model / dense",
    }
    for batch_size in batch_sizes:
        times = time_interleaved(
            copies, input_shape, batch_size, threads=threads, repeats=repeats, device=device
        )
        result[f"batch_{batch_size}"] = _pair_summary(times, list(names))
    return result


def _pair_summary(times: dict[str, dict[Any, list[float]]], names: list[str]) -> dict[str, Any]:
    """Each network in its faster layout (by median wall time), and the per-repeat ratios of the
    first network to the second, which were timed in the same repeats."""
    median = {key: statistics.median(samples) for key, samples in times["wall"].items()}
    layout = {name: min(LAYOUTS, key=lambda lay: median[(name, lay)]) for name in names}
    first, second = ((name, layout[name]) for name in names)
    ratios = [a / b for a, b in zip(times["wall"][first], times["wall"][second], strict=True)]
    cpu_ratios = [
        a / max(b, 1e-9) for a, b in zip(times["cpu"][first], times["cpu"][second], strict=True)
    ]
    return {
        "ratio": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        **{name: median[(name, layout[name])] for name in names},
        "layout": layout,
        "cpu_time": {
            **{name: statistics.median(times["cpu"][(name, layout[name])]) for name in names},
            "ratio": statistics.median(cpu_ratios),
        },
    }


def latency_comparison(
    dense: nn.Module,
    exported: nn.Module,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 128),
    *,
    threads: int = 1,
    repeats: int = 30,
    device: torch.device | str = "cpu",
) -> dict:
    """Dense vs exported, as `advprune export` records it: `paired_latency` of the exported
    network (its keys "exported" and "dense"), with the speed-up dense/exported beside the ratio
    exported/dense."""
    result = paired_latency(
        exported, dense, input_shape, batch_sizes, threads=threads, repeats=repeats, device=device
    )
    result["ratio_of"] = "exported / dense"
    for key, value in result.items():
        if key.startswith("batch_"):
            value["exported"] = value.pop("model")
            value["layout"]["exported"] = value["layout"].pop("model")
            value["cpu_time"]["exported"] = value["cpu_time"].pop("model")
            value["speedup"] = 1 / value["ratio"]
            value["cpu_time"]["speedup"] = 1 / max(value["cpu_time"]["ratio"], 1e-9)
    return result


def measured_speedup(comparison: dict[str, Any]) -> dict[str, Any]:
    """The speed-up dense/exported of a `latency_comparison`, as the spread of its paired
    ratios: per batch size {"median", "min", "max", "dense_ms", "exported_ms", "layout"}."""
    result: dict[str, Any] = {
        key: comparison[key] for key in ("device", "device_name", "threads") if key in comparison
    }
    result["pairs"] = comparison.get("repeats")
    for key, value in comparison.items():
        if key.startswith("batch_"):
            low, high = value["ratio_range"]
            result[key] = {
                "median": value["speedup"],
                "min": 1 / max(high, 1e-9),
                "max": 1 / max(low, 1e-9),
                "dense_ms": value["dense"],
                "exported_ms": value["exported"],
                "layout": value["layout"],
            }
    return result
