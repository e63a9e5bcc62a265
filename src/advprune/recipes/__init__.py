"""Recipes: YAML files shipped with the package that fix every setting of a documented run."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from advprune.core.errors import ConfigError


def available_recipes() -> list[str]:
    files = resources.files(__package__).iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


def load_recipe(name: str) -> dict[str, Any]:
    """The recipe's YAML as a dict: a packaged recipe by name, or a path to a YAML file of
    one's own (`./my.yaml`); an unknown name lists the known ones."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or os.sep in name:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(
                f"recipe file {path} cannot be read ({err.strerror or err}); check the path"
            ) from err
    elif name in available_recipes():
        text = resources.files(__package__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    else:
        raise ConfigError(
            f"unknown recipe {name!r}; choose one of {', '.join(available_recipes())}, or pass "
            "the path of a YAML recipe of your own"
        )
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {name} is not valid YAML: {err}".splitlines()[0]) from err
