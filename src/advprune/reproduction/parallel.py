"""A plan's independent steps at once (`reproduce --jobs N`, `--devices cuda:0,cuda:1`).

A recipe is a graph: a step starts once the steps it names (`from:`, `init:`, `transfer_from:`)
have finished, so the pruned rows of a recipe run side by side once their dense row is done.
Each step runs in a process of its own, a fork of a server process that has imported what a step
needs and run nothing (multiprocessing's forkserver, or a fresh interpreter by the spawn method
where there is none): no torch state, thread pool or CUDA context is inherited, and no step pays
the 1–2 s of importing torch again. It runs on one *slot*: a device and a number of
torch threads. `--jobs N` makes N slots on the CPU, each with the thread budget // N threads (the
budget: this process's torch threads, i.e. the machine's cores unless OMP_NUM_THREADS or
`--threads` say otherwise); `--devices` makes one slot per device, whose name becomes the step's
`device` setting (training, pruning and evaluation alike). A step's thread count is a setting of
where it runs, not of what it computes, but floats added up by another number of threads differ
in their last bits: compare runs at the same `--threads`.

Each step keeps today's guarantees: its run directory, its record (step.yaml), its lock, its
resume. What it prints goes to RUN_DIR/log.txt (appended, one header per attempt); the console
shows one line when a step starts and one when it ends, with its time.

Failure policy: the first step that fails stops the others cleanly. Each running step is sent
SIGTERM, which the trainer turns into a checkpoint at the next step boundary; no new step starts;
the error is one line naming the step. Running the same command again skips the finished steps
and resumes the stopped ones, as after Ctrl-C (which stops them the same way). This is what
`--jobs 1` does too: a failure ends the reproduction, and the rerun continues it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from advprune.core.errors import AdvpruneError, ConfigError
from advprune.reproduction.plan import Step

LOG_NAME = "log.txt"
AUTO = "auto"
# Imported once by the forkserver, which every step's process is then forked from.
STEP_IMPORTS = [
    "advprune.reproduction.parallel",
    "advprune.reproduction.runner",
    "advprune.pipelines.prune",
    "advprune.pipelines.train",
    "matplotlib",
]


class StepFailedError(AdvpruneError):
    """A step of a parallel reproduction failed; carries the step's own exit status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Slot:
    """Where one step at a time runs: a device (None: the step's own `device` setting) and its
    torch threads (None: this process's)."""

    device: str | None = None
    threads: int | None = None

    def place(self, step: Step) -> Step:
        """The step with every `device` setting it has (training, pruning, evaluation) set to
        this slot's device; `device` says where a run executes, so the step record is the same."""
        if self.device is None:
            return step
        configs = tuple(_on_device(config, self.device) for config in step.configs)
        evaluate = None if step.evaluate is None else _on_device(step.evaluate, self.device)
        return replace(step, configs=configs, evaluate=evaluate)

    def describe(self) -> str:
        """ "cuda:1, 2 threads", "1 thread", or "" where the slot changes nothing."""
        threads = self.threads
        count = [] if threads is None else [f"{threads} thread{'s' if threads != 1 else ''}"]
        return ", ".join(([self.device] if self.device else []) + count)


def describe_slots(slots: Sequence[Slot]) -> str:
    """ "2 steps at a time, 1 thread each" or "one step per device (cuda:0, cuda:1)"."""
    threads = Slot(threads=slots[0].threads).describe()
    each = f", {threads} each" if threads else ""
    if slots[0].device is None:
        return f"{len(slots)} steps at a time{each}"
    return f"one step per device ({', '.join(str(slot.device) for slot in slots)}){each}"


BUILD, EVALUATE, BOTH = "build", "evaluate", "both"  # runner.run_step's phases


@dataclass(frozen=True)
class Task:
    """What one process does: a step's build (train or prune) and its evaluation, or one of the
    two for a step that others need: they need only its build, so they start while it is being
    evaluated."""

    step: Step
    phase: str = BOTH

    @property
    def label(self) -> str:
        return f"{self.step.label} (eval)" if self.phase == EVALUATE else self.step.label

    def needed_labels(self) -> set[str]:
        return {self.step.label} if self.phase == EVALUATE else self.step.needed_labels()


def tasks_of(steps: Sequence[Step]) -> list[Task]:
    """The tasks of `steps`: first the builds that other steps need (they unlock more work),
    then those steps' evaluations (the reference rows every comparison is made against, so a
    run stopped half-way already has them), then the rest, each group in plan order. A step
    nothing needs is one task: a process costs seconds to start."""
    needed = set().union(*(step.needed_labels() for step in steps))
    split = [step for step in steps if step.label in needed and step.evaluate is not None]
    builds = [
        Task(step, BUILD if step in split else BOTH) for step in steps if step.label in needed
    ]
    rest = [Task(step) for step in steps if step.label not in needed]
    return builds + [Task(step, EVALUATE) for step in split] + rest


def _on_device(config: Any, device: str) -> Any:
    return config.replace(device=device) if "device" in config.field_names() else config


def thread_budget() -> int:
    """The threads the jobs share: torch's in this process (the cores, or OMP_NUM_THREADS)."""
    import torch

    return torch.get_num_threads()


def widest(steps: Sequence[Step]) -> int:
    """The most steps that can run at once by depth: the steps that are as many dependencies
    away from a step that needs nothing (a recipe's pruned rows all sit one away from its dense)."""
    depth: dict[str, int] = {}
    for step in steps:  # plan order: a step's dependencies come before it
        needed = [depth[label] for label in step.needed_labels()]
        depth[step.label] = 1 + max(needed, default=-1)
    levels = list(depth.values())
    return max((levels.count(level) for level in set(levels)), default=1)


def make_slots(
    steps: Sequence[Step],
    jobs: int | str | None = None,
    devices: Sequence[str] | None = None,
    threads: int | None = None,
) -> list[Slot]:
    """The slots the steps run on: `devices`, one each; or `jobs` on the CPU ("auto": as many
    as the thread budget and the recipe's widest level allow, one thread each); threads per
    slot `threads`, else the budget split evenly (at least one each)."""
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be ≥ 1, got {threads}")
    if jobs not in (None, AUTO) and (not isinstance(jobs, int) or jobs < 1):
        raise ConfigError(f"--jobs must be a number ≥ 1 or auto, got {jobs!r}")
    budget = thread_budget()
    if devices:
        if jobs not in (None, AUTO) and jobs != len(devices):
            raise ConfigError(
                f"--jobs {jobs} and --devices {','.join(devices)} disagree (one step per device "
                "at a time); drop --jobs"
            )
        check_devices(devices)
        count, names = len(devices), list(devices)
    else:
        count = int(jobs) if jobs not in (None, AUTO) else _auto_jobs(steps, budget)
        names = [None] * count
    if threads is None and count > 1:
        threads = max(1, budget // count)
    return [Slot(name, threads) for name in names]


def _auto_jobs(steps: Sequence[Step], budget: int) -> int:
    """`--jobs auto`: on a CPU machine one job per thread of the budget, no more than can run
    at once; with a GPU one, since the steps would share it (`--jobs N --set device=cuda` puts
    N steps on it; `--devices` names each device once)."""
    import torch

    return 1 if torch.cuda.is_available() else max(1, min(budget, widest(steps)))


def check_devices(devices: Sequence[str]) -> None:
    """Each device exists here and is named once: a wrong name fails before any step starts."""
    from advprune.core.device import resolve_device

    if len(set(devices)) != len(devices):
        raise ConfigError(f"--devices names a device twice ({','.join(devices)}); name each once")
    for name in devices:
        device = resolve_device(name)
        if device.type == "cuda" and device.index is not None:
            import torch

            if device.index >= torch.cuda.device_count():
                raise ConfigError(
                    f"--devices {name}: this machine has {torch.cuda.device_count()} GPU(s); "
                    "use cuda:0 … cuda:N-1"
                )


def _sharing(task: Task) -> tuple[str | None, frozenset[str]] | None:
    """Builds with the same method and the same sources, of a method that caches a pass from
    its source: they may share it."""
    from advprune.methods import get_method

    if task.phase == EVALUATE or task.step.method is None:
        return None
    if not get_method(task.step.method).caches_pass:
        return None
    return task.step.method, frozenset(task.step.needed_labels())


class Schedule:
    """Which tasks start next and where: a task whose needed tasks have all finished, on a free
    slot. Pure bookkeeping, so that the assignment is tested without processes.

    Among the tasks that may start, a build whose method already runs on the same source and
    caches a pass from it goes after the others: such runs share it (MAD's saliency, the same for
    every sparsity), which a second run started alongside the first would compute again.
    Otherwise the order of `tasks_of`. With `widen_to`, a task that starts alone, with nothing
    else ready or running (a recipe's dense row), gets that many threads instead of its slot's:
    one thread would leave the other cores idle."""

    def __init__(
        self, steps: Sequence[Step], slots: Sequence[Slot], widen_to: int | None = None
    ) -> None:
        self.waiting = tasks_of(steps)
        self.free = list(slots)
        self.slots = len(slots)
        self.widen_to = widen_to
        self.running: dict[str, Slot] = {}
        self.done: list[str] = []
        self._sharing: dict[str, tuple[str | None, frozenset[str]] | None] = {}

    def start(self) -> list[tuple[Task, Slot]]:
        """The tasks that start now, each with the slot it runs on (its device set)."""
        started = []
        while self.free:
            ready = [t for t in self.waiting if t.needed_labels() <= set(self.done)]
            if not ready:
                break
            running = [key for key in self._sharing.values() if key is not None]
            task = min(ready, key=lambda t: running.count(_sharing(t)))  # the first of equals
            slot = self.free.pop(0)
            self.waiting.remove(task)
            self.running[task.label] = slot
            self._sharing[task.label] = _sharing(task)
            alone = len(ready) == 1 and len(self.running) == 1 and len(self.free) == self.slots - 1
            placed = Slot(slot.device, self.widen_to) if alone and self.widen_to else slot
            started.append((Task(placed.place(task.step), task.phase), placed))
        return started

    def finish(self, label: str) -> None:
        self.free.append(self.running.pop(label))
        del self._sharing[label]
        self.done.append(label)


@dataclass
class Worker:
    """One step running in its own process, and the pipe its outcome comes back on."""

    task: Task
    process: BaseProcess
    outcome: Connection
    lifeline: Connection  # the writing end of the pipe the step watches (`_detach`)
    started: float

    @classmethod
    def start(cls, task: Task, slot: Slot) -> Worker:
        context = step_context()
        receive, send = context.Pipe(duplex=False)
        watched, lifeline = context.Pipe(duplex=False)
        process = context.Process(
            target=work,
            args=(task.step, task.phase, slot.threads, send, watched),
            name=f"advprune {task.label}",
            daemon=False,
        )
        process.start()
        send.close()
        watched.close()
        return cls(task, process, receive, lifeline, time.perf_counter())

    @property
    def log_file(self) -> Path:
        return self.task.step.run_dir / LOG_NAME

    def result(self) -> tuple[str, str | None, int]:
        """(status, message, exit code) once the process ended: "done" with its warning,
        "failed" with its error, or "stopped"; a process that died says how."""
        try:
            message = self.outcome.recv() if self.outcome.poll() else None
        except EOFError:  # it died before it could say
            message = None
        self.process.join()
        self.outcome.close()
        self.lifeline.close()
        if message is not None:
            return message
        code = self.process.exitcode
        how = f"was killed by signal {-code}" if code and code < 0 else f"exited with {code}"
        return "failed", f"its process {how} (see {self.log_file})", 1

    def elapsed(self) -> str:
        return f"{time.perf_counter() - self.started:.0f}s"


def run_parallel(
    steps: Sequence[Step],
    slots: Sequence[Slot],
    log: Callable[[str], None] = print,
    *,
    skip: Callable[[Task], bool] = lambda task: False,
    widen_to: int | None = None,
) -> list[str]:
    """Run the builds and evaluations of `steps` on `slots`, each as soon as what it needs has
    finished, except those `skip` says have nothing left to do; returns the gradient-masking
    warnings. A failure or an interruption stops the running tasks cleanly."""
    schedule = Schedule(steps, slots, widen_to)
    total = len(schedule.waiting)
    workers: list[Worker] = []
    warnings: list[str] = []
    try:
        while schedule.waiting or workers:
            workers += _start_ready(schedule, skip, log)
            if not workers:  # every task left was booked as finished before
                continue
            ended = wait([worker.process.sentinel for worker in workers])
            for worker in [w for w in workers if w.process.sentinel in ended]:
                workers.remove(worker)
                warning = _finished(worker, schedule, total, log)
                if warning:
                    warnings.append(warning)
    except BaseException:
        _stop(workers, log)
        raise
    return warnings


def _start_ready(
    schedule: Schedule, skip: Callable[[Task], bool], log: Callable[[str], None]
) -> list[Worker]:
    """A process for each task that can start now; a task with nothing left to do is booked as
    done at once, which may let the tasks that need it start."""
    workers = []
    while started := schedule.start():
        skipped = [task for task, _ in started if skip(task)]
        for task in skipped:
            schedule.finish(task.label)
            log(f"[reproduce] done {task.label}: finished before")
        for task, slot in started:
            if task in skipped:
                continue
            workers.append(Worker.start(task, slot))
            where = f" ({slot.describe()})" if slot.describe() else ""
            what = "attacks and checks" if task.phase == EVALUATE else task.step.describe()
            log(
                f"[reproduce] start {task.label}: {what}{where}; log {task.step.run_dir / LOG_NAME}"
            )
        if not skipped:
            break
    return workers


def _finished(
    worker: Worker, schedule: Schedule, total: int, log: Callable[[str], None]
) -> str | None:
    """Book the end of `worker`'s task; a failure raises `StepFailedError` naming it."""
    status, message, code = worker.result()
    label = worker.task.label
    if status != "done":
        log(f"[reproduce] {label} {status} after {worker.elapsed()}: {message}")
        raise StepFailedError(
            f"step {label} {status}: {message}; fix it and run the same command again (the "
            "finished steps are kept, the stopped ones resume)",
            code,
        )
    schedule.finish(label)
    running = ", ".join(schedule.running) or "none"
    log(
        f"[reproduce] done {label} in {worker.elapsed()} ({len(schedule.done)}/{total}; "
        f"running: {running})"
    )
    return message


def _stop(workers: Sequence[Worker], log: Callable[[str], None]) -> None:
    """SIGTERM every running step (the trainer checkpoints at its next step boundary) and wait
    for each; a second Ctrl-C meanwhile signals them again, which stops them at once."""
    if not workers:
        return
    log(f"[reproduce] stopping {', '.join(w.task.label for w in workers)}: they resume on a rerun")
    for attempt in range(2):
        for worker in workers:
            if worker.process.is_alive():
                os.kill(worker.process.pid, signal.SIGTERM)
        try:
            for worker in workers:
                worker.process.join()
            return
        except KeyboardInterrupt:
            if attempt:
                raise


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def step_context() -> BaseContext:
    """How a step's process starts: forked from the forkserver, which imports `STEP_IMPORTS`
    when it starts, or spawned where the platform has no forkserver (Windows)."""
    if "forkserver" not in get_all_start_methods():
        return get_context("spawn")
    context = get_context("forkserver")
    context.set_forkserver_preload(STEP_IMPORTS)
    return context


def _detach(lifeline: Connection) -> None:
    """Leave the terminal's process group (Ctrl-C reaches the reproduction, which stops each
    step once), and stop as on SIGTERM (with a checkpoint) once the reproduction is gone,
    however it died, even by SIGKILL: it holds the only writing end of `lifeline`, which then
    reads end-of-file. No orphaned step, whether forked or spawned."""
    os.setpgrp()
    signal.signal(signal.SIGTERM, _interrupt)
    threading.Thread(target=_stop_at_end_of, args=(lifeline,), daemon=True).start()


def _stop_at_end_of(lifeline: Connection) -> None:
    with contextlib.suppress(EOFError, OSError):
        lifeline.recv_bytes()  # nothing is ever sent: this returns when the writer is gone
    os.kill(os.getpid(), signal.SIGTERM)


def work(
    step: Step, phase: str, threads: int | None, outcome: Connection, lifeline: Connection
) -> None:
    """The body of a task's process: its output to RUN_DIR/log.txt, its outcome to the
    reproduction as (status, warning or error message, exit code)."""
    _detach(lifeline)
    log_path = step.run_dir / LOG_NAME
    try:
        step.run_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
    except OSError as err:
        outcome.send(("failed", f"cannot write {log_path}: {err.strerror}", 2))
        return
    with log_file:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        sys.stdout = sys.stderr = log_file
        result = _run_logged(step, phase, threads, log_file)
        with contextlib.suppress(OSError):  # the parent was killed: nobody to tell
            outcome.send(result)


def _run_logged(
    step: Step, phase: str, threads: int | None, log_file: Any
) -> tuple[str, str | None, int]:
    from advprune.reproduction.runner import run_step

    def log(message: str) -> None:
        print(message, file=log_file, flush=True)

    try:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        label = Task(step, phase).label
        log(f"=== {now} {label} (process {os.getpid()}, threads {threads or 'default'})")
        return "done", run_step(step, progress=False, log=log, phase=phase), 0
    except AdvpruneError as err:
        log(f"error: {err}")
        return "failed", str(err), err.exit_code
    except KeyboardInterrupt:
        log("stopped; the next run resumes it")
        return "stopped", "stopped before it finished", 130
    except Exception as err:  # a bug: its traceback goes to the log, one line to the console
        traceback.print_exc(file=log_file)
        return "failed", f"{type(err).__name__}: {err} (traceback in {log_file.name})", 1
