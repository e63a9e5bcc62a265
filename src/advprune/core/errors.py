"""Errors a user can act on.

Every error that bad input can cause is an `AdvpruneError`: the CLI prints its message on one line
and exits non-zero, so the message must name both the problem and the fix.
"""


class AdvpruneError(Exception):
    """Base class: an error caused by input, configuration or files, not by a bug."""

    exit_code = 2


class ConfigError(AdvpruneError):
    """An option or recipe value that cannot work (unknown name, value out of range)."""


class DataError(AdvpruneError):
    """A dataset that is missing, truncated or not in the expected format."""


class CheckpointError(AdvpruneError):
    """A checkpoint or run directory that is missing, corrupt or does not match the model."""


class TrainingError(AdvpruneError):
    """Training that cannot go on (non-finite loss, stuck at chance)."""


class GradientMaskingError(AdvpruneError):
    """Robust accuracy that does not fall as epsilon grows: the numbers cannot be trusted."""

    exit_code = 3


def check_choices(config: object, choices: dict[str, tuple[str, ...]]) -> None:
    """Each named attribute of `config` is one of its allowed values (None means "not set")."""
    for key, allowed in choices.items():
        value = getattr(config, key)
        if value is not None and value not in allowed:
            raise ConfigError(f"unknown {key} {value!r}; choose one of {', '.join(allowed)}")
