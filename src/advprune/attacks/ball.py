"""The threat model: the eps-ball around a clean batch, intersected with the [0, 1] image box.

Random starts, steepest-ascent steps and projections are the only places where the norm matters;
keeping them here lets every gradient attack be written once for both L∞ and L2.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from advprune.core.errors import ConfigError

NORMS = ("linf", "l2")
INITS = ("uniform", "normal", "zero")


def check_eps(eps: float) -> None:
    """Reject a radius no attack can use (negative, NaN or infinite)."""
    if not math.isfinite(eps) or eps < 0:
        raise ConfigError(
            f"attack radius eps={eps} is invalid; use a finite eps ≥ 0 in [0, 1] pixel units, "
            "e.g. 8/255"
        )


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ConfigError(f"unknown attack norm {norm!r}; choose one of {', '.join(NORMS)}")


def check_init(init: str) -> None:
    if init not in INITS:
        raise ConfigError(f"unknown attack init {init!r}; choose one of {', '.join(INITS)}")


class Ball:
    """{x̃ : ‖x̃ − x‖ ≤ eps, 0 ≤ x̃ ≤ 1} for each example x of a batch.

    `noise_shard` (rank, world_size) says the batch is rows rank, rank + world_size, ... of a
    global batch, as a data-parallel rank gets it: random starts are then drawn for the whole
    global batch and this batch keeps its rows, so each example starts where it would in a
    single-process run from the same generator state.
    """

    def __init__(
        self, x: Tensor, eps: float, norm: str, noise_shard: tuple[int, int] = (0, 1)
    ) -> None:
        check_eps(eps)
        check_norm(norm)
        self.center = x.detach()
        self.eps = eps
        self.norm = norm
        self.noise_shard = noise_shard
        if norm == "linf":
            # The L∞ ball ∩ box is itself a box; computed once because PGD projects every step.
            self._lower = (self.center - eps).clamp_(min=0)
            self._upper = (self.center + eps).clamp_(max=1)

    def project(self, point: Tensor) -> Tensor:
        """The nearest point of the set (per example), so every iterate is a valid input."""
        if self.norm == "linf":
            return torch.clamp(point, self._lower, self._upper)
        delta = point - self.center
        shrink = (self.eps / _per_example_norm(delta).clamp_min(1e-12)).clamp_(max=1)
        # x is in the box, so clamping only moves coordinates towards x: x̃ stays in the ball.
        return (self.center + delta * shrink).clamp_(0, 1)

    def step(self, point: Tensor, grad: Tensor, alpha: float) -> Tensor:
        """Steepest ascent of length `alpha`, then projection (Madry et al., 2018, eq. 3).

        L∞: alpha·sign(∇); L2: alpha·∇/‖∇‖₂ per example.
        """
        if self.norm == "linf":
            direction = grad.sign()
        else:
            direction = grad / _per_example_norm(grad).clamp_min(1e-12)
        return self.project(point + alpha * direction)

    def start(self, init: str, generator: torch.Generator | None = None) -> Tensor:
        """A starting point: "uniform" in the ball (L2: random direction, radius uniform in
        [0, eps]), "normal" = x + 0.001·N(0, 1) as in TRADES, or "zero" = x itself."""
        check_init(init)
        if init == "zero":
            return self.center.clone()
        if init == "normal":
            return self.project(self.center + 0.001 * self._noise(torch.randn, generator))
        if self.norm == "linf":
            delta = (2 * self._noise(torch.rand, generator) - 1) * self.eps
        else:
            direction = self._noise(torch.randn, generator)
            direction /= _per_example_norm(direction).clamp_min(1e-12)
            radius = self._noise(torch.rand, generator, shape=(len(self.center),))
            delta = direction * radius.view(-1, *[1] * (self.center.dim() - 1)) * self.eps
        return self.project(self.center + delta)

    def _noise(
        self,
        sample: Callable[..., Tensor],
        generator: torch.Generator | None,
        shape: tuple[int, ...] | None = None,
    ) -> Tensor:
        """Noise drawn on `generator`'s own device, so a CPU generator also seeds CUDA runs."""
        device = self.center.device if generator is None else generator.device
        rank, world_size = self.noise_shard
        shape = shape or self.center.shape
        noise = sample(
            (shape[0] * world_size, *shape[1:]),
            generator=generator,
            device=device,
            dtype=self.center.dtype,
        )
        return noise[rank::world_size].to(self.center.device)


def _per_example_norm(t: Tensor) -> Tensor:
    """‖t_i‖₂ for each example, shaped to broadcast against `t`."""
    return torch.linalg.vector_norm(t.flatten(1), dim=1).view(-1, *[1] * (t.dim() - 1))
