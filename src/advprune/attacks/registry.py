"""The named attacks of the evaluation protocol, so that the evaluator is a loop over names.

`ATTACKS[name]` is an `AttackSpec` with one call shape for every name:

    x_adv = ATTACKS[name].run(model, x, y, eps, seed=0, **options)

The protocol's settings (all L∞) are fixed in `run` and listed in `defaults`; `options` override
them, e.g. `ATTACKS["pgd"].run(..., steps=50)` is PGD-50 with step 2.5·eps/50. `seed` draws the
random starts (FGSM has none). What an evaluator needs to know beyond the call is described by
the spec, never by the attack's name: which evaluation settings feed which option (`settings`),
which setting limits its examples (`limit`), whether it runs on all its examples in one call so
that a state file can resume it (`whole_subset`, `state_file`), what it needs besides the model
(`needs`: "source", the transfer model), whether it gives per-example distances (`distances`:
minimum-norm attacks), whether it is meant for a randomised network (`stochastic`) and which
attack replaces it there (`sampled`), and whether the latent vulnerability is measured on its
examples (`vulnerability`). "clean" is not an attack: `parse_attacks` accepts it, meaning
"evaluate on x itself", and it is not in `ATTACKS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from advprune.attacks.autoattack import autoattack
from advprune.attacks.fgsm import fgsm
from advprune.attacks.fmn import fmn, fmn_distances
from advprune.attacks.pgd import pgd
from advprune.attacks.transfer import transfer
from advprune.core.errors import ConfigError

CLEAN = "clean"
SOURCE = "source"


@dataclass(frozen=True)
class AttackSpec:
    """An attack as the evaluator runs it (see the module docstring for each field)."""

    name: str
    description: str  # the settings, as a results table should report them; {option} filled in
    run: Callable[..., Tensor]  # run(model, x, y, eps, *, seed=0, **options) -> x_adv
    defaults: Mapping[str, Any] = field(default_factory=dict)
    settings: Mapping[str, str] = field(default_factory=dict)  # option -> evaluation setting
    limit: str | None = None
    whole_subset: bool = False
    state_file: bool = False
    needs: frozenset[str] = frozenset()
    distances: Callable[..., tuple[Tensor, Tensor]] | None = None
    stochastic: bool = False
    sampled: str | None = None
    vulnerability: bool = False
    stepped: bool = False  # PGD-based: step 2.5·eps/steps from a uniform random start

    def record(self, eps: float, options: Mapping[str, Any]) -> dict[str, Any]:
        """What results.json states about a run of this attack with `options`."""
        settings = {**self.defaults, **options}
        record: dict[str, Any] = {"eps": eps, "norm": "linf", **settings}
        description = self.description.format(**settings)
        if self.stepped:
            step = settings.get("alpha") or 2.5 * eps / settings["steps"]
            record.update(step_size=step, random_start=True)
            if settings.get("alpha"):
                description = description.replace(f"2.5·eps/{settings['steps']}", f"{step:g}")
        return {**record, "description": description}


def _fgsm(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, *, seed: int = 0, **options: Any
) -> Tensor:
    """FGSM is deterministic: `seed` is accepted only for the uniform call shape."""
    return fgsm(model, x, y, eps, **options)


def _seeded(attack: Callable[..., Tensor], **settings: Any) -> Callable[..., Tensor]:
    """`attack` with its protocol settings and its random starts drawn from `seed` alone."""

    def run(
        model: nn.Module, x: Tensor, y: Tensor, eps: float, *, seed: int = 0, **options: Any
    ) -> Tensor:
        generator = torch.Generator(device=x.device).manual_seed(seed)
        return attack(model, x, y, eps, generator=generator, **{**settings, **options})

    return run


def _transfer(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    seed: int = 0,
    source: nn.Module,
    **options: Any,
) -> Tensor:
    """Crafted on `source` alone: the evaluated model's gradients are never used."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return transfer(source, x, y, eps, generator=generator, **{"steps": 40, **options})


def _fmn(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, *, seed: int = 0, **options: Any
) -> Tensor:
    """FMN starts at x itself: `seed` is accepted only for the uniform call shape."""
    return fmn(model, x, y, eps, **{"steps": 200, **options})


def _autoattack(version: str) -> Callable[..., Tensor]:
    return partial(autoattack, version=version)


STEPPED = "uniform random start, step 2.5·eps/{steps}"

ATTACKS: dict[str, AttackSpec] = {
    spec.name: spec
    for spec in (
        AttackSpec("fgsm", "FGSM, one signed step of eps", _fgsm),
        AttackSpec(
            "pgd",
            "PGD-{steps} on cross-entropy, " + STEPPED,
            _seeded(pgd, steps=20, loss="ce"),
            MappingProxyType({"steps": 20}),
            MappingProxyType({"steps": "pgd_steps", "alpha": "pgd_step_size"}),
            sampled="pgd_eot",
            vulnerability=True,
            stepped=True,
        ),
        AttackSpec(
            "cw",
            "CW-∞: PGD-{steps} on the CW margin loss, " + STEPPED,
            _seeded(pgd, steps=30, loss="cw"),
            MappingProxyType({"steps": 30}),
            MappingProxyType({"steps": "cw_steps"}),
            stepped=True,
        ),
        AttackSpec(
            "autoattack",
            "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square)",
            _autoattack("standard"),
            limit="autoattack_limit",
            whole_subset=True,
            state_file=True,
            sampled="autoattack_rand",
        ),
        AttackSpec(
            "transfer",
            "black-box: PGD-{steps} on cross-entropy crafted on the source model, " + STEPPED,
            _transfer,
            MappingProxyType({"steps": 40}),
            needs=frozenset({SOURCE}),
            stepped=True,
        ),
        AttackSpec(
            "fmn",
            "FMN (Pintor et al., 2021), {steps} steps: accuracy = share of minimal L∞ distances "
            "> eps",
            _fmn,
            MappingProxyType({"steps": 200}),
            MappingProxyType({"steps": "fmn_steps"}),
            limit="fmn_limit",
            distances=fmn_distances,
        ),
        AttackSpec(
            "pgd_eot",
            "EOT-PGD-{steps} on cross-entropy, gradient averaged over {eot_samples} gate draws, "
            + STEPPED,
            _seeded(pgd, steps=20, loss="ce", eot_samples=20),
            MappingProxyType({"steps": 20, "eot_samples": 20}),
            MappingProxyType(
                {"steps": "pgd_steps", "alpha": "pgd_step_size", "eot_samples": "eot_samples"}
            ),
            stochastic=True,
            stepped=True,
        ),
        AttackSpec(
            "autoattack_rand",
            "AutoAttack rand (APGD-CE, APGD-DLR, 20 EOT iterations each)",
            _autoattack("rand"),
            limit="autoattack_limit",
            whole_subset=True,
            state_file=True,
            stochastic=True,
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
