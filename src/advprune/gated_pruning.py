"""`advprune prune --method anpvs`: a training run with ANP-VS gates and VS loss, then its export.

ANP-VS is not score-then-fine-tune: it is a training run (trainer + `ANPVSTraining`) that learns
which units to remove. Its settings are one flat mapping — a recipe's `anpvs:` section, with
flags on top — holding `TrainConfig` keys (dataset, model, eps, epochs, …) and `ANPVSConfig` keys
(init, beta, vs_lambda, …). `beta` is the KL weight here. Training keys not given take the
official ANP-VS values below, and dataset, model and eps default to those of the `--init` run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advprune.core import distributed
from advprune.core.device import resolve_device
from advprune.core.errors import ConfigError
from advprune.core.run_dir import RunDir
from advprune.export import export_run
from advprune.masks.gated import find_gates
from advprune.methods.anpvs import ANPVSConfig, ANPVSTraining
from advprune.models import architecture, input_shape
from advprune.models.serialization import load_model
from advprune.training import TrainConfig
from advprune.training import train as train_network
from advprune.training.trainer import load_training_data

# The official code's optimisation of the weights: Adam 1e-3, ×0.1 at 50 % and ×0.01 at 70 %,
# L2 1e-4, batch 64. "pgd-at" only selects the per-epoch PGD monitor: ANPVSTraining sets the loss.
ANPVS_TRAINING = {
    "objective": "pgd-at",
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "batch_size": 64,
    "schedule": "step",
    "milestones": [0.5, 0.7],
    "gamma": 0.1,
}
SETTINGS_FILE = "anpvs.yaml"
INHERITED_FROM_INIT = ("dataset", "model", "eps")


def _field_names(cls: type) -> set[str]:
    return {field.name for field in dataclasses.fields(cls)}


def anpvs_configs(
    values: dict[str, Any], source: str = "settings"
) -> tuple[TrainConfig, ANPVSConfig]:
    """Split one flat mapping of ANP-VS settings into the training and the ANP-VS configs."""
    method_keys = _field_names(ANPVSConfig)
    train_keys = _field_names(TrainConfig) - {"beta", "objective"}
    unknown = sorted(set(values) - method_keys - train_keys)
    if unknown:
        raise ConfigError(f"{', '.join(unknown)} do(es) not apply to ANP-VS ({source})")
    config = ANPVSConfig(**{k: v for k, v in values.items() if k in method_keys}).validate()
    train_values = {**ANPVS_TRAINING, **{k: v for k, v in values.items() if k in train_keys}}
    # A reproduction plans the step before its --init run exists, giving these itself.
    if config.init is not None and any(key not in train_values for key in INHERITED_FROM_INIT):
        init = TrainConfig.load(RunDir.existing(config.init).config)
        for key in INHERITED_FROM_INIT:
            train_values.setdefault(key, getattr(init, key))
    return TrainConfig.from_dict(train_values, source=source), config


def initial_weights(init_dir: str, train: TrainConfig) -> dict[str, torch.Tensor]:
    """The trained weights to start from; they must be a plain model of the same architecture."""
    run = RunDir.existing(init_dir)
    model, metadata = load_model(run.model)
    trained = metadata.get("config", {})
    found = (metadata["architecture"]["name"], trained.get("dataset"))
    if found != (train.model, train.dataset):
        raise ConfigError(
            f"--init {run.path} holds {found[0]} on {found[1]}, but this run trains {train.model} "
            f"on {train.dataset}; pass a matching --init or --model/--dataset"
        )
    if find_gates(model):
        raise ConfigError(f"--init {run.path} is itself gated; start from a dense run")
    return {name: tensor.cpu() for name, tensor in model.state_dict().items()}


def _check_same_settings(run: RunDir, train: TrainConfig, config: ANPVSConfig) -> None:
    saved_train = TrainConfig.load(run.config)
    saved = ANPVSConfig.load(run.path / SETTINGS_FILE)
    changed = [k for k, v in train.to_dict().items() if saved_train.to_dict()[k] != v]
    changed += [k for k, v in config.to_dict().items() if saved.to_dict()[k] != v]
    changed = [k for k in changed if k not in ("device", "data_dir", "download")]
    if changed:
        raise ConfigError(
            f"{run.path} holds an unfinished run with other settings ({', '.join(changed)}); give "
            "the same settings to resume it, or choose another --run-dir"
        )


def run_anpvs(
    train: TrainConfig,
    config: ANPVSConfig,
    run_dir: str | Path,
    *,
    export: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> nn.Module:
    """Train ANP-VS into `run_dir` (resuming an unfinished run), then export its gated network.

    The run directory ends like a training run's, plus anpvs.yaml (these settings), gates.json
    (units kept per gate), exported/model.safetensors and, in results.json, the sizes and latency
    of `advprune export`. Returns the trained gated model (eval mode).
    """
    train.validate()
    config.validate()
    is_main = distributed.initialize(train.backend, resolve_device(train.device)).is_main
    progress, log = distributed.main_output(progress, log)
    run = RunDir.create(run_dir) if is_main else RunDir(Path(run_dir))
    if run.model.exists():
        raise ConfigError(f"{run.path} already holds a finished run; choose another --run-dir")
    resume = run.checkpoint.exists()
    if resume:
        _check_same_settings(run, train, config)
        log(f"resuming the ANP-VS run in {run.path}")
    initial = None if resume or config.init is None else initial_weights(config.init, train)
    if is_main:
        config.save(run.path / SETTINGS_FILE)
    data = load_training_data(train)
    log(
        f"{config.variant}: {train.model} on {train.dataset}, eps {train.eps}, PGD-"
        f"{train.attack_steps}, {train.epochs} epoch(s), beta {config.beta}, "
        f"vs_lambda {config.vs_lambda}, from {config.init or 'scratch'}"
    )
    model = train_network(
        train,
        str(run.path),
        resume=resume,
        data=data,
        progress=progress,
        log=log,
        initial_weights=initial,
        method=ANPVSTraining(config, train, input_shape(architecture(train.model, data.spec))),
    )
    if export and config.gates and is_main:
        export_run(run.path, log=log)
    return model
