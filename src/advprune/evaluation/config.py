"""Typed evaluation settings (what `advprune eval` flags and recipes' `evaluate:` sections set)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from advprune.core.errors import ConfigError


@dataclass
class EvalConfig:
    """`eps=None` uses the ε the model was trained at (else the dataset's standard ε)."""

    attacks: str = "clean,fgsm,pgd,cw,autoattack"
    eps: float | None = None
    pgd_steps: int = 20
    cw_steps: int = 30
    limit_test: int | None = None
    autoattack_limit: int | None = None
    sanity_examples: int = 500  # test examples of the gradient-masking check (0: skip it)
    batch_size: int = 500
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
        if self.sanity_examples < 0:
            raise ConfigError(f"sanity_examples must be ≥ 0, got {self.sanity_examples}")
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
