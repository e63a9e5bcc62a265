"""results.json as the evaluation writes it: after every attack, atomically, and resumable.

Each attack's entry under "attacks" records the settings it ran with — ε, examples, seed, batch
size, its options, which network (deterministic or sampled gates) and the sha256 of the model file
(`model_sha256`) — and each check's section records the same under "settings". A rerun skips
what is finished and matches: an evaluation killed during AutoAttack keeps every attack finished
before it (and AutoAttack's own state file resumes AutoAttack). Entries written for another model
file are dropped when the file is opened, so a retrained run never mixes old and new numbers.

Beside each accuracy: "examples" (N), "accuracy_interval" (Wilson 95 %) and, under "per_example",
the correctness bits (see `statistics.BIT_ENCODING`) that make `accuracy["worst_case"]` exact.

Where results go: an evaluation at the run's own ε writes `results.json`; one at another ε writes
beside it, `results-eps0.05.json` (and its plots and state files with the same suffix), and one
under a protocol writes `results-ap-benchmark.json` — so neither ever overwrites the run's own
results, which are what `advprune report` reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from advprune.core.io import atomic_write_json, read_json
from advprune.evaluation.statistics import (
    BIT_ENCODING,
    pack_bits,
    unpack_bits,
    wilson_interval,
    worst_case,
)

ATTACK_KEYS = ("accuracy", "examples", "attacks", "accuracy_interval")
UNMATCHED = frozenset({"description", "source"})  # recorded, not compared on a rerun
WORST_CASE = "worst_case"


@dataclass(frozen=True)
class EvalOutput:
    """The folder an evaluation writes to and the suffix of its files ("" at the run's own ε)."""

    folder: Path | None  # None: nothing is written (an in-memory evaluation)
    suffix: str = ""

    @classmethod
    def choose(cls, folder: Path, eps: float, run_eps: float, protocol: str | None) -> EvalOutput:
        if protocol:
            return cls(folder, f"-{protocol}")
        same = math.isclose(eps, run_eps, rel_tol=1e-9, abs_tol=1e-12)
        return cls(folder, "" if same else f"-eps{eps:g}")

    @property
    def results(self) -> Path | None:
        return self.file("results", "json")

    def file(self, stem: str, extension: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{stem}{self.suffix}.{extension}"


def matches(entry: Mapping[str, Any] | None, settings: Mapping[str, Any]) -> bool:
    """Whether a stored entry was computed with `settings` (its informative keys aside)."""
    if not isinstance(entry, Mapping):
        return False
    return all(entry.get(key) == value for key, value in settings.items() if key not in UNMATCHED)


class ResultsStore:
    """The results file of one evaluation, written after every change."""

    def __init__(
        self, path: Path | None, model_sha256: str, log: Callable[[str], None] = print
    ) -> None:
        self.path = path  # None: kept in memory only
        self.model_sha256 = model_sha256
        exists = path is not None and path.exists()
        self.data: dict[str, Any] = read_json(path, "results") if exists else {}
        self._drop_stale(log)

    def _drop_stale(self, log: Callable[[str], None]) -> None:
        """Forget attacks and sections computed on another model file, and bits or intervals
        left without their attack (a reproduction forgets attacks by their accuracy keys)."""
        attacks = self.data.get("attacks", {})
        stale = [
            n
            for n, e in attacks.items()
            if e.get("model_sha256", self.model_sha256) != self.model_sha256
        ]
        for name in stale:
            self.forget(name)
        for key, section in list(self.data.items()):
            settings = section.get("settings") if isinstance(section, dict) else None
            if (
                isinstance(settings, dict)
                and settings.get("model_sha256", self.model_sha256) != self.model_sha256
            ):
                del self.data[key]
                stale.append(key)
        bits = self.data.get("per_example", {}).get("correct", {})
        for name in [n for n in bits if n not in self.data.get("accuracy", {})]:
            del bits[name]
        if stale:
            log(f"  dropped results of another model file: {', '.join(stale)}")

    def forget(self, name: str) -> None:
        for key in ATTACK_KEYS:
            self.data.get(key, {}).pop(name, None)
        self.data.get("per_example", {}).get("correct", {}).pop(name, None)

    def finished(self, name: str, settings: Mapping[str, Any]) -> bool:
        """Whether attack `name` ran with `settings` on this model, and its bits are here."""
        has_bits = name in self.data.get("per_example", {}).get("correct", {})
        return has_bits and matches(self.data.get("attacks", {}).get(name), settings)

    def section(self, key: str, settings: Mapping[str, Any]) -> dict[str, Any] | None:
        """A finished section (a check, the latency) computed with `settings`, else None."""
        section = self.data.get(key)
        if isinstance(section, dict) and matches(section.get("settings"), settings):
            return section
        return None

    def record_attack(self, name: str, correct: Tensor, settings: Mapping[str, Any]) -> float:
        """Store attack `name`'s per-example correctness (accuracy, N, interval, bits) and
        settings, and write the file; returns the accuracy."""
        count, total = int(correct.sum()), len(correct)
        accuracy = count / total if total else 0.0
        self.data.setdefault("accuracy", {})[name] = accuracy
        self.data.setdefault("examples", {})[name] = total
        self.data.setdefault("accuracy_interval", {})[name] = list(wilson_interval(count, total))
        self.data.setdefault("attacks", {})[name] = dict(settings)
        per_example = self.data.setdefault("per_example", {"encoding": BIT_ENCODING})
        per_example.setdefault("correct", {})[name] = pack_bits(correct)
        self.save()
        return accuracy

    def correct(self, name: str) -> Tensor | None:
        bits = self.data.get("per_example", {}).get("correct", {}).get(name)
        return None if bits is None else unpack_bits(bits, self.data["examples"][name])

    def record(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def update_worst_case(self) -> None:
        """accuracy["worst_case"]: the examples every attack on the deterministic network (clean
        included) left correct, over the examples they share."""
        self.forget(WORST_CASE)
        names = [
            name
            for name, entry in self.data.get("attacks", {}).items()
            if entry.get("network") == "deterministic"
        ]
        bits = {name: self.correct(name) for name in names}
        bits = {name: value for name, value in bits.items() if value is not None}
        if len(bits) < 2:
            return
        robust, counted = worst_case(bits)
        self.record_attack(
            WORST_CASE,
            robust,
            {
                "over": counted,
                "model_sha256": self.model_sha256,
                "description": "an example counts only if every attack listed left it correct",
            },
        )

    def save(self) -> None:
        if self.path is not None:
            atomic_write_json(self.path, self.data)
