"""The typed training configuration; round-trips to YAML, and CLI flags override its keys."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from advprune.core.device import PRECISIONS
from advprune.core.distributed import BACKENDS
from advprune.core.errors import ConfigError, check_choices
from advprune.core.io import atomic_write_text
from advprune.data import get_spec
from advprune.models import MODELS

OBJECTIVES = ("standard", "pgd-at", "trades", "mart", "fast-at")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine")
# Keys that say where and how a run executes, not what it computes: they may change on --resume.
EXECUTION_KEYS = frozenset(
    {"device", "data_dir", "download", "backend", "checkpoint_every", "tensorboard"}
)


@dataclass
class TrainConfig:
    """One training run. `eps=None` becomes the dataset's standard ε (objectives.md) on validation,
    so a saved config always states the ε it trained at."""

    dataset: str = "fashion-mnist"
    model: str = "lenet5-caffe"
    objective: str = "pgd-at"
    eps: float | None = None
    attack_steps: int = 10
    attack_step_size: float | None = None  # None: 2.5·ε/steps (Madry et al.)
    beta: float = 6.0  # weight of the KL term of TRADES and MART
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1
    seed: int = 0
    limit_train: int | None = None
    limit_test: int | None = None
    monitor_examples: int = 1000  # test examples attacked after every epoch (0: none)
    data_dir: str | None = None
    download: bool = False
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    checkpoint_every: int = 500  # optimizer steps between mid-epoch checkpoints (0: epoch ends)
    tensorboard: bool = False  # also write TensorBoard event files to RUN_DIR/tensorboard
    sync_batchnorm: bool = False  # under torchrun on GPUs: batch statistics over all ranks
    backend: str | None = None  # torchrun process group: None picks nccl on GPUs, gloo on CPU

    def validate(self) -> TrainConfig:
        """Reject values that cannot work, with the option name in the message; fill in ε."""
        spec = get_spec(self.dataset)
        check_choices(
            self,
            {
                "objective": OBJECTIVES,
                "optimizer": OPTIMIZERS,
                "schedule": SCHEDULES,
                "precision": PRECISIONS,
                "backend": BACKENDS,
                "model": tuple(MODELS),
            },
        )
        if self.eps is None:
            self.eps = spec.default_eps
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise ConfigError(
                f"eps must be a finite number ≥ 0, got {self.eps}; pass the L∞ radius in [0, 1] "
                "pixel units, e.g. --eps 0.1 (Fashion-MNIST) or 0.031 (8/255, CIFAR)"
            )
        positive = ("epochs", "batch_size", "attack_steps")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(
                    f"{key} must be ≥ 1, got {getattr(self, key)}; pass --{_flag(key)} 1 or more"
                )
        for key in ("limit_train", "limit_test"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(
                    f"{key} must be ≥ 1, got {value}; pass --{_flag(key)} 1 or more, or leave it "
                    "out for the whole split"
                )
        if self.checkpoint_every < 0:
            raise ConfigError(
                f"checkpoint_every must be ≥ 0 steps, got {self.checkpoint_every}; pass e.g. "
                "--checkpoint-every 500, or 0 to checkpoint at epoch ends only"
            )
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}; pass e.g. --lr 0.1 (SGD)")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ConfigError(
                f"milestones are fractions of training in (0, 1), got {self.milestones}; pass "
                "e.g. --milestones 0.5 0.75"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def changed_for_resume(self, saved: TrainConfig) -> list[str]:
        """Keys that differ from `saved` and change what a resumed run would compute."""
        ours, theirs = self.to_dict(), saved.to_dict()
        return [k for k in ours if k not in EXECUTION_KEYS and ours[k] != theirs[k]]

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown key(s) {', '.join(unknown)} in {source}; check the spelling against "
                "`advprune train --help`"
            )
        return cls(**values).validate()

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ConfigError(
                f"config not found: {path}; pass the --run-dir of an existing run"
            ) from err
        except yaml.YAMLError as err:
            raise ConfigError(f"config {path} is not valid YAML: {err}".splitlines()[0]) from err
        if not isinstance(values, dict):
            raise ConfigError(
                f"config {path} must be a mapping of keys to values; restore it or start a new run"
            )
        return cls.from_dict(values, source=str(path))


def _flag(key: str) -> str:
    return key.replace("_", "-")
