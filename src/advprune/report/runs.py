"""What a report knows about a run: read from its directory's files, never recomputed.

A run directory holds config.yaml (the training settings), results.json (what `advprune eval` and
the methods measured) and model.safetensors (weights, with the architecture and the method in its
header). A report reads only these; a field none of them holds is None and shows as "–".

results.json fields read (all optional): "accuracy" {clean, fgsm, pgd, cw, autoattack, transfer,
fmn, pgd_eot, autoattack_rand, worst_case} as fractions, "examples" {attack: count},
"accuracy_interval" {attack: [low, high]} (else computed from the accuracy and the count),
"attacks" {attack: {"description"}}, "eps", "method", "dataset", "model", "sparsity",
"unit_sparsity", "params", "nonzero_params", "flops", "vulnerability" (a number or {"overall":
number, "per_layer": {layer: number} or [numbers]}), "gradient_masking_check" {"passed",
"security_curve", "examples"}, "attack_failure_indicators" {"passed", "indicators"},
"chance_check" {"passed", "chance", "problems"}, "protocol" {"name"}, and from an exported
(ANP-VS or `--structure channels`) run "complexity" {"exported": {"params", "nonzero_params",
"flops"}} (which then counts for the run: it is what the pruned network costs),
"memory_fraction", "flops_speedup", "channel_sparsity", "measured_speedup" {"batch_N":
{"median", "min", "max"}} and "latency": the paired ratio to the dense network per batch
({"batch_1": {"ratio", "ratio_range", "model" or "exported": ms, "dense": ms}, "device_name"}),
or in older files milliseconds (a number, {"ms": number} or {"batch_1": {"exported" or "model":
ms}}).

A run's own results.json is the evaluation at the run's own ε; evaluations at another ε or under
a protocol (results-eps0.05.json, results-ap-benchmark.json) sit beside it and are not read
unless asked for by `results_name`.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from advprune.core.errors import AdvpruneError, ConfigError
from advprune.core.io import read_json
from advprune.core.run_dir import RunDir
from advprune.core.tensor_files import load_tensors, read_metadata
from advprune.evaluation.statistics import wilson_interval
from advprune.models import create_model
from advprune.models.layer_names import display_names
from advprune.models.serialization import ARCHITECTURE_KEYS

ACCURACY_KEYS = ("clean", "fgsm", "pgd", "cw", "autoattack", "transfer")
EXTRA_ACCURACY_KEYS = ("fmn", "pgd_eot", "autoattack_rand", "worst_case")  # shown when present
LATENCY_BATCHES = (1, 128)
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
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # Wilson 95 %
    latency_ratio: dict[int, tuple[float, float | None, float | None]] = field(
        default_factory=dict
    )  # batch → (ratio to dense, range low, range high)
    latency_absolute: dict[int, tuple[float | None, float | None]] = field(default_factory=dict)
    latency_device: str | None = None
    curve_examples: int | None = None
    vulnerability_examples: int | None = None  # the test examples its attack ran on
    # module name → the name a reader knows the layer by (conv1, fc1), in network order
    layer_names: dict[str, str] = field(default_factory=dict)
    num_classes: int | None = None
    indicators_passed: bool | None = None
    failed_indicators: list[str] = field(default_factory=list)
    at_chance: bool | None = None
    protocol: str | None = None
    # A step's runs over seeds that this summary is the mean of (report.seeds); empty for a run.
    members: list[RunSummary] = field(default_factory=list)


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


def _latency_ratio(value: Any, batch: int) -> tuple[float, float | None, float | None] | None:
    """(ratio, low, high) of the model's latency to its dense network's at `batch`; from the
    paired measurement, or the ratio of the two medians of an older export record."""
    entry = mapping(mapping(value).get(f"batch_{batch}"))
    ratio = number(entry.get("ratio"))
    if ratio is not None:
        low, high = [*list(entry.get("ratio_range") or []), None, None][:2]
        return ratio, number(low), number(high)
    timed, dense = (
        first(number(entry.get("exported")), number(entry.get("model"))),
        number(entry.get("dense")),
    )
    return (timed / dense, None, None) if timed is not None and dense else None


def _latency_absolute(value: Any, batch: int) -> tuple[float | None, float | None] | None:
    entry = mapping(mapping(value).get(f"batch_{batch}"))
    timed = first(number(entry.get("exported")), number(entry.get("model")))
    if timed is None:
        return None
    return timed, number(entry.get("dense"))


def _intervals(results: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """Each accuracy's Wilson 95 % interval: as results.json holds it, or from its count."""
    stored = mapping(results.get("accuracy_interval"))
    examples = mapping(results.get("examples"))
    intervals = {}
    for name, value in mapping(results.get("accuracy")).items():
        pair = stored.get(name)
        if isinstance(pair, list) and len(pair) == 2 and all(number(v) is not None for v in pair):
            intervals[name] = (float(pair[0]), float(pair[1]))
        elif number(value) is not None and count(examples.get(name)):
            total = count(examples[name])
            intervals[name] = wilson_interval(round(float(value) * total), total)
    return intervals


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
    architecture = mapping(metadata.get("architecture"))
    accuracy = mapping(results.get("accuracy"))
    masking = mapping(results.get("gradient_masking_check"))
    exported = mapping(mapping(results.get("complexity")).get("exported"))
    vulnerability, layer_vulnerability = _vulnerability(results.get("vulnerability"))
    passed = masking.get("passed")
    return RunSummary(
        path=Path(path),
        **_identity(results, metadata, config),
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
        masking_check_passed=_flag(passed),
        attack_descriptions={
            name: settings["description"]
            for name, settings in mapping(results.get("attacks")).items()
            if text(mapping(settings).get("description"))
        },
        **_checks_and_costs(results, architecture),
    )


def _identity(
    results: Mapping[str, Any], metadata: Mapping[str, Any], config: Mapping[str, Any]
) -> dict[str, Any]:
    """The run's method (its label names every setting that departs from the published method:
    mad [scheme=…]), dataset, model and ε, each from the first source that has it."""
    trained = mapping(metadata.get("config"))
    architecture = mapping(metadata.get("architecture"))
    method = mapping(metadata.get("method"))
    return {
        "method": first(
            text(method.get("label")), text(results.get("method")), text(method.get("name"))
        ),
        "dataset": first(
            text(results.get("dataset")), text(trained.get("dataset")), text(config.get("dataset"))
        ),
        "model": first(
            text(results.get("model")), text(architecture.get("name")), text(config.get("model"))
        ),
        "eps": first(
            number(results.get("eps")), number(metadata.get("eps")), number(config.get("eps"))
        ),
    }


def _checks_and_costs(results: Mapping[str, Any], architecture: Mapping[str, Any]) -> dict:
    """The summary's fields from the checks, the intervals and the paired latency."""
    indicators = mapping(results.get("attack_failure_indicators"))
    chance = mapping(results.get("chance_check"))
    latency = results.get("latency")
    chance_level = number(chance.get("chance"))
    return {
        "intervals": _intervals(results),
        "latency_ratio": {
            b: r for b in LATENCY_BATCHES if (r := _latency_ratio(latency, b)) is not None
        },
        "latency_absolute": {
            b: t for b in LATENCY_BATCHES if (t := _latency_absolute(latency, b)) is not None
        },
        "latency_device": text(mapping(latency).get("device_name")),
        "curve_examples": count(mapping(results.get("gradient_masking_check")).get("examples")),
        "vulnerability_examples": count(
            mapping(results.get("examples")).get(
                mapping(results.get("vulnerability")).get("attack")
            )
        ),
        "layer_names": layer_display_names(architecture),
        "num_classes": first(
            count(architecture.get("num_classes")),
            round(1 / chance_level) if chance_level else None,
        ),
        "indicators_passed": _flag(indicators.get("passed")),
        "failed_indicators": [
            name.replace("_", " ")
            for name, entry in mapping(indicators.get("indicators")).items()
            if mapping(entry).get("passed") is False
        ],
        "at_chance": None if _flag(chance.get("passed")) is None else not chance["passed"],
        "protocol": text(mapping(results.get("protocol")).get("name")),
    }


def layer_display_names(architecture: Mapping[str, Any]) -> dict[str, str]:
    """Module name → display name (conv1, fc1: `models.layer_names`) of the run's network, rebuilt
    from its recorded architecture; empty when the model file does not say or the network can no
    longer be built (the module names are shown then)."""
    if not all(key in architecture for key in ARCHITECTURE_KEYS):
        return {}
    return dict(_display_names(json.dumps({k: architecture[k] for k in ARCHITECTURE_KEYS})))


@functools.lru_cache(maxsize=32)
def _display_names(architecture: str) -> tuple[tuple[str, str], ...]:
    try:
        model = create_model(**json.loads(architecture))
    except AdvpruneError:
        return ()
    return tuple(display_names(model).items())


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


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


def read_run(path: str | os.PathLike, results_name: str = "results.json") -> RunSummary:
    """Summarise the run directory `path` from its files; missing files leave fields empty.

    `results_name` picks an evaluation beside the run's own, e.g. "results-ap-benchmark.json".
    """
    run = RunDir.existing(path)
    results_file = run.path / results_name
    results = read_json(results_file, "results file") if results_file.is_file() else {}
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
