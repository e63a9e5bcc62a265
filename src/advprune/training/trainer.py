"""The trainer: one loop for every objective, with checkpoints, exact resume and progress bars.

Reproducibility: the data order and augmentation of epoch e come from (seed, e) alone, and the
global RNG (attack random starts) is re-seeded from (seed, e) at the start of each epoch, so a run
resumed from the checkpoint of epoch e continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from tqdm.auto import tqdm

from advprune.attacks import pgd
from advprune.core.device import autocast, resolve_device
from advprune.core.errors import ConfigError
from advprune.core.io import atomic_write_text
from advprune.core.run_dir import RunDir
from advprune.core.seeding import seed_everything
from advprune.data import BatchLoader, DatasetSpec, ImageDataset, get_spec, load_dataset
from advprune.evaluation.robustness import accuracy
from advprune.models import architecture, create_model
from advprune.models.serialization import load_state_strict, save_model
from advprune.training.checkpoint import load_training_state, save_training_state
from advprune.training.config import TrainConfig
from advprune.training.method import StepContext, TrainingMethod
from advprune.training.objectives import OBJECTIVE_FUNCTIONS, AttackSettings, ObjectiveOutput
from advprune.training.schedule import learning_rate

MONITOR_ATTACK_STEPS = 10


@dataclass
class TrainingData:
    spec: DatasetSpec
    train: ImageDataset
    test: ImageDataset


def load_training_data(config: TrainConfig) -> TrainingData:
    spec = get_spec(config.dataset)
    load = partial(load_dataset, config.dataset, data_dir=config.data_dir, download=config.download)
    return TrainingData(
        spec, load("train", limit=config.limit_train), load("test", limit=config.limit_test)
    )


def build_optimizer(config: TrainConfig, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def train(
    config: TrainConfig,
    run_dir: str,
    *,
    resume: bool = False,
    data: TrainingData | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    initial_weights: dict[str, torch.Tensor] | None = None,
    method: TrainingMethod | None = None,
) -> nn.Module:
    """Train `config` into `run_dir`; returns the trained model (eval mode, on the run's device).

    The run directory ends with config.yaml, metrics.jsonl (one JSON line per epoch),
    checkpoint.safetensors (training state) and model.safetensors (final weights + architecture).
    Fine-tuning starts from `initial_weights`. `method` decides what one step does (plain
    training by default; masked fine-tuning, gates, scores for the pruning methods); its state is
    checkpointed with the training state and its metadata stored with the model.
    """
    config.validate()
    run = RunDir.create(run_dir)
    if not resume and (run.checkpoint.exists() or run.model.exists()):
        raise ConfigError(
            f"{run.path} already holds a run; pass --resume to continue it or choose another "
            "--run-dir"
        )
    data = data or load_training_data(config)
    device = resolve_device(config.device)
    eps = config.eps
    attack = AttackSettings(eps, config.attack_steps, config.attack_step_size)
    objective = OBJECTIVE_FUNCTIONS[config.objective]

    method = method or TrainingMethod()

    seed_everything(config.seed)
    model = create_model(**architecture(config.model, data.spec))
    if initial_weights is not None:
        load_state_strict(model, initial_weights, "the initial weights")
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = method.prepare(model)
    optimizer = build_optimizer(config, method.weight_parameters(model))
    start_epoch, history = 0, []
    if resume:
        if not run.checkpoint.exists():
            raise ConfigError(f"nothing to resume in {run.path}: no {run.checkpoint.name}")
        state, extra = load_training_state(run.checkpoint, model, optimizer)
        start_epoch, history = state["epoch"], state["history"]
        method.load_state_dict(extra, model)
        log(f"resuming {run.path} after epoch {start_epoch}/{config.epochs}")
    config.save(run.config)
    step_model = torch.compile(model) if config.compile else model

    loader = BatchLoader(
        data.train,
        data.spec,
        config.batch_size,
        shuffle=True,
        augment=True,
        device=device,
        seed=config.seed,
        drop_last=True,
    )
    if len(loader) == 0:
        raise ConfigError(
            f"{len(data.train)} training examples give no full batch of {config.batch_size}; "
            "lower --batch-size or raise --limit-train"
        )
    steps_per_epoch = len(loader)

    def run_objective(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> ObjectiveOutput:
        with autocast(device, config.precision):
            return objective(net, x, y, attack, config.beta)

    for epoch in range(start_epoch, config.epochs):
        seed_everything(epoch_seed(config.seed, epoch))
        model.train()
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        bar = tqdm(
            loader.epoch(epoch),
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        for step, (x, y) in enumerate(bar):
            lr = learning_rate(
                config.lr,
                config.schedule,
                (epoch + step / steps_per_epoch) / config.epochs,
                config.milestones,
                config.gamma,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            context = StepContext(run_objective, epoch, step, steps_per_epoch, lr, len(data.train))
            out = method.step(step_model, x, y, optimizer, context)
            loss_sum += out.loss.detach() * len(y)
            correct += (out.logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if step % 20 == 0:
                bar.set_postfix(
                    loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}"
                )
        bar.close()
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": loss_sum.item() / seen,
            "train_accuracy": correct.item() / seen,
            "seconds": time.perf_counter() - started,
            **monitor(model, data, eps, config, device),
        }
        if epoch == 0 and record["train_accuracy"] < 1.5 / data.spec.num_classes:
            record["warning"] = "training accuracy is at chance after the first epoch"
            log(
                f"warning: {record['warning']} ({record['train_accuracy']:.3f}); the model is not "
                "learning — try a lower --lr, a clean-trained start, or a smaller --eps"
            )
        history.append(record)
        log(format_record(record))
        atomic_write_text(run.metrics, "".join(json.dumps(r) + "\n" for r in history))
        save_training_state(
            run.checkpoint,
            model,
            optimizer,
            {"epoch": epoch + 1, "history": history, "config": config.to_dict()},
            extra=method.state_dict(),
        )
    model.eval()
    method.finish(model, run.path)
    save_model(
        run.model,
        model,
        {
            "architecture": architecture(config.model, data.spec),
            "config": config.to_dict(),
            "eps": eps,
            "method": method.metadata() if method.name != "dense" else {"name": config.objective},
        },
    )
    return model


def monitor(
    model: nn.Module, data: TrainingData, eps: float, config: TrainConfig, device: torch.device
) -> dict[str, float]:
    """Test accuracy after an epoch: clean on the test split, PGD-10 on its first examples."""
    model.eval()
    record = {"test_clean_accuracy": accuracy(model, data.test, device=device)}
    if config.monitor_examples and config.objective != "standard":
        subset = data.test.take(min(config.monitor_examples, len(data.test)))
        attack = partial(pgd, eps=eps, steps=MONITOR_ATTACK_STEPS)
        record["test_pgd10_accuracy"] = accuracy(model, subset, attack, device=device)
    return record


def format_record(record: dict) -> str:
    parts = [f"epoch {record['epoch']}"]
    parts += [
        f"{k.replace('_accuracy', '')} {v:.4f}" for k, v in record.items() if k.endswith("accuracy")
    ]
    parts.append(f"loss {record['train_loss']:.4f}")
    parts.append(f"{record['seconds']:.0f}s")
    return "  ".join(parts)


def train_or_reuse(
    config: TrainConfig, run_dir: str, *, progress: bool = True, log: Callable[[str], None] = print
) -> None:
    """Train once: reuse a finished run with the same config, resume an unfinished one."""
    run = RunDir.create(run_dir)
    if run.config.exists():
        saved = TrainConfig.load(run.config)
        if saved != config:
            changed = [k for k, v in config.to_dict().items() if saved.to_dict()[k] != v]
            raise ConfigError(
                f"{run.path} holds a run with other settings ({', '.join(changed)}); delete it or "
                "choose another --run-dir"
            )
        if run.model.exists():
            log(f"reusing the trained model in {run.path}")
            return
    train(config, run_dir, resume=run.checkpoint.exists(), progress=progress, log=log)
