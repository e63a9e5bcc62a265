"""A method added in one file (tests/plugins/toy_method.py), registered through the public
decorator, runs through `advprune prune`, `advprune reproduce` with a recipe naming it, the report
and `advprune.prune` — with nothing else edited."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

import advprune
from advprune.masks import WeightMasks
from conftest import TINY_TRAINING, train_tiny

PLUGINS = Path(__file__).parent / "plugins"
SRC = Path(__file__).parents[1] / "src"


def advprune_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": f"{SRC}{os.pathsep}{PLUGINS}",
        "ADVPRUNE_PLUGINS": "toy_method",
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "advprune", "--quiet", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def first_pruned_entries(masks: WeightMasks) -> bool:
    """Each tensor lost its first entries, the toy's ranking."""
    for keep in masks.values():
        flat = keep.flatten()
        pruned = int((~flat).sum())
        if pruned and not (~flat[:pruned]).all():
            return False
    return True


def test_the_cli_lists_runs_and_reports_a_plugin_method(tmp_path):
    listed = advprune_cli("list", "methods", "to*", cwd=tmp_path)
    assert listed.returncode == 0 and "prunes the first entries" in listed.stdout
    helped = advprune_cli("prune", "--method", "toy", "--help", cwd=tmp_path)
    assert "--reverse" in helped.stdout and "toy options" in helped.stdout
    dense = train_tiny(tmp_path / "dense")
    done = advprune_cli(
        "prune", "--method", "toy", "--from", str(dense), "--sparsity", "0.5",
        "--finetune-epochs", "1", "--allow-chance", "--run-dir", "pruned", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    masks, _ = WeightMasks.load(tmp_path / "pruned" / "masks.safetensors")
    assert abs(masks.sparsity() - 0.5) < 1e-3 and first_pruned_entries(masks)
    recipe = {
        "title": "a plugin's recipe",
        "evaluate": {"attacks": ["clean"], "sanity_examples": 0, "latency_repeats": 0},
        "steps": [
            {"name": "dense", "train": TINY_TRAINING},
            {"name": "toy-50", "prune": {"method": "toy", "from": "dense", "sparsity": 0.5,
                                         "finetune_epochs": 1, "allow_chance": True}},
        ],
    }  # fmt: skip
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    done = advprune_cli("reproduce", "./recipe.yaml", "--runs-dir", "suite", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "suite" / "toy-50" / "results.json").read_text())
    assert results["method"] == "toy"
    assert "| toy" in (tmp_path / "suite" / "report" / "report.md").read_text()


def test_the_python_api_runs_a_plugin_method(fashion_slice):
    sys.path.insert(0, str(PLUGINS))
    try:
        import toy_method  # noqa: F401  (registers "toy")
    finally:
        sys.path.remove(str(PLUGINS))
    train = fashion_slice("train", 256)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    pruned = advprune.prune(
        model, (train.images.float() / 255, train.labels), method="toy", sparsity=0.25,
        eps=0.1, finetune_epochs=1, attack_steps=1, allow_chance=True,
    )  # fmt: skip
    weight = pruned[1].weight.flatten()
    count = round(0.25 * weight.numel())
    assert (weight[:count] == 0).all() and (weight[count:] != 0).all()
