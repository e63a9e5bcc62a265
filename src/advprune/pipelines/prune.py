"""`advprune prune`: run any registered method from a trained run into a run directory.

The steps are the same for every method: check everything that can be checked (the settings,
the method's own refusals, the source run, that the run directory is writable), load the data,
record the run's settings (prune.yaml), ask the method for the `TrainingMethod` of its phase
(a scored method computes its masks here: MAD's saliency pass, HYDRA's score phase), train the
phase, and export the smaller network when the method removes units. A run that stopped resumes
with the same command, and the same command on a finished run has nothing to do; other settings
are refused. Nothing is written before the run starts, and a start that fails takes back what it
wrote (prune.yaml, the folders it made).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from advprune.core import distributed
from advprune.core.device import resolve_device
from advprune.core.errors import ConfigError
from advprune.core.io import atomic_write_text
from advprune.core.run_dir import RunDir, undone_on_failure
from advprune.core.seeding import seed_everything
from advprune.masks import WeightMasks
from advprune.masks.gated import find_gates
from advprune.methods.base import INITIALIZATION, PruneContext, PruneSettings, PruningMethod
from advprune.models import architecture, create_model
from advprune.models.serialization import load_model
from advprune.pipelines.export import export_run
from advprune.pipelines.train import train_phase
from advprune.training import TrainConfig, train
from advprune.training.config import CUSTOM_DATASET
from advprune.training.method import MaskedTraining
from advprune.training.trainer import TrainingData, check_training_data, load_training_data

SETTINGS_FILE = "prune.yaml"
# How `advprune prune` spells the settings of a phase: the fine-tuning's `--finetune-lr`, the
# score phase's (HYDRA, HARP: RUN_DIR/scores) `--score-lr`.
FINETUNE_FLAGS = "finetune-"
PHASE_FLAGS = {"scores": "score-"}


@dataclass
class Source:
    """The trained network a method prunes, how it was trained, and a key for its weights."""

    model: nn.Module
    config: TrainConfig
    key: str
    run: Path | None = None


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "advprune"


def load_source(settings: PruneSettings, method: PruningMethod) -> Source:
    """The `--from` run: finished, dense and plain (not gated, not already pruned)."""
    if method.starts_from == INITIALIZATION:
        raise ConfigError(
            f"{method.name} trains from initialization, not from a trained run: instead of "
            "--from, name the network and data as for `advprune train` (--model, --dataset, --eps)"
        )
    if not settings.from_run:
        raise ConfigError(method.start_hint)
    run = RunDir.existing(settings.from_run)
    if not run.model.exists():
        raise run.unfinished_error("--from")
    model, metadata = load_model(run.model)
    source_method = metadata.get("method", {})
    if find_gates(model):
        raise ConfigError(
            f"--from {run.path} is a gated ANP-VS run; prune the dense run it started from "
            f"({source_method.get('prune', {}).get('from_run', 'its --from')}), or evaluate its "
            "export"
        )
    if "prune" in source_method:
        raise ConfigError(
            f"--from {run.path} is already pruned ({source_method.get('label')}); prune the dense "
            f"run it came from ({source_method['prune'].get('from_run')}) — pruning a pruned "
            "network again would silently drop or keep its mask"
        )
    config = TrainConfig.from_dict(metadata.get("config", {}), source=str(run.model))
    key = hashlib.sha256(run.model.read_bytes()).hexdigest()
    return Source(model, config, key, run.path)


def initial_source(start: TrainConfig, data: TrainingData) -> Source:
    """The network `advprune train` would build for `start` (its seed, before any step): where
    a method that trains from initialization begins. Its key is the settings that build it."""
    start.validate()
    seed_everything(start.seed)
    model = create_model(
        **architecture(start.model, data.spec, start.normalize, start.output_index)
    )
    key = hashlib.sha256(yaml.safe_dump(start.computed()).encode()).hexdigest()
    return Source(model, start, key)


def unwritable(path: Path) -> str | None:
    """Why `path` cannot be written (its nearest existing folder is a file, or not writable by
    this user, as `os.access` says for the real user id), or None."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot create {path}: {existing} is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write into {existing}"
    return None


def check_start(settings: PruneSettings, method: PruningMethod) -> None:
    """Settings of a network to build are for a method that trains from initialization."""
    if method.starts_from != INITIALIZATION:
        raise ConfigError(
            f"{method.name} prunes a trained run: pass --from RUN_DIR (its network and data come "
            "from that run) and drop the training settings (--model, --dataset, …)"
        )
    if settings.from_run:
        load_source(settings, method)  # raises: one start only


def check_writable(path: Path) -> None:
    """Fail before hours of work, not after: the nearest existing folder must be writable."""
    problem = unwritable(path)
    if problem:
        raise ConfigError(f"{problem}; choose a writable --run-dir")


def check_connected(masks: WeightMasks) -> None:
    """Refuse masks that remove every weight of a layer: nothing of the input passes it, so the
    network predicts a constant — a global ranking does this to a layer of small weights (a
    classifier, a barely trained layer). No scheme makes that worth fine-tuning; the first-epoch
    check's --allow-chance lets it through, as it lets a run at chance go on."""
    emptied = masks.emptied_layers()
    if emptied:
        layer, size = next(iter(emptied.items()))
        raise ConfigError(
            f"the masks remove all {size} weights of layer {layer!r}, which disconnects the "
            "network; prune with --scheme layerwise (every layer keeps the same share) or a "
            "lower --sparsity (--allow-chance fine-tunes it anyway)"
        )


RECORD_PARTS = ("generic", "method", "resolved", "start")


def run_record(settings: PruneSettings, method: PruningMethod, source: Source) -> dict[str, Any]:
    """What prune.yaml keeps: every setting that changes what the run computes (for a method
    that trains from initialization, the settings that build its network: `start`)."""
    computed = settings.computed()
    computed["from_run"] = str(source.run.resolve()) if source.run else source.key
    record = {
        "generic": computed,
        "method": {"name": method.name, **method.settings.computed()},
        "resolved": method.resolved(settings),
    }
    if method.starts_from == INITIALIZATION:
        record["start"] = source.config.computed()
    return record


def check_same_run(run: RunDir, record: dict[str, Any]) -> None:
    """A pruning run continues only with the settings it started with."""
    path = run.path / SETTINGS_FILE
    saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    changed = [
        key
        for part in RECORD_PARTS
        for key in sorted((record.get(part) or {}).keys() | (saved.get(part) or {}).keys())
        if (record.get(part) or {}).get(key) != (saved.get(part) or {}).get(key)
    ]
    if changed:
        raise ConfigError(
            f"{run.path} holds a pruning run with other settings "
            f"({', '.join(dict.fromkeys(changed))}); resume it "
            "with the same flags or choose another --run-dir"
        )


def prune_run(
    settings: PruneSettings,
    method: PruningMethod,
    run_dir: str | Path,
    *,
    source: Source | None = None,
    start: TrainConfig | None = None,
    data: TrainingData | None = None,
    export: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> nn.Module:
    """Prune `source` (default: the `--from` run) with `method` into `run_dir`; resumable.
    A method that trains from initialization starts instead from the network `start` (the
    settings of `advprune train`) builds. A method that removes units ends with `export_run`
    unless `export` is False.

    Example:
        prune_run(PruneSettings(method="mad", from_run="runs/at", sparsity=0.9),
                  create_method("mad", {"finetune_epochs": 10}), "runs/mad90")
        prune_run(PruneSettings(method="flyingbird", sparsity=0.9), create_method("flyingbird"),
                  "runs/fb90", start=TrainConfig(model="lenet5-caffe", dataset="fashion-mnist"))
    """
    settings.validate()
    method.check(settings)
    run = RunDir.at(run_dir)
    if not run.model.exists():
        check_writable(run.path)
    if source is None and start is not None:
        check_start(settings, method)
        data = data or load_training_data(method.phase(start.validate(), settings))
        source = initial_source(start, data)
    source = source or load_source(settings, method)
    record = run_record(settings, method, source)
    if (run.path / SETTINGS_FILE).exists():
        check_same_run(run, record)
    phase = method.phase(source.config, settings)
    device = resolve_device(phase.device)
    is_main = distributed.initialize(phase.backend, device).is_main
    progress, log = distributed.main_output(progress, log)
    if run.model.exists():
        return _finished(run, device, log)
    data = data or load_training_data(phase)
    context = _context(settings, source, data, device, run.path, progress, log)
    check_training_data(context.model, data, device, api=data.spec.name == CUSTOM_DATASET)
    # Until the run writes a file of its own, a failure takes prune.yaml back: the corrected
    # command can start in the same --run-dir.
    with undone_on_failure(run.path, [SETTINGS_FILE]) if is_main else contextlib.nullcontext():
        if is_main and not (run.path / SETTINGS_FILE).exists():
            atomic_write_text(run.path / SETTINGS_FILE, yaml.safe_dump(record, sort_keys=False))
        model = _train_phase(method, phase, context)
    if method.exports_network(settings) and export and is_main:
        export_run(run.path, log=log)
    return model


def _train_phase(method: PruningMethod, phase: TrainConfig, context: PruneContext) -> nn.Module:
    """The method's `TrainingMethod` (masks computed, or reloaded on resume), then its phase."""
    run = RunDir(context.run_dir)
    resume = run.checkpoint.exists()
    training = method.training_method(context, resume=resume)
    if isinstance(training, MaskedTraining) and training.masks and not phase.allow_chance:
        check_connected(training.masks)
    context.log(
        f"{method.label(context.settings)}: {'resuming' if resume else 'training'} "
        f"{phase.epochs} epoch(s) of {phase.objective} in {run.path}"
    )
    initial = None if resume else {k: v.cpu() for k, v in context.model.state_dict().items()}
    return train(
        phase,
        run.path,
        resume=resume,
        data=context.data,
        model=context.model,
        progress=context.progress,
        log=context.log,
        initial_weights=initial,
        method=training,
        flag_prefix=FINETUNE_FLAGS,
    )


def _finished(run: RunDir, device: torch.device, log: Callable[[str], None]) -> nn.Module:
    """The same command again on a finished pruning run: nothing to do, as `train --resume`."""
    if not (run.path / SETTINGS_FILE).exists():
        raise ConfigError(
            f"{run.path} already holds a finished run that is not a pruning run; choose another "
            "--run-dir"
        )
    log(f"the pruning run in {run.path} is finished; nothing to do")
    return load_model(run.model, device=device)[0]


def _context(
    settings: PruneSettings,
    source: Source,
    data: TrainingData,
    device: torch.device,
    run_path: Path,
    progress: bool,
    log: Callable[[str], None],
) -> PruneContext:
    model = source.model.to(device).eval()
    if source.config.channels_last:  # the source run's layout: a method's own pass runs in it too
        model = model.to(memory_format=torch.channels_last)

    def run_phase(name: str, config: TrainConfig, method: Any, initial: Any) -> nn.Module:
        return train_phase(
            config,
            run_path / name,
            method=method,
            initial_weights=initial,
            model=model,
            data=data,
            progress=progress,
            log=log,
            flag_prefix=PHASE_FLAGS.get(name, f"{name}-"),
        )

    cache: Path | None = Path(settings.cache_dir) if settings.cache_dir else default_cache_dir()
    problem = unwritable(cache)
    if problem:
        log(f"{problem}: passes shared between runs are not cached (pass a writable --cache-dir)")
        cache = None
    return PruneContext(
        model=model,
        data=data,
        source=source.config,
        settings=settings,
        device=device,
        run_dir=run_path,
        cache_dir=cache,
        source_key=source.key,
        run_phase=run_phase,
        progress=progress,
        log=log,
    )
