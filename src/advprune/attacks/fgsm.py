"""The fast gradient sign method (Goodfellow et al., 2015): x̃ = clip(x + eps·sign(∇_x L(f(x), y))).

The weakest white-box attack: tables report it as a floor, and a model that resists PGD but not
FGSM is masking gradients.
"""

from __future__ import annotations

from torch import Tensor, nn

from advprune.attacks.losses import Loss
from advprune.attacks.pgd import pgd


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, loss: str | Loss = "ce") -> Tensor:
    """One signed-gradient step of size `eps` from x (L∞); it is PGD with one step and no random
    start, so it shares PGD's guarantees (input-only gradients, float32 loss, [0, 1] box)."""
    return pgd(model, x, y, eps, alpha=eps, steps=1, loss=loss, init="zero")
