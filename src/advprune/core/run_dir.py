"""The run directory: everything a run produces, and enough to resume, evaluate or report it.

While a run writes to a directory it holds an exclusive lock on a file inside it, so a second run
pointed at the same directory stops with a clear error instead of interleaving checkpoints. The
lock is `flock`: the operating system drops it when the process dies, even by SIGKILL, so a crashed
run never leaves the directory locked; the lock file such a process leaves behind is harmless (the
next run locks it, and rewrites who holds it).

A run that fails before it wrote anything of its own leaves no trace (`undone_on_failure`): a
corrected command can use the same --run-dir.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from advprune.core.errors import ConfigError

LOCK_NAME = ".advprune.lock"


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def at(cls, path: str | os.PathLike) -> RunDir:
        """A run directory that need not exist yet; a path that is a file is a clear error."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"run directory {path} is a file; pass a directory path to --run-dir")
        return cls(path)

    @classmethod
    def create(cls, path: str | os.PathLike) -> RunDir:
        """Make the directory (and parents); a path that is a file is a clear error."""
        run = cls.at(path)
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"cannot create run directory {run.path}: {err.strerror}; choose a writable "
                "--run-dir"
            ) from err
        return run

    @classmethod
    def existing(cls, path: str | os.PathLike) -> RunDir:
        path = Path(path)
        if not path.is_dir():
            raise ConfigError(f"run directory {path} does not exist; pass the --run-dir of a run")
        return cls(path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's lock for the body; a second holder gets a ConfigError naming us.

        The lock file is removed on release. A process that opened it before the removal may
        lock the orphaned inode, so after locking we check the path still names the file we hold.
        """
        path = self.path / LOCK_NAME
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise ConfigError(
                    f"cannot create {path}: {err.strerror}; choose a writable --run-dir"
                ) from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise ConfigError(
                    f"run directory {self.path} is in use by {holder}; wait for it to finish or "
                    "choose another --run-dir"
                ) from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command()}
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(holder).encode())
            yield
        finally:
            path.unlink(missing_ok=True)
            os.close(fd)

    def writer(self) -> str | None:
        """Who is writing the run now ("process 12 on host (advprune train)"), or None: a look
        at its lock that creates nothing and holds nothing."""
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        finally:
            os.close(fd)
        return None

    def unfinished_error(self, flag: str) -> ConfigError:
        """Why `flag DIR` (a run to read) has no model.safetensors, and what to do about it."""
        holder = self.writer()
        if holder is not None:
            return ConfigError(
                f"{flag} {self.path} is still being written by {holder}; wait for it to finish "
                "(its model.safetensors), then run this again"
            )
        if self.checkpoint.exists():
            return ConfigError(
                f"{flag} {self.path} has no model.safetensors: its training stopped before the "
                f"end; finish it with `advprune train --resume --run-dir {self.path}`"
            )
        return ConfigError(
            f"{flag} {self.path} is not a run directory (no model.safetensors, no checkpoint); "
            "pass the --run-dir of a finished `advprune train`"
        )

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        """Latest training state (model, optimizer, epoch, history): what `--resume` reads."""
        return self.path / "checkpoint.safetensors"

    @property
    def model(self) -> Path:
        """Final weights and architecture: what evaluation and pruning read."""
        return self.path / "model.safetensors"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard event files (`advprune train --tensorboard`)."""
        return self.path / "tensorboard"

    @property
    def results(self) -> Path:
        return self.path / "results.json"

    @property
    def exported(self) -> Path:
        """A gated run's physically smaller network (`advprune export`), a run directory itself."""
        return self.path / "exported"


@contextlib.contextmanager
def undone_on_failure(path: str | os.PathLike, records: Collection[str] = ()) -> Iterator[None]:
    """If the body fails before the run in `path` wrote a file of its own, take back what the body
    created there: the `records` (names of files in `path`, such as prune.yaml) that were not there
    before, and the folders it made. A run that wrote anything else (a checkpoint, its config) is
    kept as it is, for --resume."""
    path = Path(path)
    created = [folder for folder in (path, *path.parents) if not folder.exists()]  # deepest first
    new_records = {path / name for name in records if not (path / name).exists()}
    try:
        yield
    except BaseException:
        files = {file for file in path.rglob("*") if not file.is_dir()} if path.is_dir() else set()
        if files <= new_records:
            for record in files:
                record.unlink()
            for folder in created:
                with contextlib.suppress(OSError):  # not empty: something else is in it
                    folder.rmdir()
        raise


def _command() -> str:
    """This process's program and subcommand, e.g. "advprune train" (also for python -m)."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    name = program.parent.name if program.name == "__main__.py" else program.name
    return " ".join([name, *sys.argv[1:2]])


def _read_holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it: "process 123 on host (advprune train)"."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
        return f"process {holder['pid']} on {holder['host']} ({holder['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
