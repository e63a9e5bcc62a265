"""Recipes: YAML files shipped with the package that fix every setting of a documented run."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from advprune.core.errors import ConfigError


def available_recipes() -> list[str]:
    files = resources.files(__package__).iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


def load_recipe(name: str) -> dict[str, Any]:
    """The recipe's YAML as a dict; an unknown name lists the known ones."""
    if name not in available_recipes():
        raise ConfigError(
            f"unknown recipe {name!r}; choose one of {', '.join(available_recipes())}"
        )
    text = resources.files(__package__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)
