"""Flags generated from config dataclasses: one `--flag` per setting, with its help, choices and
default, so that a setting is spelt the same in a flag, a recipe and a run's YAML."""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Collection, Sequence
from typing import Any, NoReturn

import yaml

from advprune.core.config import Config, choices_of, parse_number, scalar_type
from advprune.core.errors import ConfigError


class Parser(argparse.ArgumentParser):
    """argparse with no abbreviations (`--epoch` is not `--epochs`) and one-line errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"advprune: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _number(text: str) -> float:
    try:
        return parse_number(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _flag_type(annotation: Any) -> dict[str, Any]:
    kind, _ = scalar_type(annotation)
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if kind is float:
        return {"type": _number}
    if kind is int:
        return {"type": int}
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        if scalar_type(annotation)[1]:  # `list[float] | None`: "0,0.05,0.1", parsed by the config
            return {"type": str}
        return {"type": _number if item is float else item, "nargs": "+"}
    return {"type": str}


def _describe(help_text: str, choices: Sequence[str] | None, default: Any, unset: str = "") -> str:
    parts = [help_text or ""]
    if choices:
        parts.append(f"choices: {', '.join(choices)}")
    if isinstance(default, bool):
        parts.append(f"default: {'on' if default else 'off'}")
    elif default is not None and default != []:
        parts.append(f"default: {default}")
    elif unset:
        parts.append(f"default: {unset}")
    return "; ".join(p for p in parts if p).replace("%", "%%")


def add_config_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type[Config],
    *,
    exclude: Collection[str] = (),
    only: Collection[str] | None = None,
    defaults: dict[str, Any] | None = None,
    hidden: bool = False,
) -> list[str]:
    """One `--flag` per flat setting of `cls` (groups prefixed: `--finetune-lr`), or of those in
    `only`; flags left out stay absent from the namespace, so recipes and saved settings keep
    their values. `hidden` flags parse but stay out of --help (to refuse them with a hint).
    Returns the names added."""
    defaults = defaults if defaults is not None else cls().to_flat()
    added = []
    unset = _unset_meanings(cls)
    for name, (field, annotation) in cls.flat_fields().items():
        if name in exclude or (only is not None and name not in only):
            continue
        text = _describe(
            field.metadata.get("help", ""), choices_of(field), defaults.get(name), unset.get(name)
        )
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS if hidden else text,
            **_flag_type(annotation),
        )
        added.append(name)
    return added


def _unset_meanings(cls: type[Config], prefix: str = "") -> dict[str, str]:
    """Flat key → what None means for it (its class's `UNSET`)."""
    meanings = {f"{prefix}{key}": cls.UNSET for key in cls.flat_fields() if cls.UNSET}
    for name, group_cls in cls.groups().items():
        meanings |= _unset_meanings(group_cls, f"{prefix}{name}_")
    return meanings


def given(args: argparse.Namespace, names: Collection[str]) -> dict[str, Any]:
    """The flags the user gave among `names`."""
    return {k: v for k, v in vars(args).items() if k in names}


def print_config(*configs: Config) -> int:
    """`--print-config`: the resolved settings as YAML, then stop."""
    for config in configs:
        print(f"# {type(config).__name__}")
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
    return 0


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """["device=cuda", "batch_size=256"] → {"device": "cuda", "batch_size": 256} (YAML values)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            overrides[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {pair}: the value is not valid YAML") from err
    return overrides
