"""Training objectives (docs/methods.md): the loss on the weights and the examples it is taken on.

Adversarial examples are generated with the model in eval mode (BN statistics frozen) and the loss
is taken in train mode, as in Madry et al. and TRADES' reference code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from advprune.attacks import pgd
from advprune.core.distributed import unwrap


@dataclass(frozen=True)
class AttackSettings:
    """The training-time attack: L∞ PGD with `steps` steps of `step_size` inside radius `eps`.

    Random starts come from `generator` (the global RNG if None). The trainer gives every rank a
    generator in the same state and the rank's `noise_shard`, so under DDP each example gets the
    start it would get on one process (`attacks.Ball`).
    """

    eps: float
    steps: int
    step_size: float | None = None
    generator: torch.Generator | None = None
    noise_shard: tuple[int, int] = (0, 1)


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor
    logits: torch.Tensor  # the predictions whose accuracy is logged as train accuracy


def _adversarial(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, attack: AttackSettings, **options
) -> torch.Tensor:
    model = unwrap(model)  # under DDP: each rank attacks its own shard, no gradient all-reduce
    model.eval()
    try:
        return pgd(
            model,
            x,
            target,
            attack.eps,
            alpha=attack.step_size,
            steps=attack.steps,
            generator=attack.generator,
            noise_shard=attack.noise_shard,
            **options,
        )
    finally:
        model.train()


def standard(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSettings, beta: float
) -> ObjectiveOutput:
    """Plain empirical risk: CE(f(x), y)."""
    logits = model(x)
    return ObjectiveOutput(F.cross_entropy(logits.float(), y), logits)


def pgd_at(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSettings, beta: float
) -> ObjectiveOutput:
    """Madry et al. (2018): CE(f(x̃), y), x̃ = PGD on CE with a uniform random start."""
    x_adv = _adversarial(model, x, y, attack)
    logits = model(x_adv)
    return ObjectiveOutput(F.cross_entropy(logits.float(), y), logits)


def _kl_to_clean(logits_adv: torch.Tensor, clean_probabilities: torch.Tensor) -> torch.Tensor:
    """Per-example KL(p(x) ‖ p(x̃)), TRADES' inner maximisation loss."""
    log_adv = F.log_softmax(logits_adv.float(), dim=1)
    return F.kl_div(log_adv, clean_probabilities, reduction="none").sum(dim=1)


def trades(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSettings, beta: float
) -> ObjectiveOutput:
    """Zhang et al. (2019): CE(f(x), y) + β·KL(p(x) ‖ p(x̃)).

    x̃ maximises the KL, starting from x + 0.001·N(0, 1).
    """
    model.eval()
    with torch.no_grad():
        clean_probabilities = F.softmax(model(x).float(), dim=1)
    x_adv = _adversarial(model, x, clean_probabilities, attack, loss=_kl_to_clean, init="normal")
    logits = model(x)
    logits_adv = model(x_adv)
    robust = _kl_to_clean(logits_adv, F.softmax(logits.float(), dim=1)).mean()
    return ObjectiveOutput(F.cross_entropy(logits.float(), y) + beta * robust, logits)


def mart(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSettings, beta: float
) -> ObjectiveOutput:
    """Wang et al. (2020): BCE(p(x̃), y) + β·KL(p(x) ‖ p(x̃))·(1 − p_y(x)), x̃ = PGD on CE.

    BCE = −log p_y(x̃) − log(1 − max_{k≠y} p_k(x̃)): the boosted CE also pushes down the
    strongest wrong class. The KL term is weighted towards misclassified clean examples. The
    attack starts from x + 0.001·N(0, 1), as MART's reference code and MAD's fine-tuning do.
    """
    x_adv = _adversarial(model, x, y, attack, init="normal")
    logits = model(x).float()
    logits_adv = model(x_adv).float()
    probabilities_adv = F.softmax(logits_adv, dim=1)
    wrong = probabilities_adv.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    boosted = F.cross_entropy(logits_adv, y) - torch.log(1.0001 - wrong + 1e-12).mean()
    probabilities = F.softmax(logits, dim=1)
    true_probability = probabilities.gather(1, y[:, None]).squeeze(1)
    kl = _kl_to_clean(logits_adv, probabilities)
    return ObjectiveOutput(boosted + beta * (kl * (1 - true_probability)).mean(), logits_adv)


def mixed_at(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSettings, beta: float
) -> ObjectiveOutput:
    """(CE(f(x), y) + 2·CE(f(x̃), y)) / 3, x̃ = PGD on CE: ANP-VS's adversarial-training
    baseline (the official code's AT row: the weights' loss of ANP-VS without gates and VS)."""
    x_adv = _adversarial(model, x, y, attack)
    logits = model(x)
    logits_adv = model(x_adv)
    clean = F.cross_entropy(logits.float(), y)
    loss = (clean + 2 * F.cross_entropy(logits_adv.float(), y)) / 3
    return ObjectiveOutput(loss, logits_adv)


def fast_at(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSettings, beta: float
) -> ObjectiveOutput:
    """Wong et al. (2020) "fast" FGSM-RS: one step of 1.25·ε from a uniform start; CE(f(x̃), y).

    Watch the per-epoch PGD monitor: this objective can overfit catastrophically.
    """
    fgsm_rs = dataclasses.replace(attack, steps=1, step_size=1.25 * attack.eps)
    x_adv = _adversarial(model, x, y, fgsm_rs)
    logits = model(x_adv)
    return ObjectiveOutput(F.cross_entropy(logits.float(), y), logits)


OBJECTIVE_FUNCTIONS: dict[str, Callable[..., ObjectiveOutput]] = {
    "standard": standard,
    "pgd-at": pgd_at,
    "trades": trades,
    "mart": mart,
    "mixed-at": mixed_at,
    "fast-at": fast_at,
}
