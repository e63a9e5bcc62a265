"""`advprune prune`: run any registered method from a trained run into a run directory.

The steps are the same for every method: check everything that can be checked (the settings,
the method's own refusals, the source run, that the run directory is writable), load the data,
record the run's settings (prune.yaml), ask the method for the `TrainingMethod` of its phase
(a scored method computes its masks here: MAD's saliency pass, HYDRA's score phase), train the
phase, and export the smaller network when the method removes units. A run that stopped resumes
with the same command; other settings are refused. Nothing is written before the run starts.
"""

from __future__ import annotations

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
from advprune.core.run_dir import RunDir
from advprune.masks.gated import find_gates
from advprune.methods.base import PruneContext, PruneSettings, PruningMethod
from advprune.models.serialization import load_model
from advprune.pipelines.export import export_run
from advprune.pipelines.train import train_phase
from advprune.training import TrainConfig, train
from advprune.training.trainer import TrainingData, load_training_data

SETTINGS_FILE = "prune.yaml"


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
    if not settings.from_run:
        raise ConfigError(method.start_hint)
    run = RunDir.existing(settings.from_run)
    if not run.model.exists():
        raise ConfigError(
            f"--from {run.path} has no model.safetensors: its training has not finished; finish "
            f"it with `advprune train --resume --run-dir {run.path}`"
        )
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


def check_writable(path: Path) -> None:
    """Fail before hours of work, not after: the nearest existing folder must be writable."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK):
        raise ConfigError(f"cannot write into {existing}; choose a writable --run-dir")


def run_record(settings: PruneSettings, method: PruningMethod, source: Source) -> dict[str, Any]:
    """What prune.yaml keeps: every setting that changes what the run computes."""
    computed = settings.computed()
    computed["from_run"] = str(source.run.resolve()) if source.run else source.key
    return {"generic": computed, "method": method.settings.computed()}


def check_same_run(run: RunDir, record: dict[str, Any]) -> None:
    """A pruning run continues only with the settings it started with."""
    path = run.path / SETTINGS_FILE
    saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    changed = [
        key
        for part in ("generic", "method")
        for key in sorted(record[part].keys() | (saved.get(part) or {}).keys())
        if record[part].get(key) != (saved.get(part) or {}).get(key)
    ]
    if changed:
        raise ConfigError(
            f"{run.path} holds a pruning run with other settings ({', '.join(changed)}); resume it "
            "with the same flags or choose another --run-dir"
        )


def prune_run(
    settings: PruneSettings,
    method: PruningMethod,
    run_dir: str | Path,
    *,
    source: Source | None = None,
    data: TrainingData | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> nn.Module:
    """Prune `source` (default: the `--from` run) with `method` into `run_dir`; resumable.

    Example:
        prune_run(PruneSettings(method="mad", from_run="runs/at", sparsity=0.9),
                  create_method("mad", {"finetune_epochs": 10}), "runs/mad90")
    """
    settings.validate()
    method.check(settings)
    run = RunDir.at(run_dir)
    if run.model.exists():
        raise ConfigError(f"{run.path} already holds a finished run; choose another --run-dir")
    check_writable(run.path)
    source = source or load_source(settings, method)
    phase = method.phase(source.config, settings)
    device = resolve_device(phase.device)
    is_main = distributed.initialize(phase.backend, device).is_main
    progress, log = distributed.main_output(progress, log)
    data = data or load_training_data(phase)
    record = run_record(settings, method, source)
    if (run.path / SETTINGS_FILE).exists():
        check_same_run(run, record)
    elif is_main:
        atomic_write_text(run.path / SETTINGS_FILE, yaml.safe_dump(record, sort_keys=False))
    resume = run.checkpoint.exists()
    context = _context(settings, source, data, device, run.path, progress, log)
    training = method.training_method(context, resume=resume)
    log(
        f"{method.label(settings)}: {'resuming' if resume else 'training'} {phase.epochs} "
        f"epoch(s) of {phase.objective} in {run.path}"
    )
    initial = None if resume else {k: v.cpu() for k, v in context.model.state_dict().items()}
    model = train(
        phase,
        run.path,
        resume=resume,
        data=data,
        model=context.model,
        progress=progress,
        log=log,
        initial_weights=initial,
        method=training,
    )
    if method.exports_network(settings) and is_main:
        export_run(run.path, log=log)
    return model


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
        )

    cache = Path(settings.cache_dir) if settings.cache_dir else default_cache_dir()
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
