"""What a report knows about a run: read from its directory's files, never recomputed.

A run directory holds config.yaml (the training settings), results.json (what `advprune eval` and
the methods measured) and model.safetensors (weights, with the architecture and the method in its
header). A report reads only these; a field none of them holds is None and shows as "–".

results.json fields read (all optional): "accuracy" {clean, fgsm, pgd, cw, autoattack, transfer}
as fractions, "examples" {attack: count}, "attacks" {attack: {"description"}}, "eps", "method",
"dataset", "model", "sparsity", "unit_sparsity", "params", "nonzero_params", "flops",
"vulnerability" (a number or {"overall": number, "per_layer": {layer: number} or [numbers]}),
"gradient_masking_check" {"passed", "security_curve"}, and from an exported (ANP-VS) run
"complexity" {"exported": {"params", "nonzero_params", "flops"}} (which then counts for the
run: it is what the pruned network costs), "memory_fraction", "flops_speedup" and "latency"
(milliseconds of one forward pass: a number, {"ms": number} or {"batch_1": {"exported" or
"model": ms}}); from any exported run (ANP-VS or `--structure channels`) "channel_sparsity" and
"measured_speedup" {"batch_N": {"median", "min", "max"}}.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from advprune.core.errors import ConfigError
from advprune.core.io import read_json
from advprune.core.run_dir import RunDir
from advprune.core.tensor_files import load_tensors, read_metadata

ACCURACY_KEYS = ("clean", "fgsm", "pgd", "cw", "autoattack", "transfer")
RUN_FILES = ("config.yaml", "results.json", "model.safetensors")


@dataclass
class RunSummary:
    """One run as a report shows it; None (or empty) where the run's files do not say."""

    path: Path
    method: str | None = None
    dataset: str | None = None
    model: str | None = None
    eps: float | None = None
    sparsity: float | None = None  # fraction of conv/linear weights that are zero
    unit_sparsity: float | None = None  # fraction of units/channels removed (ANP-VS)
    channel_sparsity: float | None = None  # fraction of channel-group channels removed
    # exported network vs dense, per batch size ("batch_128"): median, min and max of the ratios
    measured_speedup: dict[str, dict[str, float]] = field(default_factory=dict)
    params: int | None = None
    nonzero_params: int | None = None
    flops: int | None = None
    latency_ms: float | None = None  # one forward pass of one image
    memory_fraction: float | None = None  # exported network's memory / the dense network's
    flops_speedup: float | None = None  # dense network's FLOPs / the exported network's
    accuracy: dict[str, float] = field(default_factory=dict)  # fractions in [0, 1]
    examples: dict[str, int] = field(default_factory=dict)
    vulnerability: float | None = None
    layer_vulnerability: dict[str, float] = field(default_factory=dict)
    security_curve: list[dict[str, float]] = field(default_factory=list)
    masking_check_passed: bool | None = None
    attack_descriptions: dict[str, str] = field(default_factory=dict)


def number(value: Any) -> float | None:
    """`value` if it is a finite number (not a bool), else None: a malformed field is absent."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def count(value: Any) -> int | None:
    as_number = number(value)
    return None if as_number is None else int(as_number)


def first(*values: Any) -> Any:
    """The first value that is not None (None if all are)."""
    return next((value for value in values if value is not None), None)


def text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _latency_ms(value: Any) -> float | None:
    if not isinstance(value, Mapping):
        return number(value)
    batch_1 = mapping(value.get("batch_1"))
    return first(
        number(value.get("ms")),
        number(batch_1.get("exported")),
        number(batch_1.get("model")),
        number(batch_1.get("dense")),
    )


def _speedups(value: Any) -> dict[str, dict[str, float]]:
    batches = {k: mapping(v) for k, v in mapping(value).items() if k.startswith("batch_")}
    return {
        batch: {key: float(spread[key]) for key in ("median", "min", "max")}
        for batch, spread in batches.items()
        if all(number(spread.get(key)) is not None for key in ("median", "min", "max"))
    }


def _vulnerability(value: Any) -> tuple[float | None, dict[str, float]]:
    if not isinstance(value, Mapping):
        return number(value), {}
    per_layer = value.get("per_layer")
    if isinstance(per_layer, list):
        per_layer = {f"layer {i + 1}": v for i, v in enumerate(per_layer)}
    layers = {str(k): v for k, v in mapping(per_layer).items() if number(v) is not None}
    return number(value.get("overall")), {k: float(v) for k, v in layers.items()}


def _curve(value: Any) -> list[dict[str, float]]:
    if not isinstance(value, list):
        return []
    points = [mapping(p) for p in value]
    if any(number(p.get("eps")) is None or number(p.get("accuracy")) is None for p in points):
        return []
    return [{"eps": float(p["eps"]), "accuracy": float(p["accuracy"])} for p in points]


def summarize(
    results: Mapping[str, Any],
    path: str | os.PathLike = "",
    model_metadata: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
) -> RunSummary:
    """A `RunSummary` from a results dict, the model file's metadata and the run's config.

    results.json wins over the model file, which wins over config.yaml: the evaluation states what
    was measured, the model what was trained, the config only what was asked for.
    """
    metadata = mapping(model_metadata)
    config = mapping(config)
    trained = mapping(metadata.get("config"))
    architecture = mapping(metadata.get("architecture"))
    accuracy = mapping(results.get("accuracy"))
    masking = mapping(results.get("gradient_masking_check"))
    exported = mapping(mapping(results.get("complexity")).get("exported"))
    vulnerability, layer_vulnerability = _vulnerability(results.get("vulnerability"))
    passed = masking.get("passed")
    return RunSummary(
        path=Path(path),
        method=first(
            text(results.get("method")), text(mapping(metadata.get("method")).get("name"))
        ),
        dataset=first(
            text(results.get("dataset")), text(trained.get("dataset")), text(config.get("dataset"))
        ),
        model=first(
            text(results.get("model")), text(architecture.get("name")), text(config.get("model"))
        ),
        eps=first(
            number(results.get("eps")), number(metadata.get("eps")), number(config.get("eps"))
        ),
        sparsity=number(results.get("sparsity")),
        unit_sparsity=number(results.get("unit_sparsity")),
        channel_sparsity=number(results.get("channel_sparsity")),
        measured_speedup=_speedups(results.get("measured_speedup")),
        params=first(count(exported.get("params")), count(results.get("params"))),
        nonzero_params=first(
            count(exported.get("nonzero_params")), count(results.get("nonzero_params"))
        ),
        flops=first(count(exported.get("flops")), count(results.get("flops"))),
        latency_ms=_latency_ms(results.get("latency")),
        memory_fraction=number(results.get("memory_fraction")),
        flops_speedup=number(results.get("flops_speedup")),
        accuracy={k: float(v) for k, v in accuracy.items() if number(v) is not None},
        examples={
            k: int(v) for k, v in mapping(results.get("examples")).items() if count(v) is not None
        },
        vulnerability=vulnerability,
        layer_vulnerability=layer_vulnerability,
        security_curve=_curve(masking.get("security_curve")),
        masking_check_passed=passed if isinstance(passed, bool) else None,
        attack_descriptions={
            name: settings["description"]
            for name, settings in mapping(results.get("attacks")).items()
            if text(mapping(settings).get("description"))
        },
    )


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in RUN_FILES)


def _read_config(path: Path) -> Mapping[str, Any]:
    try:
        return mapping(yaml.safe_load(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return {}
    except yaml.YAMLError as err:
        first_line = str(err).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML ({first_line}); repair or delete it") from err


def read_run(path: str | os.PathLike) -> RunSummary:
    """Summarise the run directory `path` from its files; missing files leave fields empty."""
    run = RunDir.existing(path)
    results = read_json(run.results, "results file") if run.results.is_file() else {}
    metadata = read_metadata(run.model, "model file") if run.model.is_file() else {}
    return summarize(mapping(results), run.path, metadata, _read_config(run.config))


def find_runs(paths: list[str | os.PathLike]) -> list[Path]:
    """The run directories among `paths`, and below any path that is not a run itself (sorted)."""
    found: list[Path] = []
    for given in map(Path, paths):
        if not given.is_dir():
            raise ConfigError(f"{given} is not a directory; pass run directories to report on")
        runs = [given] if is_run_dir(given) else sorted(_runs_below(given))
        if not runs:
            raise ConfigError(
                f"no run directory in {given} (a run directory holds {', '.join(RUN_FILES)})"
            )
        found += [run for run in runs if run not in found]
    return found


def _runs_below(folder: Path) -> Iterator[Path]:
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            if is_run_dir(child):
                yield child
            else:
                yield from _runs_below(child)


def layer_sparsity(run_path: str | os.PathLike) -> dict[str, float]:
    """Fraction of zero entries of each conv/linear weight (tensors of ≥ 2 dimensions) in the
    run's model.safetensors, by layer name; empty when the run has no model."""
    model_file = RunDir(Path(run_path)).model
    if not model_file.is_file():
        return {}
    tensors, _ = load_tensors(model_file, "model file")
    return {
        name.removesuffix(".weight"): float((t == 0).float().mean())
        for name, t in tensors.items()
        if name.endswith(".weight") and t.dim() >= 2
    }
