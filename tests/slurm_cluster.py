"""A real single-node Slurm cluster for the tests, started from Debian's `slurm-wlm` and `munge`.

`make test` installs the two packages (as root; it skips them otherwise). `start` brings up what
is not running yet: munged as the munge user, with a key in /etc/munge (owner munge, mode 400);
slurmctld and slurmd as root, on a slurm.conf in a temporary folder (SLURM_CONF) that describes
this machine as one node (`slurmd -C`: its CPUs and memory) in one partition. It returns once
`sinfo` shows the node idle, or the reason it cannot. `stop` ends only the daemons it started,
by their pids.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel", "srun")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN = Path("/run/munge")


@dataclass
class Cluster:
    """The running cluster: its slurm.conf (what SLURM_CONF names) and the pids it started."""

    conf: Path
    started: list[int] = field(default_factory=list)

    def stop(self) -> None:
        for pid in reversed(self.started):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(50):
                if not _alive(pid):
                    break
                time.sleep(0.1)


def unavailable() -> str | None:
    """Why no cluster can start here, or None."""
    if os.geteuid() != 0:
        return "the Slurm tests start slurmctld and slurmd as root; this is not root"
    missing = [name for name in DAEMONS if shutil.which(name, path=_path()) is None]
    if missing:
        return f"{', '.join(missing)} not installed (`make test` installs slurm-wlm and munge)"
    return None


def _path() -> str:
    return os.environ.get("PATH", "") + ":/usr/sbin:/sbin"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _run(*command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": _path()}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=30)


def _munge_works() -> bool:
    encoded = _run("munge", "-n")
    if encoded.returncode:
        return False
    env = {**os.environ, "PATH": _path()}
    decoded = subprocess.run(
        ["unmunge"], input=encoded.stdout, capture_output=True, env=env, text=True
    )
    return decoded.returncode == 0


def _start_munge(started: list[int]) -> None:
    if not MUNGE_KEY.exists():
        MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
        MUNGE_KEY.write_bytes(os.urandom(1024))
        shutil.chown(MUNGE_KEY, "munge", "munge")
        MUNGE_KEY.chmod(0o400)
    MUNGE_RUN.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_RUN, "munge", "munge")
    result = _run("runuser", "-u", "munge", "--", "munged")
    if result.returncode:
        raise RuntimeError(f"munged did not start: {result.stderr.strip()}")
    started.append(_pid(MUNGE_RUN / "munged.pid"))


def _pid(path: Path) -> int:
    """The pid a daemon writes once it has detached."""
    for _ in range(100):
        if path.is_file() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.05)
    raise RuntimeError(f"no pid in {path}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _config(folder: Path) -> str:
    node = _run("slurmd", "-C").stdout.splitlines()[0]  # NodeName=HOST CPUs=… RealMemory=…
    keep = (
        "NodeName=",
        "CPUs=",
        "Boards=",
        "SocketsPerBoard=",
        "CoresPerSocket=",
        "ThreadsPerCore=",
        "RealMemory=",
    )
    node = " ".join(word for word in node.split() if word.startswith(keep))
    host = socket.gethostname().split(".")[0]
    return f"""ClusterName=advprune-tests
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=600
{node} State=UNKNOWN
PartitionName=tests Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def start(folder: Path, timeout: float = 30) -> Cluster:
    """A cluster whose state lives in `folder`; sets SLURM_CONF for this process and its jobs."""
    (folder / "state").mkdir(parents=True)
    (folder / "spool").mkdir()
    cluster = Cluster(folder / "slurm.conf")
    if not _munge_works():
        _start_munge(cluster.started)
    cluster.conf.write_text(_config(folder))
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        for daemon in ("slurmctld", "slurmd"):
            result = _run(daemon)
            if result.returncode:
                raise RuntimeError(f"{daemon} did not start: {result.stderr.strip()}")
            cluster.started.append(_pid(folder / f"{daemon}.pid"))
        deadline = time.monotonic() + timeout
        while _run("sinfo", "-h", "-o", "%t").stdout.strip() != "idle":
            if time.monotonic() > deadline:
                log = (folder / "slurmd.log").read_text(errors="replace").splitlines()[-3:]
                raise RuntimeError(f"the node is not idle after {timeout:.0f}s: {' '.join(log)}")
            time.sleep(0.2)
    except BaseException:
        cluster.stop()
        raise
    return cluster
