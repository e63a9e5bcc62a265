"""Projected gradient descent (Madry et al., 2018): the attack adversarial training runs per batch.

x̃_{t+1} = Π_{B(x, eps) ∩ [0,1]}(x̃_t + alpha·step(∇_x̃ L(f(x̃_t), y))) from a random start, L∞ or L2.
It runs inside training loops, so the step loop does no host-device synchronisation, and gradients
are taken w.r.t. the input only (`torch.autograd.grad`): parameters' `.grad` is never touched and
the model's train/eval mode is the caller's choice.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advprune.attacks.ball import Ball, check_init
from advprune.attacks.losses import Loss, resolve_loss
from advprune.core.errors import ConfigError


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
    labels, the highest loss wins.
    """
    ball = Ball(x, eps, norm, noise_shard)
    loss_fn = resolve_loss(loss)
    check_init(init)
    if steps < 1 or restarts < 1:
        raise ConfigError(f"PGD needs steps ≥ 1 and restarts ≥ 1, got {steps} and {restarts}")
    if eps == 0:
        return x.detach().clone()
    if alpha is not None and alpha <= 0:
        raise ConfigError(
            f"PGD step size alpha={alpha} must be > 0; leave it unset for the default"
        )
    alpha = 2.5 * eps / steps if alpha is None else alpha

    def attack_once() -> Tensor:
        x_adv = ball.start(init, generator)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            objective = loss_fn(model(x_adv).float(), y)
            (grad,) = torch.autograd.grad(objective.sum(), x_adv)
            x_adv = ball.step(x_adv.detach(), grad, alpha)
        return x_adv

    best = attack_once()
    if restarts == 1:
        return best
    best_score, best_fooled = _score(model, best, y, loss_fn, by_label=isinstance(loss, str))
    for _ in range(restarts - 1):
        x_adv = attack_once()
        score, fooled = _score(model, x_adv, y, loss_fn, by_label=isinstance(loss, str))
        better = ~best_fooled & (fooled | (score > best_score))
        best = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x_adv, best)
        best_score = torch.where(better, score, best_score)
        best_fooled |= fooled
    return best


@torch.no_grad()
def _score(
    model: nn.Module, x_adv: Tensor, y: Tensor, loss_fn: Loss, *, by_label: bool
) -> tuple[Tensor, Tensor]:
    """Loss at the final point and whether it is misclassified (never, when `y` is not labels)."""
    logits = model(x_adv).float()
    score = loss_fn(logits, y)
    fooled = logits.argmax(1) != y if by_label else torch.zeros_like(score, dtype=torch.bool)
    return score, fooled
