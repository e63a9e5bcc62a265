"""Typed evaluation settings (what `advprune eval` flags and recipes' `evaluate:` sections set)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from advprune.core.errors import ConfigError


def parse_eps_curve(values: str | Sequence[float]) -> list[float]:
    """ "0,0.05,0.1" (or a list) → the sorted, distinct radii in [0, 1] of a security curve."""
    if isinstance(values, str):
        try:
            values = [float(v) for v in values.split(",") if v.strip()]
        except ValueError as err:
            raise ConfigError(
                f"eps_curve must be comma-separated numbers like 0,0.05,0.1, got {values!r}"
            ) from err
    if not values or any(not (math.isfinite(v) and 0 <= v <= 1) for v in values):
        raise ConfigError(
            f"eps_curve needs radii in [0, 1] (pixels are in [0, 1]), got {list(values)}"
        )
    return sorted({float(v) for v in values})


@dataclass
class EvalConfig:
    """`eps=None` uses the ε the model was trained at (else the dataset's standard ε)."""

    attacks: str = "clean,fgsm,pgd,cw,autoattack"
    eps: float | None = None
    pgd_steps: int = 20
    cw_steps: int = 30
    limit_test: int | None = None
    autoattack_limit: int | None = None
    sanity_examples: int = 500  # test examples of the security curve / gradient-masking check
    eps_curve: list[float] | None = None  # None: 0, ε/2, ε, 2ε, 4ε, 0.5
    curve_autoattack_examples: int = 100  # with eps_curve: AutoAttack at each ε on the first N
    transfer_from: str | None = None  # run directory of a separately trained PGD-AT source model
    batch_size: int = 500
    latency_repeats: int = 10  # CPU latency of the model at batch 1 and 128 (0: not measured)
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    download: bool = False

    def validate(self) -> EvalConfig:
        from advprune.attacks import parse_attacks

        parse_attacks(self.attacks)
        if self.eps is not None and not (math.isfinite(self.eps) and self.eps >= 0):
            raise ConfigError(f"eps must be a finite number ≥ 0, got {self.eps}")
        for key in ("pgd_steps", "cw_steps", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be ≥ 1, got {getattr(self, key)}")
        for key in ("limit_test", "autoattack_limit"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key} must be ≥ 1 (or unset for the whole split), got {value}")
        if self.latency_repeats < 0:
            raise ConfigError(f"latency_repeats must be ≥ 0, got {self.latency_repeats}")
        if self.sanity_examples < 0:
            raise ConfigError(f"sanity_examples must be ≥ 0, got {self.sanity_examples}")
        if self.curve_autoattack_examples < 0:
            raise ConfigError(
                f"curve_autoattack_examples must be ≥ 0, got {self.curve_autoattack_examples}"
            )
        if self.eps_curve is not None:
            self.eps_curve = parse_eps_curve(self.eps_curve)
            if self.sanity_examples == 0:
                raise ConfigError("eps_curve needs sanity_examples ≥ 1: the curve's test examples")
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EvalConfig:
        values = dict(values)
        if isinstance(values.get("attacks"), list):
            values["attacks"] = ",".join(values["attacks"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown evaluation setting(s): {', '.join(unknown)}")
        return cls(**values).validate()
