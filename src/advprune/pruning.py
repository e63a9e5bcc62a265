"""`advprune prune`: score a trained dense run, mask the least important weights, fine-tune.

One pipeline for every unstructured method — MAD's adversarial saliency, magnitude |w|, random,
HYDRA's learnt scores — so each is compared under identical fine-tuning (mad.md, step 2). The MAD
saliency pass is cached in the dense run's directory, so pruning at 90/95/99 % costs one pass.
HYDRA learns its scores in a run of their own, RUN_DIR/scores, so `prune` resumes whether it
stopped while learning the scores or while fine-tuning.
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
import yaml
from torch import nn

from advprune.core import distributed
from advprune.core.device import resolve_device
from advprune.core.distributed import BACKENDS
from advprune.core.errors import ConfigError, check_choices
from advprune.core.io import atomic_write_text
from advprune.core.run_dir import RunDir
from advprune.data import BatchLoader
from advprune.masks import ORDERS, SCHEMES, WeightMasks, check_sparsity, select
from advprune.methods.hydra import SCHEME, ScoreTraining
from advprune.methods.mad import SALIENCY_FORMS, compute_saliency, load_saliency, save_saliency
from advprune.methods.magnitude import magnitude_scores
from advprune.models.serialization import load_model
from advprune.training import TrainConfig, train
from advprune.training.config import OBJECTIVES, OPTIMIZERS
from advprune.training.method import MaskedTraining
from advprune.training.trainer import TrainingData, load_training_data

METHODS = ("mad", "magnitude", "random", "hydra")
DEFAULT_SCHEMES = {"mad": "mad", "magnitude": "global", "random": "global", "hydra": SCHEME}
# HYDRA's score phase as in the official code (configs.yml): SGD, momentum 0.9, cosine schedule.
SCORE_MOMENTUM = 0.9
SCORE_WEIGHT_DECAY = 1e-4


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
    saliency_form: str = "removal"  # or "paper", the official code's ranking (methods/mad.py)
    saliency_batch_size: int = 128
    mask_steps: int = 20
    mask_lr: float = 0.1
    score_epochs: int = 20  # HYDRA: epochs of score training (the official code's 20)
    score_lr: float = 0.1  # HYDRA: learning rate of the scores (official: 0.1, cosine)
    finetune_epochs: int = 10
    objective: str | None = None
    optimizer: str | None = None
    lr: float | None = None
    beta: float | None = None
    limit_train: int | None = None  # fine-tune (and score) on the first N training examples
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
                "saliency_form": SALIENCY_FORMS,
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
        if self.method == "hydra":
            self._validate_hydra()
        return self

    def _validate_hydra(self) -> None:
        """HYDRA's masks are layer-wise top-k of learnt scores on weights: no other choice fits."""
        if self.resolved_scheme != SCHEME:
            raise ConfigError(
                f"HYDRA prunes layer-wise (its top-k is per layer); drop --scheme {self.scheme}"
            )
        if self.order != "lowest" or self.include_bias:
            raise ConfigError(
                "HYDRA keeps the highest scores of the weights only; drop --order and "
                "--include-bias (use --method magnitude/random for the ablations)"
            )
        if self.score_epochs < 1:
            raise ConfigError(f"score_epochs must be ≥ 1, got {self.score_epochs}")
        if not (math.isfinite(self.score_lr) and self.score_lr > 0):
            raise ConfigError(f"score_lr must be > 0, got {self.score_lr}")

    @property
    def resolved_scheme(self) -> str:
        return self.scheme or DEFAULT_SCHEMES[self.method]

    @property
    def scores_bias(self) -> bool:
        return self.method == "mad" if self.include_bias is None else self.include_bias


def finetune_config(dense: TrainConfig, config: PruneConfig) -> TrainConfig:
    """The dense run's settings with the pruning run's fine-tuning overrides."""
    overrides: dict[str, Any] = {"epochs": config.finetune_epochs, "seed": config.seed}
    for key in ("objective", "optimizer", "lr", "beta", "backend", "limit_train"):
        if getattr(config, key) is not None:
            overrides[key] = getattr(config, key)
    return dataclasses.replace(dense, **overrides).validate()


def score_config(dense: TrainConfig, config: PruneConfig) -> TrainConfig:
    """HYDRA's score phase: the dense run's data and attack, SGD with a cosine schedule on the
    scores; the objective is the fine-tuning one, so both phases optimise the same loss."""
    overrides: dict[str, Any] = {
        "epochs": config.score_epochs,
        "seed": config.seed,
        "optimizer": "sgd",
        "lr": config.score_lr,
        "momentum": SCORE_MOMENTUM,
        "weight_decay": SCORE_WEIGHT_DECAY,
        "schedule": "cosine",
    }
    for key in ("objective", "beta"):
        if getattr(config, key) is not None:
            overrides[key] = getattr(config, key)
    return dataclasses.replace(dense, **overrides).validate()


def learn_hydra_masks(
    config: PruneConfig,
    dense: TrainConfig,
    dense_run: RunDir,
    run: RunDir,
    data: TrainingData,
    progress: bool,
    log: Callable[[str], None],
) -> tuple[WeightMasks, dict[str, torch.Tensor]]:
    """Train HYDRA's scores in RUN_DIR/scores (resumed or reused), then return its masks and the
    pruned weights fine-tuning starts from."""
    scores_run = RunDir.create(run.path / "scores")
    settings = score_config(dense, config)
    if scores_run.model.exists():
        log(f"reusing the HYDRA scores learnt in {scores_run.path}")
    else:
        resume = scores_run.checkpoint.exists()
        initial = None
        if not resume:
            model, _ = load_model(dense_run.model)
            initial = model.state_dict()
        log(
            f"hydra: {'resuming' if resume else 'learning'} the scores of a {config.sparsity:.0%} "
            f"layer-wise mask, {settings.epochs} epochs with {settings.objective}, weights frozen"
        )
        train(
            settings,
            str(scores_run.path),
            resume=resume,
            data=data,
            progress=progress,
            log=log,
            initial_weights=initial,
            method=ScoreTraining(config.sparsity, seed=config.seed),
        )
    masks, _ = WeightMasks.load(scores_run.path / "masks.safetensors")
    pruned, _ = load_model(scores_run.model)
    return masks, pruned.state_dict()


def check_same_settings(config: PruneConfig, run: RunDir) -> None:
    """A pruning run resumes only with the settings it started with (kept in prune.yaml)."""
    settings = {**dataclasses.asdict(config), "from_run": str(Path(config.from_run).resolve())}
    path = run.path / "prune.yaml"
    if path.exists():
        saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        changed = sorted(
            k for k in settings.keys() | saved.keys() if saved.get(k) != settings.get(k)
        )
        if changed:
            raise ConfigError(
                f"{run.path} holds a pruning run with other settings ({', '.join(changed)}); "
                "resume it with the same flags or choose another --run-dir"
            )
    else:
        atomic_write_text(path, yaml.safe_dump(settings, sort_keys=False))


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
        "saliency_form": config.saliency_form,
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
        form=config.saliency_form,
        seed=config.seed,
        progress=progress,
    )
    if ddp.is_main:
        save_saliency(cache, scores, settings)
    return scores


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
    is_main = distributed.initialize(finetune.backend, device).is_main
    progress, log = distributed.main_output(progress, log)
    if is_main:
        check_same_settings(config, run)
    data = load_training_data(finetune)
    masks = None
    if not resume and config.method == "hydra":
        masks, initial = learn_hydra_masks(config, dense, dense_run, run, data, progress, log)
        log(
            f"hydra: pruned {masks.sparsity():.2%} of the weights (layer-wise); fine-tuning "
            f"{finetune.epochs} epochs with {finetune.objective}"
        )
    elif not resume:
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
