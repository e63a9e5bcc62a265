"""Black-box transfer evaluation, the ANP-VS protocol: PGD-40 crafted on a separate PGD-AT model.

The evaluated model's gradients are never used, so its accuracy here must not fall below its
white-box PGD accuracy; if it does, the white-box attack is the weaker one, a sign of gradient
masking (objectives.md, sanity checks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from advprune.attacks import ATTACKS
from advprune.core.errors import CheckpointError, ConfigError
from advprune.core.run_dir import RunDir
from advprune.evaluation.provenance import file_sha256
from advprune.models import in_trained_layout
from advprune.models.serialization import load_model

TRANSFER_STEPS = ATTACKS["transfer"].defaults["steps"]
TRANSFER_TOLERANCE = 0.01  # black-box may trail white-box by sampling noise, not by more


def input_signature(metadata: dict[str, Any]) -> dict[str, Any]:
    """What a source model must share with the target: dataset, input shape and classes."""
    architecture = metadata["architecture"]
    size = architecture["image_size"]
    return {
        "dataset": metadata.get("config", {}).get("dataset"),
        "input shape": f"{architecture['in_channels']}×{size}×{size}",
        "classes": architecture["num_classes"],
    }


def load_source(
    source_dir: str | Path, target: RunDir, target_metadata: dict[str, Any], device: torch.device
) -> tuple[nn.Module, dict[str, Any]]:
    """The source run's model (safetensors: no code runs on load), checked against the target."""
    source = RunDir.existing(source_dir)
    if source.path.resolve() == target.path.resolve():
        raise ConfigError(
            "--transfer-from names the evaluated run itself, which is a white-box attack; pass a "
            "separately trained PGD-AT run"
        )
    if not source.model.exists():
        raise CheckpointError(
            f"{source.path} holds no {source.model.name}; finish training the transfer source first"
        )
    model, metadata = load_model(source.model, device=device)
    expected, found = input_signature(target_metadata), input_signature(metadata)
    differences = [
        f"{key} {found[key]} ≠ {expected[key]}" for key in expected if found[key] != expected[key]
    ]
    if differences:
        raise ConfigError(
            f"transfer source {source.path} does not fit the evaluated model "
            f"({', '.join(differences)}); pass a source trained on {expected['dataset']}"
        )
    return in_trained_layout(model, metadata), metadata


def transfer_settings(source_dir: str | Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """What results.json records about the transfer source beside the attack's own settings; its
    file's sha256 is what a rerun compares."""
    source = RunDir.existing(source_dir)
    trained = metadata.get("config", {})
    return {
        "source": str(source.path.resolve()),
        "source_sha256": file_sha256(source.model),
        "source_method": metadata.get("method", {}).get("name", trained.get("objective")),
        "source_eps": metadata.get("eps"),
    }


def transfer_problems(accuracies: dict[str, float]) -> list[str]:
    """Black-box accuracy ≥ white-box PGD accuracy, or the white-box attack is failing."""
    if "transfer" not in accuracies or "pgd" not in accuracies:
        return []
    if accuracies["transfer"] < accuracies["pgd"] - TRANSFER_TOLERANCE:
        return [
            f"black-box transfer accuracy {accuracies['transfer']:.3f} is below white-box PGD's "
            f"{accuracies['pgd']:.3f}"
        ]
    return []
