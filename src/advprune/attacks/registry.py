"""The named attacks of the evaluation protocol, so that the evaluator is a loop over names.

`ATTACKS[name]` is an `AttackSpec(name, description, run)` with one call shape for every name:

    x_adv = ATTACKS[name].run(model, x, y, eps, seed=0, **options)

The protocol's settings (all L∞) are fixed in `run`; `options` override them for a sanity check,
e.g. `ATTACKS["pgd"].run(..., steps=50)` is PGD-50 with step 2.5·eps/50. `seed` draws the random
starts (FGSM has none). "clean" is not an attack: `parse_attacks` accepts it, meaning "evaluate on
x itself", and it is not in `ATTACKS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advprune.attacks.autoattack import autoattack
from advprune.attacks.fgsm import fgsm
from advprune.attacks.pgd import pgd
from advprune.core.errors import ConfigError

CLEAN = "clean"


@dataclass(frozen=True)
class AttackSpec:
    name: str
    description: str  # the settings, as a results table should report them
    run: Callable[..., Tensor]  # run(model, x, y, eps, *, seed=0, **options) -> x_adv


def _fgsm(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, *, seed: int = 0, **options: Any
) -> Tensor:
    """FGSM is deterministic: `seed` is accepted only for the uniform call shape."""
    return fgsm(model, x, y, eps, **options)


def _seeded_pgd(**settings: Any) -> Callable[..., Tensor]:
    def run(
        model: nn.Module, x: Tensor, y: Tensor, eps: float, *, seed: int = 0, **options: Any
    ) -> Tensor:
        generator = torch.Generator(device=x.device).manual_seed(seed)
        return pgd(model, x, y, eps, generator=generator, **{**settings, **options})

    return run


ATTACKS: dict[str, AttackSpec] = {
    spec.name: spec
    for spec in (
        AttackSpec("fgsm", "FGSM, one signed step of eps", _fgsm),
        AttackSpec(
            "pgd",
            "PGD-20 on cross-entropy, uniform random start, step 2.5·eps/20",
            _seeded_pgd(steps=20, loss="ce"),
        ),
        AttackSpec(
            "cw",
            "CW-∞: PGD-30 on the CW margin loss, uniform random start, step 2.5·eps/30",
            _seeded_pgd(steps=30, loss="cw"),
        ),
        AttackSpec(
            "autoattack", "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square)", autoattack
        ),
    )
}


def parse_attacks(names: str | Iterable[str]) -> list[str]:
    """ "clean,fgsm,pgd" (or a list of names) → ["clean", "fgsm", "pgd"], duplicates dropped."""
    if isinstance(names, str):
        names = names.split(",")
    parsed = list(dict.fromkeys(name.strip() for name in names if name.strip()))
    known = [CLEAN, *ATTACKS]
    unknown = [name for name in parsed if name not in known]
    if unknown or not parsed:
        raise ConfigError(
            f"unknown attack {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"choose from {', '.join(known)}"
        )
    return parsed
