"""Where a results.json came from: enough to rerun it, and to know when two are not comparable.

Seed, advprune's version and, when advprune runs from a git checkout, its commit (and whether the
checkout had uncommitted changes); torch's version; the device and its name; the date (UTC); the
evaluation's full settings and the run's training settings. A number without these cannot be
checked against another machine's or another paper's.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch import nn

import advprune


def git_commit(folder: Path | None = None) -> dict[str, Any]:
    """{"git_commit": sha, "git_dirty": bool} of the checkout holding `folder` (advprune's own
    package by default) if it is tracked there; empty otherwise — this never fails."""
    folder = folder or Path(advprune.__file__).parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10
        )
        if done.returncode != 0:
            raise OSError(done.stderr)
        return done.stdout.strip()

    try:
        git("ls-files", "--error-unmatch", "__init__.py")  # advprune is tracked, not vendored
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "."))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit, "git_dirty": dirty}


def device_name(device: torch.device) -> str:
    """ "NVIDIA H100 80GB HBM3", or the CPU's model name ("Intel(R) Xeon(R) …")."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def provenance(
    *, seed: int, device: torch.device, settings: dict[str, Any], run_config: dict[str, Any]
) -> dict[str, Any]:
    """The provenance block of results.json (see the module docstring)."""
    return {
        "seed": seed,
        "advprune_version": advprune.__version__,
        **git_commit(),
        "torch_version": torch.__version__,
        "device": str(device),
        "device_name": device_name(device),
        "date": utc_now(),
        "settings": settings,
        "run_config": run_config,
    }


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in chunks: what identifies a model file's weights."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_sha256(model: nn.Module) -> str:
    """A sha256 over a model's state-dict tensors (names, shapes, dtypes, bytes), for models that
    are not a file."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
        digest.update(tensor.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
