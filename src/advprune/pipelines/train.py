"""`train_phase`: train one phase into a run directory — resume it, reuse it, or refuse it.

Every training a pipeline runs goes through here: the dense run of a reproduction, a pruning
method's fine-tuning, HYDRA's score phase. A directory holding a finished run with the same
settings is reused (its model loaded), an unfinished one is resumed from its checkpoint, and one
holding a run with other settings is an error naming the first setting that differs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from advprune.core.device import resolve_device
from advprune.core.run_dir import RunDir
from advprune.models.serialization import load_model
from advprune.training import TrainConfig, train
from advprune.training.method import TrainingMethod
from advprune.training.trainer import TrainingData


def train_phase(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    method: TrainingMethod | None = None,
    initial_weights: dict[str, torch.Tensor] | None = None,
    model: nn.Module | None = None,
    data: TrainingData | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    flag_prefix: str = "",
) -> nn.Module:
    """Train `config` with `method` into `run_dir`, resuming or reusing what is there; hints
    name `--{flag_prefix}lr` (`train`'s `flag_prefix`).

    Example:
        dense = train_phase(TrainConfig(epochs=2, eps=0.1), "runs/dense")  # again: reused
    """
    config.validate()
    run = RunDir.at(run_dir)
    if run.model.exists() and run.config.exists():
        config.check_resume(TrainConfig.load(run.config), f"the finished run in {run.path}")
        log(f"reusing the finished run in {run.path}")
        return load_model(run.model, device=resolve_device(config.device))[0]
    return train(
        config,
        run.path,
        resume=run.checkpoint.exists(),
        data=data,
        model=model,
        progress=progress,
        log=log,
        initial_weights=initial_weights,
        method=method,
        flag_prefix=flag_prefix,
    )
