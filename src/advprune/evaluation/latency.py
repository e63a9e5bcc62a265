"""Measured latency: what a physically smaller network buys, as opposed to counted FLOPs."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def measure_latencies(
    models: dict[Any, nn.Module],
    input_shape: Sequence[int],
    batch_size: int,
    *,
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 30,
    device: torch.device | str = "cpu",
) -> dict[str, dict[Any, float]]:
    """Median milliseconds of one forward pass of each model (already on `device`), under
    `threads` CPU threads: {"wall": {name: ms}, "cpu": {name: ms}}. On CUDA each pass is timed
    between two synchronisations.

    Wall-clock time is the latency; the process's CPU time is reported beside it because, on a
    machine shared with other jobs, it is what preemption does not inflate. The models take
    turns within each repeat, so load that changes during the measurement slows them alike;
    inference mode, after `warmup` untimed passes.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.rand((batch_size, *input_shape), generator=torch.Generator().manual_seed(0))
        x = x.to(device)
        synchronize = torch.cuda.synchronize if torch.device(device).type == "cuda" else _no_sync
        wall: dict[str, list[float]] = {name: [] for name in models}
        cpu: dict[str, list[float]] = {name: [] for name in models}
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
                    wall[name].append(time.perf_counter() - started)
                    cpu[name].append(time.process_time() - started_cpu)
    finally:
        torch.set_num_threads(previous)
    return {
        kind: {name: 1000 * statistics.median(samples) for name, samples in times.items()}
        for kind, times in (("wall", wall), ("cpu", cpu))
    }


def _no_sync() -> None:
    """CPU passes end when the call returns."""


LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def best_layout_latencies(
    models: dict[str, nn.Module],
    input_shape: Sequence[int],
    batch_sizes: Sequence[int],
    *,
    threads: int = 1,
    repeats: int = 30,
    device: torch.device | str = "cpu",
) -> dict[int, dict[str, dict[str, Any]]]:
    """Each model timed in both memory layouts and counted in its faster one, per batch size:
    {batch_size: {name: {"wall": ms, "cpu": ms, "layout": "nchw" | "channels_last"}}}.

    On CPU a layout can change a layer's time several-fold (NCHW max-pooling is ~7× slower than
    channels_last here); a speed-up over a baseline left in its slow layout would be the
    layout's, not the pruning's.
    """
    copies = {
        (name, layout): copy.deepcopy(model).to(device, memory_format=memory_format)
        for name, model in models.items()
        for layout, memory_format in LAYOUTS.items()
    }
    best: dict[int, dict[str, dict[str, Any]]] = {}
    for batch_size in batch_sizes:
        ms = measure_latencies(
            copies, input_shape, batch_size, threads=threads, repeats=repeats, device=device
        )
        best[batch_size] = {}
        for name in models:
            layout = min(LAYOUTS, key=lambda layout: ms["wall"][(name, layout)])
            best[batch_size][name] = {
                "wall": ms["wall"][(name, layout)],
                "cpu": ms["cpu"][(name, layout)],
                "layout": layout,
            }
    return best


def _header(threads: int, repeats: int) -> dict[str, Any]:
    return {"device": "cpu", "threads": threads, "repeats": repeats, "unit": "ms"}


def model_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 128),
    *,
    threads: int = 1,
    repeats: int = 10,
) -> dict:
    """Median CPU latency (ms) of `model` per batch size, in its faster layout, so that every run
    of a report has one (unstructured sparsity leaves it unchanged: dense kernels)."""
    best = best_layout_latencies(
        {"model": model}, input_shape, batch_sizes, threads=threads, repeats=repeats
    )
    return {
        **_header(threads, repeats),
        **{
            f"batch_{batch_size}": {
                "model": times["model"]["wall"],
                "layout": times["model"]["layout"],
                "cpu_time": times["model"]["cpu"],
            }
            for batch_size, times in best.items()
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
) -> dict:
    """Dense vs exported median latency (ms) per batch size, each in its faster layout (named
    under "layout"), and the speed-up dense/exported in wall-clock time, with the same in CPU
    time under "cpu_time"."""
    models = {"dense": dense, "exported": exported}
    best = best_layout_latencies(models, input_shape, batch_sizes, threads=threads, repeats=repeats)
    result = _header(threads, repeats)
    for batch_size, times in best.items():
        wall = {name: times[name]["wall"] for name in models}
        cpu = {name: times[name]["cpu"] for name in models}
        result[f"batch_{batch_size}"] = {
            **wall,
            "speedup": wall["dense"] / wall["exported"],
            "layout": {name: times[name]["layout"] for name in models},
            "cpu_time": {**cpu, "speedup": cpu["dense"] / max(cpu["exported"], 1e-9)},
        }
    return result


def paired_speedup(
    models: dict[str, nn.Module],
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 128),
    *,
    threads: int = 1,
    pairs: int = 30,
    device: torch.device | str = "cpu",
) -> dict:
    """How many times faster the second of two `models` runs than the first (the reference), as
    the spread of paired ratios.

    Each model first picks its faster memory layout (5 passes in each), then the two run in
    `pairs` interleaved pairs (reference, other, reference, …) in this process, and every pair
    gives one ratio reference/other: load that comes and goes hits both passes of a pair alike.
    Per batch size: {"median", "min", "max"} of the ratios, each model's median milliseconds
    ("NAME_ms") and its layout; on `device` (CUDA passes synchronised).
    """
    if len(models) != 2:
        raise ValueError(f"paired_speedup compares two models, got {len(models)}")
    reference, other = models
    best = best_layout_latencies(
        models, input_shape, batch_sizes, threads=threads, repeats=5, device=device
    )
    result: dict[str, Any] = {"device": str(device), "threads": threads, "pairs": pairs}
    for batch_size in batch_sizes:
        layouts = {name: best[batch_size][name]["layout"] for name in models}
        copies = {
            name: copy.deepcopy(model).to(device, memory_format=LAYOUTS[layouts[name]])
            for name, model in models.items()
        }
        options = {"threads": threads, "repeats": 1, "device": device}
        measure_latencies(copies, input_shape, batch_size, warmup=5, **options)  # fresh copies
        times = [
            measure_latencies(copies, input_shape, batch_size, warmup=0, **options)["wall"]
            for _ in range(pairs)
        ]
        ratios = [t[reference] / max(t[other], 1e-9) for t in times]
        result[f"batch_{batch_size}"] = {
            "median": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
            **{f"{name}_ms": statistics.median(t[name] for t in times) for name in models},
            "layout": layouts,
        }
    return result
