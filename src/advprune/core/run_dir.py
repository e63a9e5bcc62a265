"""The run directory: everything a run produces, and enough to resume, evaluate or report it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from advprune.core.errors import ConfigError


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def create(cls, path: str | os.PathLike) -> RunDir:
        """Make the directory (and parents); a path that is a file is a clear error."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"run directory {path} is a file; pass a directory path to --run-dir")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create run directory {path}: {err.strerror}") from err
        return cls(path)

    @classmethod
    def existing(cls, path: str | os.PathLike) -> RunDir:
        path = Path(path)
        if not path.is_dir():
            raise ConfigError(f"run directory {path} does not exist; pass the --run-dir of a run")
        return cls(path)

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        """Latest training state (model, optimizer, epoch, history): what `--resume` reads."""
        return self.path / "checkpoint.safetensors"

    @property
    def model(self) -> Path:
        """Final weights and architecture: what evaluation and pruning read."""
        return self.path / "model.safetensors"

    @property
    def results(self) -> Path:
        return self.path / "results.json"
