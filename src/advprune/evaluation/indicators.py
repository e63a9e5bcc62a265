"""Indicators of attack failure (Pintor et al., NeurIPS 2022): six ways a robust accuracy can be
inflated because the attack failed, each measured on a few test examples and each with a verdict.

1. unavailable gradients: the input gradient of PGD's loss is zero or not finite on some examples
   (a quantising or non-differentiable layer), so a gradient attack cannot move.
2. unstable predictions: small uniform noise (±ε/4) changes the predicted class — a randomised
   model, whose single forward pass an attack cannot rely on (it needs EOT).
3. silent success: PGD passed through a misclassified point but returned a correctly classified
   one, so the reported accuracy counts an example the attack had broken.
4. incomplete optimisation: on examples PGD did not break, its best loss was still rising over the
   last quarter of the steps; more steps would have found more.
5. transfer failure: PGD crafted on a separate surrogate model breaks examples that white-box PGD
   on the model itself did not — the white-box attack is the weaker one.
6. unbounded attack: PGD with ε = 1 (the whole [0, 1] box) must misclassify every example; one it
   cannot is out of reach of the attack, not robust.

Each indicator is computed per example on the evaluation's own PGD (same steps, same seed) and
summarised as a share with a limit; `passed` is None where it could not be computed (transfer
failure without a surrogate).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from advprune.attacks import ATTACKS, PGDTrace, cross_entropy_loss
from advprune.attacks.losses import input_gradient
from advprune.core.errors import GradientMaskingError

NOISE_FRACTION = 0.25  # unstable predictions: uniform noise of ±ε/4
NOISE_DRAWS = 8
UNBOUNDED_EPS = 1.0  # the whole image box: every input is reachable
LATE_FRACTION = 0.25  # incomplete optimisation: the last quarter of the steps…
LATE_RISE = 0.10  # …raise the best loss by more than 10 % of its whole rise
LIMITS = {  # the largest share of examples an indicator tolerates
    "unavailable_gradients": 0.01,
    "unstable_predictions": 0.05,
    "silent_success": 0.05,
    "incomplete_optimisation": 0.05,
    "transfer_failure": 0.02,
    "unbounded_attack": 0.0,
}
DESCRIPTIONS = {
    "unavailable_gradients": "share of examples whose input gradient is zero or not finite",
    "unstable_predictions": "share of noisy copies (±ε/4) classified differently from the input",
    "silent_success": "share of examples PGD misclassified on its way but not at its end",
    "incomplete_optimisation": "share of examples PGD left correct with its loss still rising",
    "transfer_failure": "share of examples a transfer attack breaks and white-box PGD does not",
    "unbounded_attack": "accuracy under PGD with ε = 1 (the whole image box)",
}


def attack_failure_indicators(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    steps: int,
    seed: int = 0,
    surrogate: nn.Module | None = None,
    batch_size: int = 500,
) -> dict[str, Any]:
    """The six indicators on examples `x` (the model in the caller's mode, eval for evaluation):
    {"passed", "examples", "indicators": {name: {"passed", "share", "limit", …}}}.

    Example: `attack_failure_indicators(model, x[:100], y[:100], 0.1, steps=20)["passed"]`.
    """
    per_example: dict[str, list[Tensor]] = {}
    errors: dict[str, str] = {}
    for start in range(0, len(x), batch_size):
        chunk = slice(start, start + batch_size)
        batch = _per_example(model, x[chunk], y[chunk], eps, steps, seed, surrogate, errors)
        for name, values in batch.items():
            per_example.setdefault(name, []).append(values.cpu())
    measured = {name: torch.cat(values) for name, values in per_example.items()}
    indicators = {name: _verdict(name, measured.get(name), errors.get(name)) for name in LIMITS}
    if surrogate is None:
        indicators["transfer_failure"] = {
            "passed": None,
            "reason": "no surrogate model: pass --transfer-from RUN (a separately trained run)",
        }
    verdicts = [entry["passed"] for entry in indicators.values()]
    return {"passed": False not in verdicts, "examples": len(x), "indicators": indicators}


def _per_example(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int,
    seed: int,
    surrogate: nn.Module | None,
    errors: dict[str, str],
) -> dict[str, Tensor]:
    """Each indicator's per-example failure (bool, or a share for unstable predictions) on one
    batch; an indicator whose attack cannot run at all fails on every example, with the reason."""
    measured: dict[str, Tensor] = {}

    def attempt(names: tuple[str, ...], measure: Callable[[], dict[str, Tensor]]) -> None:
        try:
            measured.update(measure())
        except GradientMaskingError as err:
            for name in names:
                errors[name] = str(err)
                measured[name] = torch.ones(len(x), dtype=torch.bool)

    attempt(("unavailable_gradients",), lambda: {"unavailable_gradients": no_gradient(model, x, y)})
    measured["unstable_predictions"] = unstable_predictions(model, x, eps, seed)
    whitebox: dict[str, Tensor] = {}

    def pgd_indicators() -> dict[str, Tensor]:
        silent, incomplete, correct = traced_pgd(model, x, y, eps, steps, seed)
        whitebox["correct"] = correct
        return {"silent_success": silent, "incomplete_optimisation": incomplete}

    attempt(("silent_success", "incomplete_optimisation", "transfer_failure"), pgd_indicators)
    if surrogate is not None and "correct" in whitebox:
        transfer = ATTACKS["transfer"].run(model, x, y, eps, seed=seed, source=surrogate)
        measured["transfer_failure"] = whitebox["correct"] & ~_correct(model, transfer, y)

    def unbounded() -> dict[str, Tensor]:
        x_adv = ATTACKS["pgd"].run(model, x, y, UNBOUNDED_EPS, seed=seed, steps=steps)
        return {"unbounded_attack": _correct(model, x_adv, y)}

    attempt(("unbounded_attack",), unbounded)
    return measured


@torch.enable_grad()
def no_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Per example: the input gradient of cross-entropy at x is all zero or not finite."""
    x = x.detach().clone().requires_grad_(True)
    grad = input_gradient(cross_entropy_loss(model(x).float(), y), x)
    flat = grad.flatten(1)
    return ~torch.isfinite(flat).all(1) | (flat == 0).all(1)


@torch.no_grad()
def unstable_predictions(model: nn.Module, x: Tensor, eps: float, seed: int) -> Tensor:
    """Per example: the share of `NOISE_DRAWS` copies x + U(−ε/4, ε/4) (clipped to the box) whose
    class differs from x's; at ε = 0 the copies are x itself, which tests for randomness alone."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    reference = model(x).argmax(1)
    radius = NOISE_FRACTION * eps
    changed = torch.zeros(len(x), device=x.device)
    for _ in range(NOISE_DRAWS):
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        noisy = (x + (2 * noise - 1) * radius).clamp(0, 1)
        changed += (model(noisy).argmax(1) != reference).float()
    return changed / NOISE_DRAWS


def traced_pgd(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The evaluation's PGD with every iterate recorded: (silent success, incomplete optimisation,
    correct after the attack) per example."""
    trace = PGDTrace()
    ATTACKS["pgd"].run(model, x, y, eps, seed=seed, steps=steps, trace=trace)
    fooled = trace.fooled_history()
    returned_correct = ~fooled[-1]
    silent = fooled.any(0) & returned_correct
    best = trace.loss_history().cummax(0).values
    late = max(1, math.ceil(LATE_FRACTION * steps))
    rise, late_rise = best[-1] - best[0], best[-1] - best[-1 - late]
    incomplete = returned_correct & (rise > 1e-6) & (late_rise > LATE_RISE * rise)
    return silent, incomplete, returned_correct


@torch.no_grad()
def _correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return model(x).argmax(1) == y


def _verdict(name: str, failures: Tensor | None, error: str | None) -> dict[str, Any]:
    if failures is None:  # transfer failure without a surrogate
        return {"passed": None}
    # float64: in float32, 5 of 100 is 0.0500000007 and would fail a limit of 5 %
    share = failures.double().mean().item() if len(failures) else 0.0
    entry: dict[str, Any] = {
        "passed": share <= LIMITS[name],
        "share": share,
        "limit": LIMITS[name],
        "count": int((failures > 0).sum()),
        "description": DESCRIPTIONS[name],
    }
    if error is not None:
        entry["error"] = error
    return entry
