"""Where a reproduction's tasks run: the interface every engine implements.

`reproduce` turns a recipe into a plan (reproduction.plan) and the plan into tasks (a step's
build, its evaluation: `parallel.tasks_of`); an executor runs them in dependency order. Two
exist: `local` (this machine: `--jobs`, `--devices`; runner.LocalExecutor) and `slurm` (one
Slurm job per task through submitit; reproduction.slurm). Another engine (Ray, a cloud batch
service) is one more subclass of `Executor`: it gets the plan and decides nothing about reuse,
which the tasks themselves decide from their run directories (runner.is_built, is_finished).

`Resources` is what one task asks of a cluster, from the recipe's `slurm:` sections (the
recipe's, then the step's) and the command line's flags, in that order of precedence.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from advprune.core.errors import ConfigError

if TYPE_CHECKING:
    from advprune.reproduction.plan import Plan

# "30", "1:30:00", "2-00:00:00": Slurm's own spellings of a time limit.
TIME_LIMIT = re.compile(r"(\d+-)?\d+(:\d+){0,2}")


class Executor(ABC):
    """Runs the tasks of a plan. `waits` says whether `run` returns once they have finished
    (the reproduction then writes its report) or once they are submitted (a report task of the
    executor's own writes it when they finish)."""

    name: str
    waits: bool = True

    @abstractmethod
    def run(self, plan: Plan, log: Callable[[str], None]) -> list[str]:
        """Run or submit every task of `plan` that is not finished; returns the gradient-masking
        warnings of the tasks that ran (none when they were only submitted)."""


@dataclass(frozen=True)
class Resources:
    """What one Slurm job (one task) asks for. Example, in a recipe:

    slurm: {partition: gpu, gpus: 1, cpus: 8, mem: 32G, time: "12:00:00"}
    steps:
      - {name: dense, train: {...}, slurm: {time: "2-00:00:00"}}
    """

    partition: str | None = None
    gpus: int = 0
    cpus: int = 1
    mem: str | None = None  # Slurm's spelling: 4G, 32000M
    time: str = "24:00:00"  # the job's time limit; a stage past it is requeued and resumes
    sbatch: dict[str, str] = field(default_factory=dict)  # any other sbatch option, e.g. qos

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str) -> Resources:
        """Checked resources from a recipe's `slurm:` section or the flags."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"{where}: unknown Slurm setting(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(known))}"
            )
        resources = replace(cls(), **values)
        for name in ("gpus", "cpus"):
            count = getattr(resources, name)
            if isinstance(count, bool) or not isinstance(count, int) or count < (name == "cpus"):
                raise ConfigError(f"{where}: {name} must be a whole number ≥ 0, got {count!r}")
        if not isinstance(resources.sbatch, Mapping):
            raise ConfigError(f"{where}: sbatch must map options to values, e.g. {{qos: high}}")
        resources.minutes(where)
        return resources

    def merged(self, values: Mapping[str, Any], where: str) -> Resources:
        """These resources with `values` on top (a step's section, the flags)."""
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        extra = {**self.sbatch, **dict(values.get("sbatch") or {})}
        return Resources.from_mapping({**current, **values, "sbatch": extra}, where)

    def minutes(self, where: str = "--time") -> int:
        """The time limit in whole minutes (submitit's unit), rounded up, from Slurm's
        spellings: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
        if not TIME_LIMIT.fullmatch(str(self.time)):
            raise ConfigError(
                f"{where}: time {self.time!r} is not a Slurm time limit; use MINUTES, "
                "HH:MM:SS or D-HH:MM:SS"
            )
        days, _, rest = str(self.time).rpartition("-")
        numbers = [int(part) for part in rest.split(":")]
        if days:  # D-H, D-H:M, D-H:M:S
            hours, minutes, seconds = [*numbers, 0, 0][:3]
        elif len(numbers) == 3:
            hours, minutes, seconds = numbers
        else:  # M, M:S
            hours, minutes, seconds = 0, numbers[0], numbers[1] if len(numbers) == 2 else 0
        return int(days or 0) * 1440 + hours * 60 + minutes + (seconds > 0)
