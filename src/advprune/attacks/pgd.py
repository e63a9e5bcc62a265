"""Projected gradient descent (Madry et al., 2018): the attack adversarial training runs per batch.

x̃_{t+1} = Π_{B(x, eps) ∩ [0,1]}(x̃_t + alpha·step(∇_x̃ L(f(x̃_t), y))) from a random start, L∞ or L2.
It runs inside training loops, so the step loop does no host-device synchronisation, and gradients
are taken w.r.t. the input only (`torch.autograd.grad`): parameters' `.grad` is never touched and
the model's train/eval mode is the caller's choice.

Two evaluation options: `eot_samples` averages the gradient over several forward passes
(expectation over transformation, Athalye et al., 2018) for randomised models, and `trace`
records the loss and the prediction at every iterate, which the attack-failure indicators read
(Pintor et al., 2022: silent success, incomplete optimisation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from advprune.attacks.ball import Ball, check_init
from advprune.attacks.losses import Loss, input_gradient, resolve_loss
from advprune.core.errors import ConfigError


@dataclass
class PGDTrace:
    """Per-example loss and misclassification at every iterate x̃_0 … x̃_T (x̃_T is returned).

    Example:

        trace = PGDTrace()
        pgd(model, x, y, 0.1, steps=20, trace=trace)
        trace.loss_history().shape   # (21, len(x))
    """

    losses: list[Tensor] = field(default_factory=list)
    fooled: list[Tensor] = field(default_factory=list)

    def record(self, logits: Tensor, y: Tensor, loss: Tensor, by_label: bool) -> None:
        self.losses.append(loss.detach())
        wrong = logits.argmax(1) != y if by_label else torch.zeros_like(loss, dtype=torch.bool)
        self.fooled.append(wrong.detach())

    def loss_history(self) -> Tensor:
        """(T + 1, B) loss of each iterate, the random start first."""
        return torch.stack(self.losses)

    def fooled_history(self) -> Tensor:
        """(T + 1, B) whether each iterate was misclassified."""
        return torch.stack(self.fooled)


@torch.enable_grad()
def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    alpha: float | None = None,
    steps: int = 10,
    norm: str = "linf",
    loss: str | Loss = "ce",
    init: str = "uniform",
    restarts: int = 1,
    generator: torch.Generator | None = None,
    noise_shard: tuple[int, int] = (0, 1),
    eot_samples: int = 1,
    trace: PGDTrace | None = None,
) -> Tensor:
    """Adversarial examples for images `x` in [0, 1] within `eps` of `x` in `norm` ("linf"/"l2").

    `alpha` defaults to 2.5·eps/steps (Madry et al.), so the last steps can still cross the ball.
    `loss` is "ce", "cw" (CW-∞ margin) or a callable `(logits, y) -> (B,)`, e.g. TRADES' KL with
    `y` the clean probabilities; `y` reaches it untouched. Logits are cast to float32 first, so the
    loss is exact under autocast. `init` is "uniform", "normal" (TRADES) or "zero" (see
    `Ball.start`); `generator` draws the random start without touching the global RNG, and
    `noise_shard` (rank, world_size) draws it for a data-parallel rank's rows (see `Ball`).

    With `restarts > 1` each example keeps its first misclassified restart (or, if none, the one of
    highest loss), so restarts can only lower accuracy; with a callable loss, where `y` need not be
    labels, the highest loss wins. `eot_samples > 1` averages each step's gradient over that many
    forward passes; `trace` (single restart only) records every iterate.

    Example: `pgd(model, x, y, 8 / 255, steps=20, generator=torch.Generator().manual_seed(0))`.
    """
    ball = Ball(x, eps, norm, noise_shard)
    loss_fn = resolve_loss(loss)
    check_init(init)
    _check_settings(steps, restarts, eot_samples, trace)
    if eps == 0:
        return x.detach().clone()
    alpha = _step_size(alpha, eps, steps)
    by_label = isinstance(loss, str)

    def attack_once() -> Tensor:
        x_adv = ball.start(init, generator)
        for _ in range(steps):
            grad, logits, objective = _gradient(model, x_adv, y, loss_fn, eot_samples)
            if trace is not None:
                trace.record(logits, y, objective, by_label)
            x_adv = ball.step(x_adv, grad, alpha)
        if trace is not None:
            with torch.no_grad():
                logits = model(x_adv).float()
                trace.record(logits, y, loss_fn(logits, y), by_label)
        return x_adv

    if restarts == 1:
        return attack_once()
    return _best_of_restarts(model, y, loss_fn, restarts, attack_once, by_label=by_label)


def _best_of_restarts(
    model: nn.Module,
    y: Tensor,
    loss_fn: Loss,
    restarts: int,
    attack_once: Callable[[], Tensor],
    *,
    by_label: bool,
) -> Tensor:
    """Each example's first misclassified restart, or else the one of highest loss."""
    best = attack_once()
    best_score, best_fooled = _score(model, best, y, loss_fn, by_label=by_label)
    for _ in range(restarts - 1):
        x_adv = attack_once()
        score, fooled = _score(model, x_adv, y, loss_fn, by_label=by_label)
        better = ~best_fooled & (fooled | (score > best_score))
        best = torch.where(better.view(-1, *[1] * (best.dim() - 1)), x_adv, best)
        best_score = torch.where(better, score, best_score)
        best_fooled |= fooled
    return best


def _step_size(alpha: float | None, eps: float, steps: int) -> float:
    if alpha is not None and alpha <= 0:
        raise ConfigError(
            f"PGD step size alpha={alpha} must be > 0; leave it unset for the default"
        )
    return 2.5 * eps / steps if alpha is None else alpha


def _check_settings(steps: int, restarts: int, eot_samples: int, trace: PGDTrace | None) -> None:
    if steps < 1 or restarts < 1 or eot_samples < 1:
        raise ConfigError(
            f"PGD needs steps, restarts and eot_samples ≥ 1, got {steps}, {restarts} and "
            f"{eot_samples}"
        )
    if trace is not None and restarts > 1:
        raise ConfigError("a PGD trace follows one run; pass restarts=1 with trace")


def _gradient(
    model: nn.Module, x_adv: Tensor, y: Tensor, loss_fn: Loss, samples: int
) -> tuple[Tensor, Tensor, Tensor]:
    """∇ of the loss summed over the batch, averaged over `samples` forward passes (EOT), with the
    last pass's logits and the mean loss."""
    x_adv = x_adv.detach().requires_grad_(True)
    grad, total = None, None
    for _ in range(samples):
        logits = model(x_adv).float()
        objective = loss_fn(logits, y)
        step_grad = input_gradient(objective, x_adv)
        grad = step_grad if grad is None else grad + step_grad
        total = objective.detach() if total is None else total + objective.detach()
    if samples == 1:  # the training path: no extra arithmetic
        return grad, logits.detach(), total
    return grad / samples, logits.detach(), total / samples


@torch.no_grad()
def _score(
    model: nn.Module, x_adv: Tensor, y: Tensor, loss_fn: Loss, *, by_label: bool
) -> tuple[Tensor, Tensor]:
    """Loss at the final point and whether it is misclassified (never, when `y` is not labels)."""
    logits = model(x_adv).float()
    score = loss_fn(logits, y)
    fooled = logits.argmax(1) != y if by_label else torch.zeros_like(score, dtype=torch.bool)
    return score, fooled
