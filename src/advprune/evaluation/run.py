"""`advprune eval RUN_DIR`: evaluate a run directory's model and write its results.

The steps, each writing results.json as it finishes (see `evaluation.results`): open the run
(model, data, ε, transfer source, where results go), record what is evaluated and its
provenance, the attacks, the checks, the sizes and the paired latency; then raise if a check
failed. `out_dir` sends everything (results, plots, state files) to another folder, so that a
run directory that cannot be written to can still be evaluated.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from advprune.core.device import resolve_device
from advprune.core.errors import CheckpointError, DataError
from advprune.core.run_dir import RunDir
from advprune.core.tensor_files import read_metadata
from advprune.data import CUSTOM_DATASET, ImageDataset, get_spec, load_dataset
from advprune.evaluation.checks import run_checks
from advprune.evaluation.complexity import gated_complexity, model_complexity
from advprune.evaluation.config import EvalConfig
from advprune.evaluation.evaluate import Evaluation, run_attacks
from advprune.evaluation.latency import paired_latency
from advprune.evaluation.provenance import file_sha256, provenance
from advprune.evaluation.results import EvalOutput, ResultsStore
from advprune.evaluation.sanity import raise_on_gradient_masking
from advprune.evaluation.stochastic import sampled_gates
from advprune.evaluation.transfer import load_source, transfer_settings
from advprune.masks.export import export_gated
from advprune.masks.gated import find_gates
from advprune.models import create_model, in_trained_layout, input_shape
from advprune.models.input_check import check_network_and_data
from advprune.models.serialization import architecture_arguments, load_model

LATENCY_BATCH_SIZES = (1, 128)


def evaluate_run(
    run_dir: str | Path,
    config: EvalConfig,
    *,
    out_dir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate `RUN_DIR/model.safetensors` into `RUN_DIR/results.json` — or, at another ε or
    under a protocol, into the file beside it that `EvalOutput` names; under `out_dir` instead
    of RUN_DIR when given. Resumes what an earlier evaluation finished; returns the results."""
    config.validate()
    run = RunDir.existing(run_dir)
    evaluation, metadata = open_evaluation(run, config, out_dir, progress, log)
    describe(evaluation, run, metadata)
    run_attacks(evaluation)
    problems = run_checks(evaluation)
    record_sizes(evaluation, run, metadata)
    raise_on_gradient_masking(problems, str(run.path))
    return evaluation.store.data


def results_file(
    run_dir: str | Path, config: EvalConfig, out_dir: str | Path | None = None
) -> Path:
    """Where `evaluate_run(run_dir, config)` keeps its results: results.json at the run's own ε,
    the file beside it at another ε or under a protocol (`EvalOutput`)."""
    run = RunDir.existing(run_dir)
    metadata = read_metadata(run.model, "model file")
    dataset = metadata.get("config", {}).get("dataset")
    run_eps = metadata.get("eps") or (get_spec(dataset).default_eps if dataset else None)
    eps = config.eps if config.eps is not None else run_eps
    return EvalOutput.choose(Path(out_dir or run.path), eps, run_eps, config.protocol).results


def open_evaluation(
    run: RunDir,
    config: EvalConfig,
    out_dir: str | Path | None,
    progress: bool,
    log: Callable[[str], None],
) -> tuple[Evaluation, dict[str, Any]]:
    """Everything is checked here, before the first file is written: the model, its dataset,
    the transfer source, the attacks' needs."""
    device = resolve_device(config.device)
    model, metadata = load_model(run.model, device=device)
    model = in_trained_layout(model, metadata)
    trained = metadata.get("config", {})
    if trained.get("dataset") is None:
        raise CheckpointError(
            f"{run.model} does not name its dataset; it was not written by `advprune train`"
        )
    if config.sampled_gates:
        with sampled_gates(model, config.seed):  # refuses a model without gates
            pass
    run_eps = metadata.get("eps") or get_spec(trained["dataset"]).default_eps
    eps = config.eps if config.eps is not None else run_eps
    test = load_test_data(config, metadata, run)
    dataset = test.name
    check_network_and_data(model, test, metadata["architecture"]["num_classes"], device)
    source, source_record = None, None
    if config.transfer_from:
        source, source_metadata = load_source(config.transfer_from, run, metadata, device)
        source_record = transfer_settings(config.transfer_from, source_metadata)
    output = EvalOutput.choose(Path(out_dir or run.path), eps, run_eps, config.protocol)
    store = ResultsStore(output.results, file_sha256(run.model), log)
    title = f"{metadata['architecture']['name']} on {dataset}"
    log(
        f"evaluating {run.path} ({title}, eps {eps:g}) on {device} into {output.results}"
        + curve_note(config, len(test))
    )
    evaluation = Evaluation(
        model,
        test,
        eps,
        config,
        device,
        store,
        output,
        title,
        source,
        source_record,
        progress,
        log,
    )
    return evaluation, {**metadata, "run_eps": run_eps}


def load_test_data(config: EvalConfig, metadata: dict[str, Any], run: RunDir) -> ImageDataset:
    """The test split the run is evaluated on: its own dataset (from its recorded folder unless
    --data-dir says where it is now) or the one --dataset names, checked against the network."""
    trained = metadata["config"]
    dataset = config.dataset or trained["dataset"]
    if dataset == CUSTOM_DATASET:
        raise CheckpointError(
            f"{run.path} was trained in Python on in-memory tensors, which it does not hold; "
            "evaluate it with advprune.evaluate(model, (images, labels), eps=...) or pass "
            "--dataset NAME (and --data-dir DIR) to say which images to evaluate it on"
        )
    own = dataset == trained["dataset"]
    test = load_dataset(
        dataset,
        "test",
        data_dir=config.data_dir or (trained.get("data_dir") if own else None),
        download=config.download,
        limit=config.limit_test,
        test_fraction=trained.get("test_fraction") if own else None,
    )
    check_test_data(test, metadata, run)
    return test


def check_test_data(test: ImageDataset, metadata: dict[str, Any], run: RunDir) -> None:
    """Images of another shape, or other classes, would give numbers that mean nothing (or a
    shape error deep inside the network); labels out of range are `check_network_and_data`'s."""
    architecture = metadata["architecture"]
    where = test.source.get("data_dir") if test.source else None
    folder = f" in {where}" if where else ""
    if tuple(test.images.shape[1:]) != input_shape(architecture):
        raise DataError(
            f"test images{folder} are {tuple(test.images.shape[1:])} (C, H, W), but {run.path}'s "
            f"network takes {input_shape(architecture)}; pass the images it was trained on "
            "(--dataset/--data-dir)"
        )
    recorded = metadata.get("class_names")
    if recorded and test.class_names and list(test.class_names) != recorded:
        raise DataError(
            f"the test classes{folder} ({', '.join(test.class_names)}) differ from those "
            f"{run.path} was trained on ({', '.join(recorded)}); pass the folder it was trained "
            "on (--data-dir)"
        )


def curve_note(config: EvalConfig, test_examples: int) -> str:
    """The security curve runs unless skipped, and often takes longer than the attacks asked
    for: the first line says so, and how to skip it."""
    if not config.sanity_examples:
        return ""
    return (
        "; then the security curve (gradient-masking check) on "
        f"{min(config.sanity_examples, test_examples)} "
        "examples, often the longest part: --sanity-examples 0 skips it"
    )


def describe(evaluation: Evaluation, run: RunDir, metadata: dict[str, Any]) -> None:
    """What is evaluated, at which ε, under which protocol, and the provenance."""
    config, trained = evaluation.config, metadata.get("config", {})
    evaluation.store.data.update(
        run=str(run.path),
        model=metadata["architecture"]["name"],
        dataset=evaluation.test.name,
        method=metadata.get("method", {}).get("label")
        or metadata.get("method", {}).get("name", trained.get("objective")),
        eps=evaluation.eps,
        run_eps=metadata["run_eps"],
        provenance=provenance(
            seed=config.seed,
            device=evaluation.device,
            settings=config.to_dict(),
            run_config={**trained, "method": _method(metadata)},
        ),
    )
    if config.protocol:
        departures = config.protocol_departures()
        evaluation.store.data["protocol"] = {"name": config.protocol, "departures": departures}
    evaluation.store.save()


def _method(metadata: dict[str, Any]) -> dict[str, Any]:
    """The run's method record without the gate layout (the model file has that)."""
    return {k: v for k, v in metadata.get("method", {}).items() if k != "gates"}


def record_sizes(evaluation: Evaluation, run: RunDir, metadata: dict[str, Any]) -> None:
    """Parameters, FLOPs and sparsity; for a gated model its units and exported network's sizes;
    the paired latency of the network that would be deployed against its dense reference."""
    model, architecture = evaluation.model.eval(), metadata["architecture"]
    shape = input_shape(architecture)
    evaluation.store.data.update(model_complexity(model, shape))
    deployed = model
    if find_gates(model):  # the exported network, as `advprune export` wrote it (or made now)
        exported_file = run.exported / "model.safetensors"
        if exported_file.exists():
            deployed = load_model(exported_file, device=evaluation.device)[0]
        else:
            deployed = export_gated(model, torch.zeros(1, *shape, device=evaluation.device))
        evaluation.store.data.update(gated_complexity(model, shape, deployed))
    evaluation.store.save()
    if evaluation.config.latency_repeats:
        record_latency(
            evaluation,
            deployed,
            architecture,
            timed="exported" if deployed is not model else "model",
        )


def record_latency(
    evaluation: Evaluation, deployed: torch.nn.Module, architecture: dict[str, Any], timed: str
) -> None:
    """`deployed` timed interleaved with the dense zoo network of the same architecture (rebuilt
    from the metadata, as export does), unless results.json has it for this model file."""
    settings = {
        "model_sha256": evaluation.store.model_sha256,
        "timed": timed,
        "batch_sizes": list(LATENCY_BATCH_SIZES),
    }
    if evaluation.store.section("latency", settings) is not None:
        return
    dense = create_model(**architecture_arguments(architecture))
    latency = paired_latency(
        deployed,
        dense,
        input_shape(architecture),
        LATENCY_BATCH_SIZES,
        repeats=evaluation.config.latency_repeats,
    )
    evaluation.store.record("latency", {**latency, "settings": settings})
