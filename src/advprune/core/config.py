"""One config base for every settings dataclass: train, prune, a method's own, eval, reproduce.

A `Config` is a dataclass whose fields are the settings; the same names are the CLI flags
(`--finetune-lr`), the recipe keys and the YAML a run directory keeps. A field whose type is
another `Config` is a group of settings (a method's fine-tuning phase); it is written nested in
YAML and flat elsewhere, its keys prefixed by the field name (`finetune_lr`). `from_dict` accepts
both shapes.

What the base gives every config, once:
- `from_dict(values, source)`: unknown keys are an error that names the source and the nearest
  known key; values are validated by the subclass's `validate`.
- `to_dict` / `save` / `load`: the YAML round trip.
- `setting(...)`: a field with its help text and choices, which `advprune … --help` shows.
- `EXECUTION_KEYS`: the keys that say where a run executes, not what it computes; `changed`
  compares two configs on the others, which is the resume check and a reproduction's step record.

Example:

    @dataclass
    class Phase(Config):
        lr: float | None = setting(None, "learning rate (default: the source run's)")

    @dataclass
    class Settings(Config):
        EXECUTION_KEYS = frozenset({"device"})
        device: str = setting("auto", "cpu | cuda | auto")
        finetune: Phase = group(Phase)

    Settings.from_dict({"finetune_lr": 0.01}).finetune.lr   # 0.01
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from advprune.core.errors import ConfigError
from advprune.core.io import atomic_write_text

C = TypeVar("C", bound="Config")
Choices = Iterable[str] | Callable[[], Iterable[str]]


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: Choices | None = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A config field with the help text and choices its flag shows.

    `choices` may be a callable, read when needed, so that a registry filled later (methods,
    models) is the one listed.
    """
    metadata = {"help": help, "choices": choices}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def group(cls: type[Config], help: str = "", **defaults: Any) -> Any:
    """A nested group of settings (a `Config` field), with its own defaults for this owner."""
    return dataclasses.field(
        default_factory=lambda: cls(**defaults), metadata={"help": help, "group": True}
    )


def choices_of(field: dataclasses.Field) -> tuple[str, ...] | None:
    choices = field.metadata.get("choices")
    if choices is None:
        return None
    return tuple(choices() if callable(choices) else choices)


def parse_number(text: str) -> float:
    """A float from a flag or a recipe: "0.031", "8/255" or "1e-3"."""
    try:
        return float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError) as err:
        raise ConfigError(f"{text!r} is not a number; write e.g. 0.1, 1e-3 or 8/255") from err


def closest(name: str, known: Iterable[str]) -> str:
    """ "; did you mean X?" for a misspelt key, or ""."""
    match = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {match[0]}?" if match else ""


@dataclasses.dataclass
class Config:
    """Base of every settings dataclass (see the module docstring)."""

    # Keys that say where and how a run executes, not what it computes: they may differ when a
    # stopped run is resumed, and a reproduction's step record leaves them out.
    EXECUTION_KEYS: ClassVar[frozenset[str]] = frozenset()
    # What an unset (None) setting means, as `--help` says it.
    UNSET: ClassVar[str] = ""
    # Values a field accepts beside its choices without `--help` listing them: names the Python
    # API records (a dataset of in-memory tensors), which no flag can usefully give.
    UNLISTED_CHOICES: ClassVar[dict[str, frozenset[str]]] = {}

    def validate(self: C) -> C:
        """Check choices; subclasses add their range checks and call this."""
        for field in dataclasses.fields(self):
            allowed = choices_of(field)
            value = getattr(self, field.name)
            unlisted = self.UNLISTED_CHOICES.get(field.name, frozenset())
            if allowed is not None and value is not None and value not in {*allowed, *unlisted}:
                raise ConfigError(
                    f"unknown {field.name} {value!r}; choose one of {', '.join(allowed)}"
                    + closest(str(value), allowed)
                )
            if isinstance(value, Config):
                value.validate()
        return self

    # ---- the shape of a config ---------------------------------------------------------------

    @classmethod
    def groups(cls) -> dict[str, type[Config]]:
        """Nested groups: field name → its Config class."""
        hints = _hints(cls)
        return {
            f.name: hints[f.name]
            for f in dataclasses.fields(cls)
            if isinstance(hints[f.name], type) and issubclass(hints[f.name], Config)
        }

    @classmethod
    def field_names(cls) -> set[str]:
        """Every key `from_dict` accepts in flat form, groups' keys with their prefix."""
        names = set()
        groups = cls.groups()
        for field in dataclasses.fields(cls):
            if field.name in groups:
                names |= {f"{field.name}_{key}" for key in groups[field.name].field_names()}
            else:
                names.add(field.name)
        return names

    @classmethod
    def flat_fields(cls) -> dict[str, tuple[dataclasses.Field, Any]]:
        """Flat key → (its dataclass field, its type), for flags and recipe checks."""
        hints = _hints(cls)
        groups = cls.groups()
        flat: dict[str, tuple[dataclasses.Field, Any]] = {}
        for field in dataclasses.fields(cls):
            if field.name in groups:
                for key, entry in groups[field.name].flat_fields().items():
                    flat[f"{field.name}_{key}"] = entry
            else:
                flat[field.name] = (field, hints[field.name])
        return flat

    # ---- building and writing ----------------------------------------------------------------

    @classmethod
    def nest(cls, values: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
        """`values` with flat group keys (`finetune_lr`) moved into their group's mapping;
        an unknown key is an error naming `source` and the nearest known key."""
        groups = cls.groups()
        own = {f.name for f in dataclasses.fields(cls)}
        nested: dict[str, Any] = {}
        for key, value in values.items():
            prefix = next((g for g in groups if key.startswith(f"{g}_")), None)
            if prefix is not None and key[len(prefix) + 1 :] not in groups[prefix].field_names():
                prefix = None
            if key in own:
                if key in groups and isinstance(value, Mapping):
                    nested.setdefault(key, {}).update(value)
                else:
                    nested[key] = value
            elif prefix is not None:
                nested.setdefault(prefix, {})[key[len(prefix) + 1 :]] = value
            else:
                raise ConfigError(
                    f"unknown setting {key!r} in {source}" + closest(key, cls.field_names())
                )
        for name, group_cls in groups.items():
            if isinstance(nested.get(name), Mapping):
                nested[name] = group_cls.nest(nested[name], f"{source}: {name}")
        return nested

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any], source: str = "config") -> C:
        """Build and validate from flat or nested `values`; unknown keys are an error."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source} must be a mapping of settings, got {values!r}")
        return cls._build(cls.nest(values, source), source).validate()

    @classmethod
    def _build(cls: type[C], values: Mapping[str, Any], source: str) -> C:
        groups = cls.groups()
        arguments = dict(values)
        defaults = cls()
        for name, group_cls in groups.items():
            if name in arguments:
                base = getattr(defaults, name).to_dict()
                merged = {**base, **(arguments[name] or {})}
                arguments[name] = group_cls._build(merged, f"{source}: {name}")
        hints = _hints(cls)
        for key, value in list(arguments.items()):
            arguments[key] = _coerce(value, hints[key], key, source)
        try:
            return cls(**arguments)
        except TypeError as err:
            raise ConfigError(f"{source}: {err}") from err

    def to_dict(self) -> dict[str, Any]:
        """Nested plain values (groups as mappings), as written to YAML."""
        return dataclasses.asdict(self)

    def to_flat(self) -> dict[str, Any]:
        """Flat keys (groups prefixed), as flags and `--set` spell them."""
        flat: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if key in self.groups():
                flat.update({f"{key}_{k}": v for k, v in value.items()})
            else:
                flat[key] = value
        return flat

    def replace(self: C, **changes: Any) -> C:
        """A validated copy with flat or nested `changes` applied."""
        merged = _deep_merge(self.to_dict(), self.nest(changes, "changes"))
        return type(self)._build(merged, type(self).__name__).validate()

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls: type[C], path: str | os.PathLike) -> C:
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ConfigError(f"settings not found: {path}; pass the directory of a run") from err
        except (OSError, yaml.YAMLError) as err:
            message = f"settings {path} are unreadable: {err}".splitlines()[0]
            raise ConfigError(message) from err
        if not isinstance(values, dict):
            raise ConfigError(f"settings {path} must be a mapping; restore it or start again")
        return cls.from_dict(values, source=str(path))

    # ---- comparing ---------------------------------------------------------------------------

    def computed(self) -> dict[str, Any]:
        """The flat settings that change what a run computes (all but `EXECUTION_KEYS`)."""
        execution = self.execution_keys()
        return {k: v for k, v in self.to_flat().items() if k not in execution}

    @classmethod
    def execution_keys(cls) -> set[str]:
        keys = set(cls.EXECUTION_KEYS)
        for name, group_cls in cls.groups().items():
            keys |= {f"{name}_{key}" for key in group_cls.execution_keys()}
        return keys

    def changed(self, other: Config) -> list[str]:
        """Flat keys whose values differ between the two and change what is computed."""
        ours, theirs = self.computed(), other.computed()
        return sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))

    def check_resume(self, saved: Config, where: str) -> None:
        """Refuse to continue `saved`'s run with settings that compute something else."""
        changed = self.changed(saved)
        if changed:
            key = changed[0]
            raise ConfigError(
                f"{where} was started with {key}={saved.computed().get(key)!r}, not "
                f"{self.computed().get(key)!r}; resume it with its settings or start a new "
                "--run-dir"
            )


def _deep_merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def scalar_type(annotation: Any) -> tuple[Any, bool]:
    """(the type inside `X | None`, whether None is allowed)."""
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return (inner[0] if len(inner) == 1 else annotation), type(None) in args
    return annotation, False


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Light coercion of YAML/flag values: "8/255" → float, 1 → 1.0; wrong types are errors."""
    kind, optional = scalar_type(annotation)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: {key} cannot be empty; give a value or leave the key out")
    if kind is float and isinstance(value, str):
        return parse_number(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = {float: (float,), int: (int,), str: (str,), bool: (bool,)}.get(kind)
    if expected is not None and (
        not isinstance(value, expected) or (kind is int and isinstance(value, bool))
    ):
        raise ConfigError(
            f"{source}: {key} must be {kind.__name__}, got {value!r} ({type(value).__name__})"
        )
    if typing.get_origin(kind) is list and isinstance(value, list | tuple):
        (item,) = typing.get_args(kind)
        return [_coerce(v, item, key, source) for v in value]
    return value
