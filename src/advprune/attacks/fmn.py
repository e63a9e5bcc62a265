"""Fast Minimum-Norm attack (FMN; Pintor et al., NeurIPS 2021): the smallest perturbation that
misclassifies each example, rather than the best one inside a fixed ε.

Its per-example distances give the whole security curve at once — robust accuracy at ε is the
share of examples whose distance exceeds ε — which is how the Adversarial Pruning Benchmark
(Piras et al., 2024) reports robustness. Algorithm 1 of the paper, for L∞ and L2:

- the margin m(x̃) = z_y − max_{k≠y} z_k is minimised by normalised gradient steps
  δ ← δ − α·∇m/‖∇m‖₂, then δ is projected onto the ε-ball and x + δ onto the [0, 1] box;
- ε adapts: while x + δ is adversarial it shrinks, ε ← min(ε(1 − γ), best norm); once an
  adversarial point was found and lost it grows, ε ← ε(1 + γ); before any is found it is the
  linear estimate of the boundary's distance, ‖δ‖ + |m|/‖∇m‖_q (q the dual norm), here
  overshot by the same factor 1 + γ: on a locally linear network the exact estimate only
  approaches the boundary from inside and never crosses it;
- α and γ decay from their initial to their final values on a cosine schedule;
- the smallest adversarial perturbation seen is kept.

secml-torch 1.5 has an FMN, but its native loop keeps the distances on the CPU and compares them
with predictions on the model's device, so it cannot run a model on a GPU; this one keeps every
tensor on `x`'s device. The benchmark's HO-FMN tunes α, the loss and the optimiser per model (32
trials on 64 examples); here the paper's defaults are fixed, so distances are upper bounds that a
tuned attack could shorten.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from advprune.attacks.ball import check_norm
from advprune.attacks.losses import cw_margin_loss, input_gradient
from advprune.core.errors import ConfigError

_ORDERS = {"linf": math.inf, "l2": 2.0}
_DUAL_ORDERS = {"linf": 1.0, "l2": 2.0}


@torch.enable_grad()
def fmn_distances(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "linf",
    steps: int = 200,
    alpha_init: float = 1.0,
    alpha_final: float | None = None,
    gamma_init: float = 0.05,
    gamma_final: float = 0.001,
) -> tuple[Tensor, Tensor]:
    """(distances, x_best): per example the `norm` of the smallest adversarial perturbation found
    (0 where x is misclassified already, inf where none was found) and that adversarial example
    (x where none was found). Gradients w.r.t. the input only; the model's mode is the caller's.

    Example: `d, _ = fmn_distances(model, x, y, steps=100); robust = (d > 8 / 255).float().mean()`.
    """
    check_norm(norm)
    if steps < 1 or alpha_init <= 0:
        raise ConfigError(f"FMN needs steps ≥ 1 and alpha_init > 0, got {steps}, {alpha_init}")
    x, y = x.detach(), y.detach()
    order = _ORDERS[norm]
    alpha_final = alpha_init / 100 if alpha_final is None else alpha_final
    worst = torch.maximum(x, 1 - x).flatten(1).norm(p=order, dim=1)  # no perturbation is larger
    delta = torch.zeros_like(x)
    epsilon = torch.full_like(worst, math.inf)
    best_norm = torch.full_like(worst, math.inf)
    best = x.clone()
    found = torch.zeros_like(worst, dtype=torch.bool)
    for step in range(steps + 1):
        margin, grad, adversarial = _margin_and_gradient(model, x, y, delta, last=step == steps)
        size = delta.flatten(1).norm(p=order, dim=1)
        better = adversarial & (size < best_norm)
        best_norm = torch.where(better, size, best_norm)
        best = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x + delta, best)
        found |= adversarial
        if step == steps:
            break
        cosine = (1 + math.cos(math.pi * step / steps)) / 2
        gamma = gamma_final + (gamma_init - gamma_final) * cosine
        alpha = alpha_final + (alpha_init - alpha_final) * cosine
        dual_norm = grad.flatten(1).norm(p=_DUAL_ORDERS[norm], dim=1).clamp(min=1e-12)
        boundary = (size + margin.abs() / dual_norm) * (1 + gamma)
        grown = torch.where(found, epsilon * (1 + gamma), boundary)
        epsilon = torch.minimum(
            torch.where(adversarial, torch.minimum(epsilon * (1 - gamma), best_norm), grown), worst
        )
        delta = _step(x, delta, grad, alpha, epsilon, norm)
    return best_norm, best


def _margin_and_gradient(
    model: nn.Module, x: Tensor, y: Tensor, delta: Tensor, *, last: bool
) -> tuple[Tensor, Tensor | None, Tensor]:
    """m(x + δ) = z_y − max_{k≠y} z_k, its gradient w.r.t. δ (None on the last, unused, pass) and
    whether x + δ is misclassified."""
    delta = delta.detach().requires_grad_(not last)
    with torch.set_grad_enabled(not last):
        logits = model(x + delta).float()
        margin = -cw_margin_loss(logits, y)
    grad = None if last else input_gradient(margin, delta)
    return margin.detach(), grad, logits.argmax(1) != y


def _step(
    x: Tensor, delta: Tensor, grad: Tensor, alpha: float, epsilon: Tensor, norm: str
) -> Tensor:
    """δ − α·∇/‖∇‖₂, projected onto the per-example ε-ball, then x + δ clipped to [0, 1]."""
    shape = (-1, *[1] * (x.dim() - 1))
    grad_norm = grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(shape)
    delta = delta - alpha * grad / grad_norm
    radius = epsilon.view(shape)
    if norm == "linf":
        delta = torch.maximum(torch.minimum(delta, radius), -radius)
    else:
        size = delta.flatten(1).norm(dim=1).clamp(min=1e-12).view(shape)
        delta = delta * torch.clamp(radius / size, max=1)
    return (x + delta).clamp(0, 1) - x


def fmn(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, *, norm: str = "linf", **options
) -> Tensor:
    """FMN in the call shape of the bounded attacks: the smallest adversarial example where its
    distance is ≤ `eps`, x elsewhere, so accuracy under it is the share of distances > eps."""
    distances, best = fmn_distances(model, x, y, norm=norm, **options)
    within = (distances <= eps).view(-1, *[1] * (x.dim() - 1))
    return torch.where(within, best, x.detach())
