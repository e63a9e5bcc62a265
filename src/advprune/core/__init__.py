"""Small pieces shared by every package: errors, atomic file I/O, seeding, devices."""

from advprune.core.device import autocast, resolve_device
from advprune.core.errors import (
    AdvpruneError,
    CheckpointError,
    ConfigError,
    DataError,
    GradientMaskingError,
    TrainingError,
)
from advprune.core.io import atomic_write, atomic_write_json, atomic_write_text, read_json
from advprune.core.seeding import seed_everything

__all__ = [
    "AdvpruneError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "GradientMaskingError",
    "TrainingError",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "autocast",
    "read_json",
    "resolve_device",
    "seed_everything",
]
