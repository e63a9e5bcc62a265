"""Tensors on disk: safetensors with JSON metadata in the header — one atomic file, no pickle.

advprune never unpickles a file a user hands it; a checkpoint is `name → tensor` plus a JSON
document (architecture, config, epoch, history) stored under the header key "advprune".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from advprune.core.errors import CheckpointError
from advprune.core.io import atomic_write

METADATA_KEY = "advprune"
PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # a raw pickle, or torch.save's zip container


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Write `tensors` (made contiguous, on CPU) and `metadata` (JSON-serialisable) atomically."""
    cpu_tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    header = {METADATA_KEY: json.dumps(metadata)}

    def write(tmp: Path) -> None:
        try:
            save_file(cpu_tensors, str(tmp), metadata=header)
        except SafetensorError as err:
            if "I/O error" not in str(err):
                raise
            raise OSError(str(err).split("I/O error: ")[-1]) from err  # e.g. a full disk

    return atomic_write(path, write)


def load_tensors(
    path: str | os.PathLike, what: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by `save_tensors`; every way it can be bad gets an actionable error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}; check the path or train the run first")
    with open(path, "rb") as handle:
        head = handle.read(9)  # safetensors: 8-byte little-endian header size, then "{"
    if head[8:9] != b"{" and head.startswith(PICKLE_MAGIC):
        raise CheckpointError(
            f"{what} {path} is a pickle/torch.save file, not safetensors; advprune never unpickles "
            "files — re-save it with safetensors.torch.save_file"
        )
    try:
        tensors = load_file(str(path))
        metadata = _read_header_metadata(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise _corrupt(path, what, err) from err
    return tensors, metadata


def read_metadata(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, Any]:
    """Only the JSON metadata of a `save_tensors` file: reads the header, never the tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}; check the path or train the run first")
    try:
        return _read_header_metadata(path)
    except (OSError, ValueError) as err:
        raise _corrupt(path, what, err) from err


def _read_header_metadata(path: Path) -> dict[str, Any]:
    with open(path, "rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        if header_size > path.stat().st_size - 8:
            raise ValueError(f"header of {header_size} bytes is longer than the file")
        header = json.loads(handle.read(header_size))
    return json.loads(header.get("__metadata__", {}).get(METADATA_KEY, "{}"))


def _corrupt(path: Path, what: str, err: Exception) -> CheckpointError:
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    return CheckpointError(
        f"{what} {path} is corrupt or truncated ({message}); delete it and re-run, or use a "
        "complete copy"
    )
