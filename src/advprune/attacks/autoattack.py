"""AutoAttack (Croce & Hein, 2020) through `pyautoattack`, in our call shape, resumable.

The number robust-accuracy tables lead with. `pyautoattack.AutoAttack.run_standard_evaluation`
runs the attacks of a version (standard: APGD-CE, APGD-T, FAB-T, Square), each on the examples no
earlier attack broke. We drive it one attack and one batch at a time and keep our own state file,
because its own `state_path` cannot resume in pyautoattack 0.2.0 (it stores the attack set as a
string, so every resume fails the "different set of attacks" check), and even when it could, it
would return the clean x for the examples broken before the interruption. The per-batch calls
reproduce a single uninterrupted run exactly: same batches, same seed for each attack.

Its model checks (randomised output, probabilities instead of logits, zero gradients, Square
beating the gradient attacks) are logged by pyautoattack; we re-raise each one once as an
`AutoAttackWarning` so a report can record it, and drop its per-batch progress lines.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from pyautoattack import AutoAttack
from pyautoattack import checks as autoattack_checks
from torch import Tensor, nn

from advprune.attacks.ball import check_eps, check_norm
from advprune.core.errors import CheckpointError, ConfigError
from advprune.core.tensor_files import load_tensors, save_tensors

VERSIONS = ("standard", "plus", "rand")
_PYAUTOATTACK_NORMS = {"linf": "Linf", "l2": "L2"}


class AutoAttackWarning(UserWarning):
    """A pyautoattack check that casts doubt on the evaluation (e.g. a randomised model)."""


def autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    norm: str = "linf",
    version: str = "standard",
    batch_size: int = 500,
    seed: int = 0,
    state_path: str | os.PathLike | None = None,
    verbose: bool = False,
) -> Tensor:
    """Adversarial examples for every example of `x` (clean x where no attack succeeded), in order.

    The model runs in eval mode with parameters frozen (FAB calls `.backward()`); both, and the
    global RNG that pyautoattack reseeds, are restored afterwards. `x` must be on the model's
    device. With `state_path`, progress is saved after every batch, and a rerun with the same
    model, data and settings continues where it stopped (a finished state returns at once).
    `version="rand"` (APGD-CE and APGD-DLR with 20 EOT iterations) is for randomised models.

    Example: `x_adv = autoattack(model, x, y, 8 / 255, batch_size=256, state_path="aa.state")`.
    """
    _check_settings(eps, norm, version, batch_size)
    if eps == 0:
        return x.detach().clone()
    x, y = x.detach(), y.detach()
    state_path = None if state_path is None else Path(state_path)

    with _deterministic(model, x.device), _pyautoattack_log() as log:
        adversary = _adversary(model, x.device, eps, norm, version, seed)
        attacks = list(adversary.attacks_to_run)
        fingerprint = (
            None if state_path is None else _fingerprint(model, x, y, eps, norm, version, seed)
        )
        progress = _start(model, x, y, batch_size, fingerprint, state_path)
        started = time.monotonic()
        while progress.attack_index < len(attacks):
            attack = attacks[progress.attack_index]
            _run_attack(adversary, attack, x, y, progress, batch_size, state_path)
            if verbose:
                print(
                    f"autoattack {attack}: robust accuracy "
                    f"{progress.robust.float().mean().item():.2%} "
                    f"({time.monotonic() - started:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
        autoattack_checks.check_square_sr(progress.accuracy, logger=adversary.logger)

    for message in log.messages:
        warnings.warn(f"AutoAttack: {message}", AutoAttackWarning, stacklevel=2)
    return progress.x_adv


def _adversary(
    model: nn.Module, device: torch.device, eps: float, norm: str, version: str, seed: int
) -> AutoAttack:
    adversary = AutoAttack(
        _Float32Logits(model),
        device=device,
        eps=eps,
        norm=_PYAUTOATTACK_NORMS[norm],
        seed=seed,
        version=version,
    )
    adversary.verbose = False  # its progress lines count per batch, not per evaluation
    return adversary


def _check_settings(eps: float, norm: str, version: str, batch_size: int) -> None:
    check_eps(eps)
    check_norm(norm)
    if version not in VERSIONS:
        raise ConfigError(
            f"unknown AutoAttack version {version!r}; choose one of {', '.join(VERSIONS)}"
        )
    if batch_size < 1:
        raise ConfigError(f"AutoAttack batch_size={batch_size} must be ≥ 1")


def _start(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    fingerprint: str | None,
    state_path: Path | None,
) -> _Progress:
    """The saved progress of this evaluation, or a fresh one: the clean predictions decide which
    examples the first attack runs on."""
    if state_path is not None:
        progress = _Progress.load(state_path, fingerprint, x.device)
        if progress is not None:
            return progress
    robust = _predict(model, x, batch_size) == y
    progress = _Progress(fingerprint, x.clone(), robust, robust.clone(), 0, {})
    progress.accuracy["clean"] = robust.float().mean().item()
    return progress


def _run_attack(
    adversary: AutoAttack,
    attack: str,
    x: Tensor,
    y: Tensor,
    progress: _Progress,
    batch_size: int,
    state_path: Path | None,
) -> None:
    """One of the version's attacks on the examples still robust, a batch at a time, saving the
    progress after each batch; then the next attack starts from those still robust."""
    adversary.attacks_to_run = [attack]
    while progress.pending.any():
        index = progress.pending.nonzero().squeeze(1)[:batch_size]
        x_batch_adv, y_batch_adv = adversary.run_standard_evaluation(
            x[index], y[index], batch_size=batch_size
        )
        fooled = y_batch_adv != y[index]
        progress.x_adv[index[fooled]] = x_batch_adv[fooled]
        progress.robust[index[fooled]] = False
        progress.pending[index] = False
        progress.save(state_path)
    progress.accuracy[attack] = progress.robust.float().mean().item()
    progress.attack_index += 1
    progress.pending = progress.robust.clone()
    progress.save(state_path)


@dataclass
class _Progress:
    """How far an evaluation got; what `state_path` holds after every batch."""

    fingerprint: str | None
    x_adv: Tensor
    robust: Tensor  # correctly classified on x and under every attack run so far
    pending: Tensor  # robust examples the current attack has not been run on yet
    attack_index: int
    accuracy: dict[str, float]  # robust accuracy after each attack, for the Square check

    def save(self, path: Path | None) -> None:
        if path is not None:
            tensors = {"x_adv": self.x_adv, "robust": self.robust, "pending": self.pending}
            metadata = {
                "fingerprint": self.fingerprint,
                "attack_index": self.attack_index,
                "accuracy": self.accuracy,
            }
            save_tensors(path, tensors, metadata)

    @classmethod
    def load(cls, path: Path, fingerprint: str, device: torch.device) -> _Progress | None:
        if not path.exists():
            return None
        tensors, metadata = load_tensors(path, what="AutoAttack state")
        if metadata.get("fingerprint") != fingerprint:
            raise CheckpointError(
                f"AutoAttack state {path} was written for another model, data set or setting; "
                "delete it or pass a different state_path"
            )
        return cls(
            fingerprint,
            tensors["x_adv"].to(device),
            tensors["robust"].to(device),
            tensors["pending"].to(device),
            metadata["attack_index"],
            metadata["accuracy"],
        )


def _fingerprint(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str, version: str, seed: int
) -> str:
    """Hash of everything a resumed run must share with the run that wrote the state."""
    digest = hashlib.sha256(f"{eps!r} {norm} {version} {seed}".encode())
    weights = [value for value in model.state_dict().values() if isinstance(value, Tensor)]
    for tensor in (x, y, *weights):
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy())
    return digest.hexdigest()


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([model(batch).argmax(1) for batch in x.split(batch_size)])


class _Float32Logits(nn.Module):
    """The model with float32 logits: APGD's DLR loss divides by logit gaps, which fp16 autocast
    logits can round to zero."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).float()


@contextlib.contextmanager
def _deterministic(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode, frozen parameters and a forked RNG for the run; everything restored after.

    Modes are restored per module, so a model that kept e.g. frozen BatchNorm in eval mode inside
    a training model gets exactly that back.
    """
    modes = [(module, module.training) for module in model.modules()]
    requires_grad = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    rng_devices = [device] if device.type == "cuda" else []
    model.eval()
    for parameter, _ in requires_grad:
        parameter.requires_grad_(False)
    try:
        with torch.random.fork_rng(devices=rng_devices, device_type="cuda"):
            yield
    finally:
        for module, training in modes:
            module.training = training
        for parameter, flag in requires_grad:
            parameter.requires_grad_(flag)


class _CollectWarnings(logging.Handler):
    """pyautoattack's warnings, each kept once: its checks repeat for every batch (and target
    class), with counts that differ, so messages that differ only in numbers are counted instead."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self._first: dict[str, str] = {}
        self._count: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        kind = re.sub(r"\d+(\.\d+)?%?", "#", message)
        self._first.setdefault(kind, message)
        self._count[kind] += 1

    @property
    def messages(self) -> list[str]:
        return [
            message if self._count[kind] == 1 else f"{message} (reported {self._count[kind]} times)"
            for kind, message in self._first.items()
        ]


@contextlib.contextmanager
def _pyautoattack_log() -> Iterator[_CollectWarnings]:
    """Route pyautoattack's logger to a collector instead of the root logger for the run."""
    logger = logging.getLogger("auto-attack")
    handler = _CollectWarnings()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
