"""`advprune prune`: score a trained dense run, mask the least important weights, fine-tune.

One pipeline for every unstructured method — MAD's adversarial saliency, magnitude |w|, random —
so each is compared under identical fine-tuning (mad.md, step 2). The MAD saliency pass is cached
in the dense run's directory, so pruning at 90/95/99 % costs one pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advprune.core import distributed
from advprune.core.device import resolve_device
from advprune.core.distributed import BACKENDS
from advprune.core.errors import ConfigError, check_choices
from advprune.core.run_dir import RunDir
from advprune.data import BatchLoader
from advprune.masks import ORDERS, SCHEMES, check_sparsity, select
from advprune.methods.mad import compute_saliency, load_saliency, save_saliency
from advprune.methods.magnitude import magnitude_scores
from advprune.models.serialization import load_model
from advprune.training import TrainConfig, train
from advprune.training.config import OBJECTIVES, OPTIMIZERS
from advprune.training.method import MaskedTraining
from advprune.training.trainer import TrainingData, load_training_data

METHODS = ("mad", "magnitude", "random")
DEFAULT_SCHEMES = {"mad": "mad", "magnitude": "global", "random": "global"}


@dataclass
class PruneConfig:
    """Pruning settings; fine-tuning inherits the dense run's settings unless overridden here."""

    method: str = "mad"
    from_run: str | None = None
    sparsity: float = 0.9
    scheme: str | None = None  # None: "mad" for MAD, "global" for magnitude and random
    order: str = "lowest"  # "largest" and "random" are MAD's ablations
    include_bias: bool | None = None  # None: MAD scores biases, magnitude does not
    saliency_fraction: float = 1.0
    saliency_batch_size: int = 128
    mask_steps: int = 20
    mask_lr: float = 0.1
    finetune_epochs: int = 10
    objective: str | None = None
    optimizer: str | None = None
    lr: float | None = None
    beta: float | None = None
    seed: int = 0
    backend: str | None = None  # torchrun process group (default: nccl on GPUs, gloo on CPU)

    def validate(self) -> PruneConfig:
        check_choices(
            self,
            {
                "method": METHODS,
                "scheme": SCHEMES,
                "order": ORDERS,
                "objective": OBJECTIVES,
                "optimizer": OPTIMIZERS,
                "backend": BACKENDS,
            },
        )
        if not self.from_run:
            raise ConfigError("--from DENSE_RUN_DIR is required: prune a trained dense run")
        check_sparsity(self.sparsity)
        if not 0 < self.saliency_fraction <= 1 or not math.isfinite(self.saliency_fraction):
            raise ConfigError(f"saliency_fraction must be in (0, 1], got {self.saliency_fraction}")
        if self.finetune_epochs < 1:
            raise ConfigError(f"finetune_epochs must be ≥ 1, got {self.finetune_epochs}")
        return self

    @property
    def resolved_scheme(self) -> str:
        return self.scheme or DEFAULT_SCHEMES[self.method]

    @property
    def scores_bias(self) -> bool:
        return self.method == "mad" if self.include_bias is None else self.include_bias


def finetune_config(dense: TrainConfig, config: PruneConfig) -> TrainConfig:
    """The dense run's settings with the pruning run's fine-tuning overrides."""
    overrides: dict[str, Any] = {"epochs": config.finetune_epochs, "seed": config.seed}
    for key in ("objective", "optimizer", "lr", "beta", "backend"):
        if getattr(config, key) is not None:
            overrides[key] = getattr(config, key)
    return dataclasses.replace(dense, **overrides).validate()


def mad_saliency(
    model: nn.Module,
    data: TrainingData,
    dense: TrainConfig,
    config: PruneConfig,
    dense_run: RunDir,
    device: torch.device,
    progress: bool,
    log: Callable[[str], None],
) -> dict[str, torch.Tensor]:
    """MAD saliency over the training set, computed once per setting and cached beside the model."""
    settings = {
        "eps": dense.eps,
        "attack_steps": dense.attack_steps,
        "attack_step_size": dense.attack_step_size,
        "mask_steps": config.mask_steps,
        "mask_lr": config.mask_lr,
        "saliency_fraction": config.saliency_fraction,
        "include_bias": config.scores_bias,
        "seed": config.seed,
        "batch_size": config.saliency_batch_size,
        "examples": len(data.train),
    }
    ddp = distributed.current()
    if ddp.enabled:  # shards make other batches; one process keeps the keys of existing caches
        settings["world_size"] = ddp.world_size
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    cache = dense_run.path / f"saliency-{key}.safetensors"
    if distributed.broadcast_from_main(cache.exists()):
        log(f"reusing the MAD saliency in {cache}")
        return load_saliency(cache)[0]
    loader = BatchLoader(
        data.train,
        data.spec,
        config.saliency_batch_size,
        shuffle=False,
        augment=False,
        device=device,
        rank=ddp.rank,
        world_size=ddp.world_size,
    )
    scores = compute_saliency(
        model,
        loader,
        eps=dense.eps,
        attack_steps=dense.attack_steps,
        attack_step_size=dense.attack_step_size,
        mask_steps=config.mask_steps,
        mask_lr=config.mask_lr,
        saliency_fraction=config.saliency_fraction,
        include_bias=config.scores_bias,
        seed=config.seed,
        progress=progress,
    )
    if ddp.is_main:
        save_saliency(cache, scores, settings)
    return scores


def _ignore(_: str) -> None:
    """The log of ranks other than 0."""


def prune_run(
    config: PruneConfig,
    run_dir: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> nn.Module:
    """Prune the dense run `config.from_run` into `run_dir` and fine-tune it; resumable."""
    config.validate()
    run = RunDir.at(run_dir)
    if run.model.exists():
        raise ConfigError(f"{run.path} already holds a finished run; choose another --run-dir")
    resume = run.checkpoint.exists()
    dense_run = RunDir.existing(config.from_run)
    dense = TrainConfig.load(dense_run.config)
    finetune = finetune_config(dense, config)
    device = resolve_device(finetune.device)
    if not distributed.initialize(finetune.backend, device).is_main:
        progress, log = False, _ignore
    data = load_training_data(finetune)
    masks = None
    if not resume:
        model, _ = load_model(dense_run.model, device=device)
        if config.method == "mad":
            scores = mad_saliency(model, data, dense, config, dense_run, device, progress, log)
        else:
            scores = magnitude_scores(model, include_bias=config.scores_bias)
        order = "random" if config.method == "random" else config.order
        masks = select(
            scores, config.sparsity, scheme=config.resolved_scheme, order=order, seed=config.seed
        )
        log(
            f"{config.method}: pruned {masks.sparsity():.2%} of the scored weights "
            f"({config.resolved_scheme} scheme, {order} first); fine-tuning "
            f"{finetune.epochs} epochs with {finetune.objective}"
        )
        initial = {name: t.cpu() for name, t in model.state_dict().items()}
    else:
        initial = None
        log(f"resuming the fine-tuning in {run.path}")
    return train(
        finetune,
        str(run.path),
        resume=resume,
        data=data,
        progress=progress,
        log=log,
        initial_weights=initial,
        method=MaskedTraining(masks, {"name": config.method, **dataclasses.asdict(config)}),
    )
