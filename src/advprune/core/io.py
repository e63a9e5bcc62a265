"""Atomic file writes: a file is absent, the old version, or complete — never half-written."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from advprune.core.errors import AdvpruneError


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)`, fsync, then rename the temporary file over `path`.

    The temporary file lives in the destination folder so the rename is atomic on POSIX; on any
    failure it is removed and the destination is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise AdvpruneError(
            f"cannot write {path}: {err.strerror or err}; choose a writable directory"
        ) from err
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # After writing: mkstemp's 0600 would make results private, and a writer that replaces
        # the file (safetensors does) would bring its own mode.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise AdvpruneError(
            f"cannot write {path}: {err.strerror or err}; check free space and permissions"
        ) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read JSON with an error that names the file instead of a bare JSONDecodeError."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise AdvpruneError(f"{what} not found: {path}") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdvpruneError(f"{what} {path} is not valid JSON ({err}); it is corrupt") from err
