"""Recipes: YAML files shipped with the package that fix every setting of a documented run."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from advprune.core.config import closest
from advprune.core.errors import ConfigError

# A recipe's sections (advprune.reproduction.plan describes them); `train --recipe` reads `train`.
RECIPE_KEYS = ("title", "anchors", "train", "prune", "evaluate", "steps", "paper", "seeds", "slurm")


def is_recipe_path(name: str) -> bool:
    """`./my.yaml`, `recipes/x.yml`: a file of one's own rather than a packaged recipe's name."""
    return Path(name).suffix in (".yaml", ".yml") or os.sep in name


def recipe_name(name: str) -> str:
    """The name its runs go under: the packaged name, or the file's stem (`./my.yaml`: my)."""
    return Path(name).stem if is_recipe_path(name) else name


def available_recipes() -> list[str]:
    """The names of the packaged recipes (`advprune list recipes`), e.g. "demo", "mad-cifar10"."""
    files = resources.files(__package__).iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


def load_recipe(name: str) -> dict[str, Any]:
    """The recipe's YAML as a dict: a packaged recipe by name, or a path to a YAML file of
    one's own (`./my.yaml`); an unknown name lists the known ones, and a key that is not a
    section (`RECIPE_KEYS`) is an error naming it and the file."""
    path = Path(name)
    if is_recipe_path(name):
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
        recipe = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {name} is not valid YAML: {err}".splitlines()[0]) from err
    if not isinstance(recipe, dict):
        raise ConfigError(
            f"recipe {name} must be a mapping of sections ({', '.join(RECIPE_KEYS)}); e.g. "
            "`train: {epochs: 10}`"
        )
    unknown = sorted(set(recipe) - set(RECIPE_KEYS))
    if unknown:
        sections = (
            f"; a recipe's keys are {', '.join(RECIPE_KEYS)}, and settings go in their section "
            "(`train: {epochs: 10}`)"
        )
        meant = closest(str(unknown[0]), RECIPE_KEYS)
        raise ConfigError(f"recipe {name}: unknown key {unknown[0]!r}{meant or sections}")
    return recipe
