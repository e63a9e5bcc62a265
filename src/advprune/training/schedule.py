"""Learning rate as a pure function of training progress: nothing to checkpoint, exact on resume."""

from __future__ import annotations

import math
from collections.abc import Sequence


def learning_rate(
    base_lr: float, schedule: str, progress: float, milestones: Sequence[float], gamma: float
) -> float:
    """lr at `progress` ∈ [0, 1) of training: constant, step decay at milestones, or cosine."""
    if schedule == "step":
        return base_lr * gamma ** sum(progress >= m for m in milestones)
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr
