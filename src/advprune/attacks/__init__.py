"""Adversarial attacks on images in [0, 1], all called as `attack(model, x, y, eps, **options)`.

Each returns a detached x_adv with x's shape, dtype and device, inside the eps-ball and [0, 1],
without changing the model's mode or its parameters' `.grad` (AutoAttack alone switches to eval mode
for its run and restores the previous modes). `ATTACKS` names the protocol's attacks for the
evaluator; see `advprune.attacks.registry` for its shape. `fmn_distances` gives the minimal
perturbation of each example (the security curve at once).
"""

from advprune.attacks.autoattack import AutoAttackWarning, autoattack
from advprune.attacks.fgsm import fgsm
from advprune.attacks.fmn import fmn, fmn_distances
from advprune.attacks.losses import LOSSES, cross_entropy_loss, cw_margin_loss
from advprune.attacks.pgd import PGDTrace, pgd
from advprune.attacks.registry import ATTACKS, CLEAN, SOURCE, AttackSpec, parse_attacks
from advprune.attacks.transfer import transfer

__all__ = [
    "ATTACKS",
    "CLEAN",
    "LOSSES",
    "SOURCE",
    "AttackSpec",
    "AutoAttackWarning",
    "PGDTrace",
    "autoattack",
    "cross_entropy_loss",
    "cw_margin_loss",
    "fgsm",
    "fmn",
    "fmn_distances",
    "parse_attacks",
    "pgd",
    "transfer",
]
