"""Per-example losses on logits that attacks maximise.

Per-example (shape `(B,)`) rather than averaged, so that PGD can pick, for each example, the restart
that hurt it most, and so that the gradient of their sum is each example's own gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from advprune.core.errors import ConfigError, GradientMaskingError

Loss = Callable[[Tensor, Tensor], Tensor]
"""`(logits, y) -> (B,)` loss to maximise; `y` is what the caller passes (labels, soft targets)."""


def cross_entropy_loss(logits: Tensor, y: Tensor) -> Tensor:
    """CE(f(x̃), y): the loss of PGD-AT (Madry et al., 2018) and of the standard PGD evaluation."""
    return F.cross_entropy(logits, y, reduction="none")


def cw_margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """max_{k≠y} z_k − z_y: the Carlini–Wagner (2017) margin, positive once x̃ is misclassified.

    Unlike cross-entropy it does not saturate when the softmax does, so "CW-∞" (PGD on this margin)
    still finds a direction on models whose softmax is flat or overconfident.
    """
    true_logit = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    is_true = F.one_hot(y, logits.shape[1]).bool()
    best_other_logit = logits.masked_fill(is_true, -torch.inf).amax(dim=1)
    return best_other_logit - true_logit


LOSSES: dict[str, Loss] = {"ce": cross_entropy_loss, "cw": cw_margin_loss}


def resolve_loss(loss: str | Loss) -> Loss:
    """A loss given by name ("ce", "cw") or as a callable, which is returned as is."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ConfigError(f"unknown attack loss {loss!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[loss]


def input_gradient(objective: Tensor, x: Tensor) -> Tensor:
    """∇_x of `objective` summed over the batch, for a gradient attack.

    A model that detaches its input, takes an argmax or rounds to integers inside gives no
    gradient at all, and its robust accuracy under a gradient attack would be its clean accuracy
    (Athalye et al., 2018, "shattered gradients"): that is a GradientMaskingError, not a number.
    """
    grad = None
    if objective.requires_grad:
        (grad,) = torch.autograd.grad(objective.sum(), x, allow_unused=True)
    if grad is None:
        raise GradientMaskingError(
            "the model's output has no gradient w.r.t. its input (a detach, argmax or integer "
            "step inside), so gradient attacks cannot run; make it differentiable (e.g. a "
            "straight-through estimator) or rely on transfer and AutoAttack's Square only"
        )
    return grad
