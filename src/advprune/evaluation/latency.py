"""Measured CPU latency: what a physically smaller network buys, as opposed to counted FLOPs.

A latency in milliseconds says as much about the machine as about the network, and two runs timed
minutes apart on a shared machine differ by more than many pruning methods gain. So every model is
timed against its dense reference in the same process, interleaved — A B A B …, one sample of each
per repeat — and what results.json keeps is the ratio: the median over repeats of the per-pair
ratio model/dense, with its min–max range. A load change during the measurement slows both members
of a pair alike and cancels in their ratio. Absolute times are kept beside the device name.

A sample is a block of passes at least `MIN_SAMPLE_MS` long (a LeNet pass at batch 1 takes 0.4 ms,
shorter than a scheduler's time slice), and on a CPU the ratio is of the process's CPU time, which
another job's time slices do not inflate (benchmarks/latency_noise.py measures both ways on
identical networks; docs/benchmarks.md). With one thread a pass's CPU time is its latency on an
idle core; the wall-clock figures are kept beside. On CUDA the ratio is of wall time between
synchronisations.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from advprune.evaluation.provenance import device_name

LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
MIN_SAMPLE_MS = 30.0
LAYOUT_REPEATS = 5  # interleaved samples of each network in each layout that choose its layout


def time_interleaved(
    models: dict[Any, nn.Module],
    input_shape: Sequence[int],
    batch_size: int,
    *,
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 30,
    device: torch.device | str = "cpu",
    min_sample_ms: float = MIN_SAMPLE_MS,
) -> dict[str, Any]:
    """Milliseconds per forward pass of each model (already on `device`) under `threads` CPU
    threads, the models taking turns within every repeat: {"wall": {name: [ms per repeat]},
    "cpu": {…}, "passes": passes per sample}. On CUDA each sample is timed between two
    synchronisations.

    Each sample times the same number of passes of every model, enough for the fastest to run
    `min_sample_ms`. Inference mode, after `warmup` untimed passes of each model.
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
            fastest = min(_sample(model, x, 1, synchronize)[0] for model in models.values())
            passes = max(1, math.ceil(min_sample_ms / max(fastest, 1e-6)))
            for _ in range(repeats):
                for name, model in models.items():
                    wall_ms, cpu_ms = _sample(model, x, passes, synchronize)
                    wall[name].append(wall_ms / passes)
                    cpu[name].append(cpu_ms / passes)
    finally:
        torch.set_num_threads(previous)
    return {"wall": wall, "cpu": cpu, "passes": passes}


def _sample(
    model: nn.Module, x: torch.Tensor, passes: int, synchronize: Callable[[], None]
) -> tuple[float, float]:
    """(wall ms, CPU ms) of `passes` forward passes of `model` on `x`."""
    synchronize()
    started, started_cpu = time.perf_counter(), time.process_time()
    for _ in range(passes):
        model(x)
    synchronize()
    return 1000 * (time.perf_counter() - started), 1000 * (time.process_time() - started_cpu)


def _no_sync() -> None:
    """CPU passes end when the call returns."""


def in_every_layout(
    models: dict[Any, nn.Module], device: torch.device | str
) -> dict[tuple[Any, str], nn.Module]:
    """A copy of each model on `device` in each memory layout of `LAYOUTS`, by (key, layout)."""
    return {
        (key, layout): copy.deepcopy(model).to(device, memory_format=memory_format)
        for key, model in models.items()
        for layout, memory_format in LAYOUTS.items()
    }


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
    "dense": ms, "clock": "cpu" | "wall", "layout": {name: layout}, "wall_time": {…},
    "cpu_time": {…}}} plus the device, its name, threads and repeats.

    Each network runs in its faster memory layout: on CPU a layout can change a layer's time
    several-fold (NCHW max-pooling is ~7× slower than channels_last here), and a ratio against
    a baseline left in its slow layout would be the layout's. The layouts are chosen on
    `LAYOUT_REPEATS` samples of both networks in both, and the pairs are then timed afresh in
    the chosen ones: half the samples of timing every layout in every pair, and the choice does
    not select the samples it is measured by.
    """
    names = {"model": model, "dense": dense}
    copies = in_every_layout(names, device)
    result: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name(torch.device(device)),
        "threads": threads,
        "repeats": repeats,
        "unit": "ms",
        "ratio_of": "model / dense",
    }
    timing = {"threads": threads, "device": device}
    for batch_size in batch_sizes:
        layout = faster_layouts(copies, input_shape, batch_size, **timing)
        chosen = {name: copies[(name, layout[name])] for name in names}
        times = time_interleaved(chosen, input_shape, batch_size, repeats=repeats, **timing)
        result[f"batch_{batch_size}"] = _pair_summary(times, layout, device)
    return result


def faster_layouts(
    copies: dict[tuple[Any, str], nn.Module],
    input_shape: Sequence[int],
    batch_size: int,
    *,
    threads: int,
    device: torch.device | str,
) -> dict[Any, str]:
    """Each network's faster layout among its copies by (key, layout) (`in_every_layout`), on
    `LAYOUT_REPEATS` interleaved samples: by CPU time on a CPU, by wall time on CUDA."""
    times = time_interleaved(
        copies, input_shape, batch_size, threads=threads, repeats=LAYOUT_REPEATS, device=device
    )
    median = _medians(times, device)
    keys = dict.fromkeys(key for key, _ in copies)
    return {key: min(LAYOUTS, key=lambda layout: median[(key, layout)]) for key in keys}


def _medians(times: dict[str, Any], device: torch.device | str) -> dict[Any, float]:
    """Each timed copy's median milliseconds on the device's clock (`_clock`)."""
    return {key: statistics.median(samples) for key, samples in times[_clock(device)].items()}


def _clock(device: torch.device | str) -> str:
    """The clock a latency is read on: wall time between synchronisations on CUDA, the
    process's CPU time on a CPU (another job's time slices do not count)."""
    return "wall" if torch.device(device).type == "cuda" else "cpu"


def _pair_summary(
    times: dict[str, Any], layout: dict[str, str], device: torch.device | str
) -> dict[str, Any]:
    """The per-repeat ratios of the first network to the second, which were timed in the same
    repeats, each in its `layout`: by `_clock`, the other clock's medians beside."""
    clock = _clock(device)
    names = list(layout)

    def clock_summary(samples: dict[Any, list[float]]) -> dict[str, Any]:
        first, second = (samples[name] for name in names)
        ratios = [a / max(b, 1e-9) for a, b in zip(first, second, strict=True)]
        return {
            **{name: statistics.median(samples[name]) for name in names},
            "ratio": statistics.median(ratios),
            "ratio_range": [min(ratios), max(ratios)],
        }

    chosen = clock_summary(times[clock])
    return {
        **chosen,
        "clock": clock,
        "layout": layout,
        "passes_per_sample": times["passes"],
        "wall_time": clock_summary(times["wall"]),
        "cpu_time": clock_summary(times["cpu"]),
    }


def fastest_model(
    models: dict[Any, nn.Module],
    input_shape: Sequence[int],
    batch_size: int,
    *,
    threads: int = 1,
    repeats: int = 10,
    device: torch.device | str = "cpu",
    prefer_within: float = 0.0,
) -> tuple[Any, dict[Any, float]]:
    """The key of the model that runs fastest, each in its faster memory layout, all timed
    interleaved (`time_interleaved`), and every model's median milliseconds in that layout: by
    CPU time on a CPU, by wall time on CUDA. Used to choose between equivalent networks; a
    latency to report is measured afterwards, on fresh samples. `prefer_within`: the first
    model in `models`' order that is at most that fraction slower than the fastest (list the
    preferred, e.g. smaller, ones first; `first_near_fastest`)."""
    copies = in_every_layout(models, device)
    times = time_interleaved(
        copies, input_shape, batch_size, threads=threads, repeats=repeats, device=device
    )
    median = _medians(times, device)
    medians = {key: min(median[(key, layout)] for layout in LAYOUTS) for key in models}
    return first_near_fastest(medians, prefer_within), medians


def first_near_fastest(medians: dict[Any, float], margin: float) -> Any:
    """The first key whose time is at most `margin` (a fraction) above the fastest one's; with
    margin 0, the fastest."""
    fastest = min(medians.values())
    return next(key for key, ms in medians.items() if ms <= fastest * (1 + margin))


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
            value["speedup"] = 1 / value["ratio"]
            for clock in ("wall_time", "cpu_time"):
                value[clock]["exported"] = value[clock].pop("model")
                value[clock]["speedup"] = 1 / max(value[clock]["ratio"], 1e-9)
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
