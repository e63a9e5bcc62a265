"""Black-box transfer attack: adversarial examples crafted on a separately trained source model.

The target's gradients are never used, so a defence that only masks gradients resists white-box PGD
but not this; black-box accuracy below white-box accuracy is a red flag (Athalye et al., 2018).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advprune.attacks.losses import Loss
from advprune.attacks.pgd import pgd


def transfer(
    source_model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    steps: int = 40,
    alpha: float | None = None,
    loss: str | Loss = "ce",
    generator: torch.Generator | None = None,
) -> Tensor:
    """L∞ PGD-`steps` (random start, alpha 2.5·eps/steps by default) on `source_model`; evaluate
    the target on the result; ANP-VS uses PGD-40 from an independently trained PGD-AT model.
    """
    return pgd(source_model, x, y, eps, alpha=alpha, steps=steps, loss=loss, generator=generator)
