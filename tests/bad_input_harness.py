"""The bad-input suites' harness: each command a real `python -m advprune` process, with its own
working folder snapshotted before and after.

To keep dozens of commands fast on two cores, one helper process imports advprune once and forks
a child per command (`LAUNCHER`), instead of paying the interpreter start and the imports each
time; the helper never computes with torch, so its children start clean. A child runs
`advprune/__main__.py` exactly as `python -m advprune` does (an uncaught exception prints its
traceback and exits 1, as the interpreter does), with the command's environment, file-size limit
(`ulimit -f`, so that writes beyond it fail like a full disk) and, if asked, without root's
permission override: so a read-only folder is read-only to it whoever runs the tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from advprune.core.run_dir import LOCK_NAME

SRC = Path(__file__).parents[1] / "src"

# The tiny training most cases start from: one epoch of 64 Fashion-MNIST images into `run`.
TRAIN = [
    "train",
    "--model",
    "lenet300-100",
    "--epochs",
    "1",
    "--limit-train",
    "64",
    "--limit-test",
    "64",
    "--batch-size",
    "64",
    "--attack-steps",
    "1",
    "--monitor-examples",
    "0",
    "--run-dir",
    "run",
]

# Reads commands as JSON from stdin; forks a child per command (a few at a time); prints each
# child's exit code as JSON.
LAUNCHER = r"""
import ctypes, json, os, resource, runpy, sys, traceback
import scipy.io, torch._dynamo  # what SVHN and the first optimizer import
import advprune.cli
advprune.cli.build_parser()  # and the commands' imports

def drop_root_override():
    # CAP_DAC_OVERRIDE (bit 1) and CAP_DAC_READ_SEARCH (bit 2) let root write into read-only
    # folders; access(2) checks a root process against its permitted set, so drop them there too.
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Sets(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]
    libc = ctypes.CDLL(None, use_errno=True)
    header, sets = Header(0x20080522, 0), (Sets * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), sets) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    for part in sets:
        part.effective &= ~0b110
        part.permitted &= ~0b110
        part.inheritable &= ~0b110
    if libc.capset(ctypes.byref(header), sets) != 0:
        raise OSError(ctypes.get_errno(), "capset")

def child(case):
    os.chdir(case["cwd"])
    os.environ.update(case["env"])
    extra = case["env"].get("PYTHONPATH", "")  # as the interpreter reads PYTHONPATH at start
    sys.path[:0] = [os.path.abspath(entry) for entry in extra.split(os.pathsep) if entry]
    if case["file_size_limit_kb"] is not None:
        limit = case["file_size_limit_kb"] * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    if case["without_root_override"]:
        drop_root_override()
    for fd, name in ((1, "stdout"), (2, "stderr")):
        os.dup2(os.open(case[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.argv = ["advprune", *case["args"]]
    code = 1
    try:
        runpy.run_module("advprune", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

cases, running, codes = json.load(sys.stdin), {}, {}
for case in cases + [None] * 4:
    while len(running) >= 4 or (case is None and running):
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
        if case is not None and len(running) < 4:
            break
    if case is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            child(case)
        running[pid] = case["id"]
print(json.dumps(codes))
"""


@dataclass
class Command:
    """`advprune --quiet ARGS` run in `folder`."""

    id: str
    folder: Path
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)  # PYTHONPATH entries go on sys.path too
    file_size_limit_kb: int | None = None
    without_root_override: bool = False  # read-only folders stay read-only even for root


@dataclass
class Outcome:
    folder: Path
    returncode: int
    stdout: str
    stderr: str
    before: dict[str, str]
    after: dict[str, str]

    def changed(self) -> set[str]:
        """Files and folders ("name/") that are new or whose contents changed."""
        return {name for name, digest in self.after.items() if self.before.get(name) != digest}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with a hash of its contents, and every folder as "name/"."""
    return {
        str(path.relative_to(folder)) + ("/" if path.is_dir() else ""): (
            "" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        )
        for path in sorted(folder.rglob("*"))
    }


def run_commands(commands: list[Command], logs: Path) -> dict[str, Outcome]:
    """Run every command (four at a time), each folder snapshotted before and after it."""
    before = {command.id: snapshot(command.folder) for command in commands}
    specs = [
        {
            "id": command.id,
            "cwd": str(command.folder),
            "args": ["--quiet", *command.args],
            "env": command.env,
            "file_size_limit_kb": command.file_size_limit_kb,
            "without_root_override": command.without_root_override,
            "stdout": str(logs / f"{command.id}.out"),
            "stderr": str(logs / f"{command.id}.err"),
        }
        for command in commands
    ]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER],
        input=json.dumps(specs),
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    codes = json.loads(done.stdout)
    return {
        command.id: Outcome(
            command.folder,
            codes[command.id],
            (logs / f"{command.id}.out").read_text(),
            (logs / f"{command.id}.err").read_text(),
            before[command.id],
            snapshot(command.folder),
        )
        for command in commands
    }


def assert_one_line_error(outcome: Outcome, message: str) -> None:
    """Exit 2, no traceback, one stderr line holding `message` and a fix after it."""
    assert outcome.returncode == 2, outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert outcome.stderr.startswith("advprune: error: ") and outcome.stderr.count("\n") == 1, (
        outcome.stderr
    )
    assert message in outcome.stderr, outcome.stderr
    assert ";" in outcome.stderr or "—" in outcome.stderr  # the fix follows the problem


def assert_left_as_found(outcome: Outcome, written: set[str] = frozenset()) -> None:
    """Every file as it was but the complete files in `written` (all of them new), no folder but
    theirs, nothing deleted, no temporary or lock file."""
    changed = outcome.changed()
    files = {name for name in changed if not name.endswith("/")}
    assert files == set(written) - set(outcome.before), files
    holding = {f"{parent}/" for name in written for parent in Path(name).parents}
    assert changed - files <= holding, changed - files  # no folder left empty
    assert not set(outcome.before) - set(outcome.after)  # nothing deleted either
    assert not any(name.endswith(".tmp") or name.endswith(LOCK_NAME) for name in changed)
