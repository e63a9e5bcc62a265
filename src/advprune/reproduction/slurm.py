"""`reproduce --executor slurm`: one Slurm job per task, through submitit, and their status.

Each task of the plan (a step's build, its evaluation: `parallel.tasks_of`) is one job, which
starts once the jobs of the tasks it needs have ended well (`--dependency=afterok:…`); one more
job writes the report when the evaluations have. The command returns once they are queued and
prints their ids. What the jobs leave beside the run directories:

    ROOT/reproduce.yaml           the plan's settings (`advprune status ROOT` plans again from it)
    ROOT/slurm/jobs.json          each task's latest job id
    ROOT/slurm/STEP/PHASE/        submitit's folder of the task's jobs (PHASE: build, evaluate,
                                  both): JOBID_0_log.out (the step's log), JOBID_0_log.err,
                                  JOBID_submission.sh (the sbatch script), submitit's pickles
    ROOT/slurm/report/            the report job's

Running the command again asks Slurm (`squeue`) what is queued or running, and submits only the
tasks that are neither finished (their run directory says so: runner.nothing_left) nor queued
or running; a queued task that waits on a task submitted again is submitted again after it.

A job near its time limit, or preempted, gets SIGUSR2 (submitit's `--signal=USR2@90`): the
trainer saves a checkpoint at its next step and submitit requeues the job, which resumes from
it. `scancel` (SIGTERM) stops the step the same way without a requeue; the next run of the
command submits it again and it resumes.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advprune.core.errors import AdvpruneError, ConfigError
from advprune.core.io import atomic_write_json, atomic_write_text, read_json
from advprune.reproduction.executor import Executor, Resources
from advprune.reproduction.parallel import BUILD, Task, tasks_of
from advprune.reproduction.plan import Plan
from advprune.reproduction.runner import (
    INVOCATION,
    finish,
    keep_arguments,
    nothing_left,
    run_step,
)

FOLDER = "slurm"
JOBS = "jobs.json"
REPORT = "report"
WARNING = "warning.txt"
# Job states in which a job will still run (squeue's long names).
WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "PREEMPTED"}
RUNNING = {"RUNNING", "CONFIGURING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT"}
NEVER = "DependencyNeverSatisfied"
LAUNCHERS = ("srun: ", "slurmstepd", "submitit ")  # their lines in a job's log


def _folder(plan: Plan, label: str, phase: str | None) -> Path:
    return plan.root / FOLDER / label / phase if phase else plan.root / FOLDER / label


class StoppedError(AdvpruneError):
    """A task's job was stopped before it finished; its run directory resumes it."""


@dataclass
class StageJob:
    """The body of one task's Slurm job: `run_step` on the job's CPUs (its torch threads). On
    SIGUSR2 (a time limit or a preemption ahead) the step saves a checkpoint at its next training
    step, and only then does submitit's handler call `checkpoint` and requeue the job: the step
    resumes from its run directory, so the same job is all a requeue needs."""

    task: Task
    folder: Path

    def __call__(self) -> str | None:
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus:
            import torch

            torch.set_num_threads(int(cpus))
        requeue = signal.getsignal(signal.SIGUSR2)  # submitit's: checkpoint() and requeue
        asked: list[int] = []
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGUSR2, lambda signum, frame: _preempted(asked, signum, frame))
        try:
            warning = run_step(self.task.step, progress=False, log=_print, phase=self.task.phase)
        except KeyboardInterrupt:
            if asked and callable(requeue):
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # Slurm's, as the job requeues
                requeue(asked[0], None)  # the checkpoint is saved: requeue, and exit
            raise StoppedError(
                f"{self.task.label} stopped (SIGTERM: scancel?); running the same `advprune "
                "reproduce` again resumes it"
            ) from None
        if self.task.phase != BUILD:
            _keep_warning(self.folder, warning)
        return warning

    def checkpoint(self) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def _print(message: str) -> None:
    print(message, flush=True)


def _stop(signum: int, frame: object) -> None:
    """SIGTERM outside a training's step loop stops at once (inside it, the trainer saves a
    checkpoint at the next step first: core.interrupts)."""
    raise KeyboardInterrupt


def _preempted(asked: list[int], signum: int, frame: Any) -> None:
    """SIGUSR2: stop as on SIGTERM (a checkpoint at the next step), and remember to requeue."""
    asked.append(signum)
    handler = signal.getsignal(signal.SIGTERM)
    if callable(handler):
        handler(signal.SIGTERM, frame)


def _keep_warning(folder: Path, warning: str | None) -> None:
    path = folder / WARNING
    if warning:
        atomic_write_text(path, warning)
    else:
        path.unlink(missing_ok=True)


@dataclass
class ReportJob:
    """The last job: the report and the paper comparison, with the evaluations' warnings."""

    plan: Plan

    def __call__(self) -> None:
        paths = sorted((self.plan.root / FOLDER).glob(f"**/{WARNING}"))
        finish(self.plan, [path.read_text(encoding="utf-8") for path in paths], _print)


@dataclass(frozen=True)
class Job:
    """A task's latest job as Slurm sees it: state "done" (its run directory says so), "running",
    "queued", "failed" (or cancelled, or gone from squeue unfinished) or "missing"."""

    label: str
    state: str
    job_id: str | None = None
    detail: str = ""


def queue() -> dict[str, tuple[str, str]]:
    """This user's jobs that Slurm still knows: job id → (state, reason)."""
    if shutil.which("squeue") is None:
        raise ConfigError(
            "squeue is not on the PATH: run this on a machine of the Slurm cluster (its login node)"
        )
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-u", getpass.getuser(), "-o", "%i|%T|%r"],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise ConfigError(f"squeue failed: {out.stderr.strip() or out.returncode}")
    jobs = {}
    for line in out.stdout.splitlines():
        job_id, state, reason = line.strip().split("|", 2)
        jobs[job_id] = (state, reason)
    return jobs


def _last_line(folder: Path, job_id: str) -> str:
    """The last line the job wrote (its error log first), not Slurm's or submitit's own: why
    it failed."""
    for name in (f"{job_id}_0_log.err", f"{job_id}_0_log.out"):
        path = folder / name
        if path.is_file():
            lines = [
                line
                for line in path.read_text(errors="replace").splitlines()
                if line.strip() and not line.startswith(LAUNCHERS)
            ]
            if lines:
                return lines[-1].strip()
    return f"no log in {folder}"


class Tracker:
    """The plan's tasks with their latest jobs (ROOT/slurm/jobs.json) and Slurm's queue."""

    def __init__(self, plan: Plan, jobs: dict[str, tuple[str, str]] | None = None) -> None:
        self.plan = plan
        self.path = plan.root / FOLDER / JOBS
        self.ids: dict[str, str] = read_json(self.path, "jobs file") if self.path.exists() else {}
        self.tasks = tasks_of(plan.steps)
        self.queue = jobs if jobs is not None else (queue() if self.ids else {})

    def folder(self, task: Task | None) -> Path:
        return _folder(self.plan, *((task.step.label, task.phase) if task else (REPORT, None)))

    def report_needs(self) -> list[str]:
        return [t.label for t in self.tasks if t.step.evaluate is not None and t.phase != BUILD]

    def job(self, task: Task | None) -> Job:
        label = task.label if task else REPORT
        job_id = self.ids.get(label)
        done = nothing_left(task) if task else (self.plan.root / REPORT / "report.md").is_file()
        state, reason = self.queue.get(job_id, ("", "")) if job_id else ("", "")
        if state in RUNNING:
            return Job(label, "running", job_id)
        if state in WAITING:
            return Job(label, "queued", job_id, reason)
        if done:
            return Job(label, "done", job_id)
        if job_id:
            return Job(label, "failed", job_id, _last_line(self.folder(task), job_id))
        return Job(label, "missing")

    def record(self, label: str, job_id: str) -> None:
        self.ids[label] = job_id
        atomic_write_json(self.path, self.ids)


class SlurmExecutor(Executor):
    """`--executor slurm`: each task a Slurm job with the step's resources (`Resources`, from
    the recipe) and `overrides` (the flags) on top; returns once they are queued."""

    name = "slurm"
    waits = False

    def __init__(self, overrides: dict[str, Any] | None = None) -> None:
        self.overrides = overrides or {}
        Resources().merged(self.overrides, "reproduce")  # a bad flag fails before any job

    def run(self, plan: Plan, log: Callable[[str], None]) -> list[str]:
        if shutil.which("sbatch") is None:
            raise ConfigError(
                "--executor slurm: sbatch is not on the PATH; run the command on a machine of "
                "the Slurm cluster (its login node), or use --executor local"
            )
        keep_arguments(plan)
        tracker = Tracker(plan)
        active: dict[str, str] = {}  # label → the job that will run it
        submitted: set[str] = set()
        report = [None] if tracker.report_needs() else []
        for task in [*tracker.tasks, *report]:
            needs = task.needed_labels() if task else set(tracker.report_needs())
            job = tracker.job(task)
            stale = job.state == "queued" and (needs & submitted or job.detail == NEVER)
            if job.state in ("running", "queued") and not stale:
                active[job.label] = str(job.job_id)
                log(f"[reproduce] {job.label}: {job.state} as job {job.job_id}")
                continue
            if job.state == "done" and not (task is None and submitted):
                continue
            if stale:
                subprocess.run(["scancel", str(job.job_id)], check=False)
            after = sorted({active[label] for label in needs if label in active})
            job_id = self._submit(plan, tracker, task, after)
            tracker.record(job.label, job_id)
            active[job.label] = job_id
            submitted.add(job.label)
            waits = f" after {', '.join(after)}" if after else ""
            log(f"[reproduce] {job.label}: submitted as job {job_id}{waits}")
        if not submitted:
            log("[reproduce] nothing to submit: every task is finished, queued or running")
        return []

    def _submit(self, plan: Plan, tracker: Tracker, task: Task | None, after: Sequence[str]) -> str:
        import submitit

        step = task.step if task else plan.steps[-1]
        resources = step.resources.merged(self.overrides, "reproduce")
        folder = tracker.folder(task)
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=3)
        executor.update_parameters(
            job_name=f"advprune:{plan.root.name}:{task.label if task else REPORT}",
            time=resources.minutes() if task else 30,
            cpus_per_task=resources.cpus,
            **({"partition": resources.partition} if resources.partition else {}),
            **({"gpus_per_node": resources.gpus} if resources.gpus and task else {}),
            **({"mem": resources.mem} if resources.mem else {}),
            **({"dependency": "afterok:" + ":".join(after)} if after else {}),
            additional_parameters=dict(resources.sbatch),
        )
        work = StageJob(task, folder) if task else ReportJob(plan)
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's errors
                return str(executor.submit(work).job_id)
        except submitit.core.utils.FailedJobError as err:
            for leftover in folder.iterdir():  # submitit's script and pickle of the refused job
                if not leftover.name[:1].isdigit():
                    leftover.unlink()
            if not tracker.ids:  # nothing was submitted: nothing stays written
                shutil.rmtree(plan.root / FOLDER)
                (plan.root / INVOCATION).unlink()
                with contextlib.suppress(OSError):  # a root made for this command
                    plan.root.rmdir()
            lines = [line for line in str(err).splitlines() if line.strip()]
            raise ConfigError(
                f"sbatch refused the job of {task.label if task else REPORT}: "
                f"{lines[-1] if lines else err}; fix the Slurm flags or the recipe's slurm: "
                "section and run the same command again (the jobs queued so far are kept)"
            ) from None


def status_lines(plan: Plan, jobs: dict[str, tuple[str, str]] | None = None) -> list[str]:
    """One line per task and one for the report: its state, its job, why it waits or failed."""
    tracker = Tracker(plan, jobs)
    rows = [tracker.job(task) for task in tracker.tasks]
    if tracker.ids.get(REPORT) or any(row.job_id for row in rows):
        rows.append(tracker.job(None))
    width = max(len(row.label) for row in rows)
    lines = []
    for row in rows:
        job = f"  job {row.job_id}" if row.job_id and row.state != "missing" else ""
        detail = f": {row.detail}" if row.detail and row.state in ("failed", "queued") else ""
        state = row.state if row.state != "missing" else "not submitted" if tracker.ids else "to do"
        lines.append(f"{row.label:<{width}}  {state}{job}{detail}")
    return lines
