"""Typed evaluation settings (what `advprune eval` flags and recipes' `evaluate:` sections set).

A `protocol` fixes the settings of a published evaluation; `ap-benchmark` is the Adversarial
Pruning Benchmark's (Piras et al., 2024, its code's `utils/test.py`): AutoAttack standard, L∞,
ε = 0.031 (its code's value, not 8/255 = 0.0314), the whole test set, batch 500, and FMN on the
whole test set, whose distances give the security curve. A setting given beside a protocol wins
and is recorded as a departure from it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from advprune.core.config import Config, setting
from advprune.core.errors import ConfigError
from advprune.data import dataset_names

PROTOCOLS: dict[str, dict[str, Any]] = {
    "ap-benchmark": {
        "attacks": "clean,autoattack,fmn",
        "eps": 0.031,
        "limit_test": None,
        "autoattack_limit": None,
        "fmn_limit": None,
        "fmn_steps": 200,
        "batch_size": 500,
    }
}
COUNTS = ("pgd_steps", "cw_steps", "fmn_steps", "eot_samples", "batch_size")
LIMITS = ("limit_test", "autoattack_limit", "fmn_limit")
SIZES = ("sanity_examples", "curve_autoattack_examples", "indicator_examples", "latency_repeats")


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
class EvalConfig(Config):
    """How a run is evaluated; `eps=None` uses the ε the model was trained at (else the dataset's
    standard ε). `batch_size` changes results (PGD's random starts are drawn per batch), so it is
    not an execution key."""

    EXECUTION_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"device", "data_dir", "download", "latency_repeats"}
    )

    protocol: str | None = setting(
        None,
        "a published protocol that fixes attacks, ε and examples: ap-benchmark (AutoAttack at "
        "ε 0.031 and FMN, whole test set, batch 500)",
        choices=tuple(PROTOCOLS),
    )
    attacks: str = setting(
        "clean,fgsm,pgd,cw,autoattack",
        "comma-separated: clean,fgsm,pgd,cw,autoattack,fmn,transfer (transfer also runs whenever "
        "--transfer-from is set)",
    )
    eps: float | None = setting(
        None, "L∞ radius in [0, 1] pixels, e.g. 0.031 or 8/255 (default: the run's ε)"
    )
    pgd_steps: int = setting(20, "PGD steps (uniform random start)")
    pgd_step_size: float | None = setting(
        None, "PGD step (default 2.5·ε/steps; ANP-VS's PGD-40: 0.01 MNIST, 0.007 CIFAR)"
    )
    cw_steps: int = setting(30, "CW-∞ steps (PGD on the CW margin loss)")
    fmn_steps: int = setting(200, "FMN steps (minimum-norm attack; the benchmark's 200)")
    limit_test: int | None = setting(None, "evaluate on the first N test examples only")
    autoattack_limit: int | None = setting(
        None, "AutoAttack on the first N test examples (default: all)"
    )
    fmn_limit: int | None = setting(None, "FMN on the first N test examples (default: all)")
    sampled_gates: bool = setting(
        False,
        "gated (ANP-VS) runs: also attack the stochastic network (gates sampling, seeded) with "
        "EOT-PGD and AutoAttack rand, reported as pgd_eot and autoattack_rand",
    )
    eot_samples: int = setting(20, "with --sampled-gates: gate draws averaged per EOT-PGD step")
    sanity_examples: int = setting(
        500, "test examples of the security curve / gradient-masking check (0: skip)"
    )
    eps_curve: list[float] | None = setting(
        None,
        "security curve at these radii, e.g. 0,0.02,0.05,0.1 (0.5 is always added: accuracy "
        "must reach ≈ 0 there); default 0, ε/2, ε, 2ε, 4ε, 0.5",
    )
    curve_autoattack_examples: int = setting(
        100, "with --eps-curve: AutoAttack at each radius on the first N curve examples (0: PGD)"
    )
    indicator_examples: int = setting(
        100, "test examples of the six attack-failure indicators (0: skip)"
    )
    transfer_from: str | None = setting(
        None, "black-box accuracy: PGD-40 crafted on this separately trained run (the surrogate)"
    )
    batch_size: int = setting(500, "examples per attacked batch")
    latency_repeats: int = setting(
        30, "timed pairs (model, dense) of the latency at batch 1 and 128 (0: skip)"
    )
    seed: int = setting(0, "seed of the random starts and the gate noise")
    device: str = setting("auto", "cpu | cuda | cuda:N | auto")
    dataset: str | None = setting(
        None,
        "dataset to evaluate on (default: the run's; needed for a run trained in Python on "
        "tensors)",
        choices=dataset_names,
    )
    data_dir: str | None = setting(
        None, "where the dataset is, or imagefolder's folder (default: the run's)"
    )
    download: bool = setting(False, "fetch the dataset if it is missing")

    def validate(self) -> EvalConfig:
        super().validate()
        self.apply_protocol()
        self._check_eps()
        self._check_attacks()
        for key in COUNTS:
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be ≥ 1, got {getattr(self, key)}")
        for key in LIMITS:
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key} must be ≥ 1 (or unset for the whole split), got {value}")
        for key in SIZES:
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be ≥ 0, got {getattr(self, key)}")
        if self.eps_curve is not None:
            self.eps_curve = parse_eps_curve(self.eps_curve)
            if self.sanity_examples == 0:
                raise ConfigError("eps_curve needs sanity_examples ≥ 1: the curve's test examples")
        return self

    def _check_eps(self) -> None:
        if self.eps is None:
            return
        if not math.isfinite(self.eps) or self.eps < 0:
            raise ConfigError(f"eps must be a finite number ≥ 0, got {self.eps}")
        if self.eps > 1:
            raise ConfigError(
                f"eps {self.eps:g} is outside [0, 1]: ε is in [0, 1] pixels; for 8/255 pass "
                "0.0314 or --eps 8/255"
            )

    def _check_attacks(self) -> None:
        """Known names, each with what it needs: a source model, or the sampled gates."""
        from advprune.attacks import ATTACKS, SOURCE, parse_attacks

        for name in parse_attacks(self.attacks):
            spec = ATTACKS.get(name)
            if spec is not None and SOURCE in spec.needs and not self.transfer_from:
                raise ConfigError(f"attack {name} needs a source model; pass --transfer-from RUN")
            if spec is not None and spec.stochastic and not self.sampled_gates:
                raise ConfigError(f"attack {name} attacks the sampled gates; add --sampled-gates")

    def apply_protocol(self) -> None:
        """Set the protocol's values on the settings left at their defaults; the others are its
        departures (`protocol_departures`)."""
        for key, value in PROTOCOLS.get(self.protocol or "", {}).items():
            if getattr(self, key) == _default(key):
                setattr(self, key, value)

    def protocol_departures(self) -> dict[str, Any]:
        """The settings where this evaluation differs from its protocol's (empty without one)."""
        protocol = PROTOCOLS.get(self.protocol or "", {})
        return {
            key: getattr(self, key)
            for key, value in protocol.items()
            if getattr(self, key) != value
        }

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any], source: str = "evaluation settings"
    ) -> EvalConfig:
        """`Config.from_dict`, with `attacks` also accepted as a list (as recipes write it)."""
        values = dict(values) if isinstance(values, Mapping) else values
        if isinstance(values, dict) and isinstance(values.get("attacks"), list | tuple):
            values["attacks"] = ",".join(values["attacks"])
        return super().from_dict(values, source)


def _default(key: str) -> Any:
    field = next(f for f in dataclasses.fields(EvalConfig) if f.name == key)
    return field.default
