"""`advprune list {methods,models,datasets,attacks,recipes} [PATTERN]`: what each registry holds,
one line per entry (timm's `list_models`, with wildcards); a method's line starts with its kind."""

from __future__ import annotations

import argparse
import fnmatch
from collections.abc import Callable

KINDS = ("methods", "models", "datasets", "attacks", "recipes")


def _methods() -> dict[str, str]:
    from advprune.methods import get_method, method_names

    classes = {name: get_method(name) for name in method_names()}
    width = max((len(cls.kind) for cls in classes.values()), default=0)
    return {
        name: f"{cls.kind:<{width}}  {cls.description} [{cls.origin}]"
        for name, cls in classes.items()
    }


def _models() -> dict[str, str]:
    from advprune.models import list_models, model_entry

    return {name: model_entry(name).description for name in list_models()}


def _datasets() -> dict[str, str]:
    from advprune.data import DATASETS, IMAGE_FOLDER

    return {
        name: f"{spec.num_classes} classes, {spec.in_channels}×{spec.image_size}×"
        f"{spec.image_size}, standard ε {spec.default_eps:.4g}"
        for name, spec in DATASETS.items()
    } | {
        IMAGE_FOLDER: "your images: --data-dir DIR with DIR/train/CLASS/*.png and "
        "DIR/test/CLASS/*.png (or --test-fraction); one size, L or RGB; pass --eps"
    }


def _attacks() -> dict[str, str]:
    from advprune.attacks import ATTACKS, CLEAN

    return {CLEAN: "no attack: accuracy on the images themselves"} | {
        name: spec.description for name, spec in ATTACKS.items()
    }


def _recipes() -> dict[str, str]:
    from advprune.recipes import available_recipes, load_recipe

    return {name: str(load_recipe(name).get("title", "")) for name in available_recipes()}


LISTERS: dict[str, Callable[[], dict[str, str]]] = {
    "methods": _methods,
    "models": _models,
    "datasets": _datasets,
    "attacks": _attacks,
    "recipes": _recipes,
}


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("list", help="list methods, models, datasets, attacks, recipes")
    parser.add_argument("kind", choices=KINDS, help="which registry")
    parser.add_argument("pattern", nargs="?", default="*", help="wildcard, e.g. 'vgg*'")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    entries = {
        name: text
        for name, text in LISTERS[args.kind]().items()
        if fnmatch.fnmatchcase(name, args.pattern)
    }
    width = max((len(name) for name in entries), default=0)
    for name, text in entries.items():
        print(f"{name:<{width}}  {text}")
    return 0
