"""`advprune reproduce --jobs N --devices … --seeds …`: independent steps at once, each in its own
process, stopped and resumed cleanly, equal to a serial run; a recipe's chain per seed, and the
report's mean ± std over the seeds."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from advprune.core.errors import ConfigError
from advprune.report import write_report
from advprune.reproduction import make_plan, parallel, reproduce
from advprune.reproduction.parallel import Schedule, Slot, StepFailedError, make_slots
from conftest import TINY_TRAINING, quiet

PLUGINS = Path(__file__).parent / "plugins"
SRC = Path(__file__).parents[1] / "src"
EVALUATE = {
    "attacks": ["clean", "fgsm"],
    "limit_test": 200,
    "sanity_examples": 0,
    "indicator_examples": 0,
    "latency_repeats": 0,
}
# A dense run and two pruned from it; 4 epochs of fine-tuning on 2,048 images (about a second
# each on one thread), so that a test can stop the pruned steps half-way.
TRAINING = {**TINY_TRAINING, "limit_train": 2048}
CHAIN = [
    {"name": "dense", "train": {}},
    {"name": "mag-50", "prune": {"method": "magnitude", "from": "dense", "sparsity": 0.5}},
    {"name": "mag-90", "prune": {"method": "magnitude", "from": "dense", "sparsity": 0.9}},
]


def write_recipe(path: Path, steps: list[dict], **sections) -> str:
    recipe = {
        "title": "a tiny graph",
        "train": TRAINING,
        "prune": {"finetune_epochs": 4, "allow_chance": True},
        "evaluate": EVALUATE,
        "steps": steps,
        **sections,
    }
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model.safetensors")


def same_weights(a: Path, b: Path) -> bool:
    first, second = weights(a), weights(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The chain run one step after the other in this process, on one thread: the reference."""
    root = tmp_path_factory.mktemp("serial")
    recipe = write_recipe(root / "chain.yaml", CHAIN)
    reproduce(recipe, root / "runs", jobs=1, threads=1, progress=False, log=quiet)
    return recipe, root / "runs"


# ------------------------------------------------------------------- slots and the schedule


def test_slots_split_the_thread_budget_or_take_one_device_each(monkeypatch, tmp_path):
    monkeypatch.setattr(parallel, "thread_budget", lambda: 4)
    steps = make_plan(write_recipe(tmp_path / "chain.yaml", CHAIN), tmp_path).steps
    assert make_slots(steps, 1) == [Slot()]  # in this process, its threads as they are
    assert make_slots(steps, 2) == [Slot(None, 2)] * 2
    assert make_slots(steps, 3) == [Slot(None, 1)] * 3
    assert make_slots(steps, 8) == [Slot(None, 1)] * 8  # at least one thread each
    assert make_slots(steps, 2, threads=3) == [Slot(None, 3)] * 2
    assert make_slots(steps, "auto") == [Slot(None, 2)] * 2  # two pruned rows side by side
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert make_slots(steps, "auto") == [Slot()]  # one GPU process unless --devices
    monkeypatch.undo()
    for jobs, devices, threads, message in [
        (0, None, None, "--jobs must be"),
        ("many", None, None, "--jobs must be"),
        (2, None, 0, "--threads must be"),
        (3, ["cuda:0", "cuda:1"], None, "disagree"),
        (None, ["cpu", "cpu"], None, "twice"),
        (None, ["cuda:0", "cuda:1"], None, "CUDA is not available"),
    ]:
        with pytest.raises(ConfigError, match=message):
            make_slots(steps, jobs, devices, threads)


def test_a_step_starts_when_its_needs_are_done_on_a_free_device(tmp_path):
    """The assignment --devices cuda:0,cuda:1 makes, without a GPU: one task per device at a
    time, the step's every `device` setting the device's, its record unchanged; the pruned rows
    need the dense row's build, not its evaluation, which runs as a task of its own; a second
    run of MAD on the same source waits for the other tasks (it would share the cached pass),
    where two magnitude runs start together (test_jobs_2_runs_two_independent_steps_at_once)."""
    steps = [
        CHAIN[0],
        {"name": "mad-50", "prune": {"method": "mad", "from": "dense", "sparsity": 0.5}},
        {"name": "mad-90", "prune": {"method": "mad", "from": "dense", "sparsity": 0.9}},
        {"name": "random-90", "prune": {"method": "random", "from": "dense"}},
    ]
    plan = make_plan(write_recipe(tmp_path / "four.yaml", steps), tmp_path)
    schedule = Schedule(plan.steps, [Slot("cuda:0", 4), Slot("cuda:1", 4)])
    by_name = {step.name: step for step in plan.steps}

    def started() -> dict[str, str]:
        placed = {}
        for task, slot in schedule.start():
            step = task.step
            devices = {c.device for c in (*step.configs, step.evaluate) if hasattr(c, "device")}
            assert devices == {slot.device}
            assert step.record() == by_name[step.name].record()
            placed[task.label] = slot.device
        assert len(set(schedule.running.values())) == len(schedule.running)
        return placed

    assert started() == {"dense": "cuda:0"}  # the pruned rows wait for it
    assert started() == {}
    schedule.finish("dense")
    # The reference row's evaluation first, then one MAD run (not two MAD passes at once).
    assert started() == {"dense (eval)": "cuda:1", "mad-50": "cuda:0"}
    schedule.finish("dense (eval)")
    assert started() == {"random-90": "cuda:1"}  # before a second MAD run
    schedule.finish("mad-50")  # built and evaluated in one process: nothing needs it
    assert started() == {"mad-90": "cuda:0"}
    schedule.finish("random-90")
    schedule.finish("mad-90")
    assert started() == {} and schedule.waiting == []


def test_a_task_that_starts_alone_gets_every_thread(tmp_path):
    """With the threads split by --jobs (not set by --threads), the dense row, which nothing
    else can run beside, trains on the whole budget; the rows after it on one thread each."""
    plan = make_plan(write_recipe(tmp_path / "three.yaml", CHAIN), tmp_path)
    schedule = Schedule(plan.steps, [Slot(None, 1), Slot(None, 1)], widen_to=2)
    assert [(t.label, s.threads) for t, s in schedule.start()] == [("dense", 2)]
    schedule.finish("dense")
    assert [(t.label, s.threads) for t, s in schedule.start()] == [
        ("dense (eval)", 1),  # the reference row first: a run stopped half-way has it
        ("mag-50", 1),
    ]
    assert schedule.free == []


# -------------------------------------------------------------------------- running at once


def test_jobs_2_runs_two_independent_steps_at_once(tmp_path, monkeypatch):
    """Two train steps of a network that builds only while a second process builds one too."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    monkeypatch.setenv("ADVPRUNE_BARRIER", str(barrier))
    steps = [
        {"name": "a", "train": {"model": "barrier_model:Barrier"}},
        {"name": "b", "train": {"model": "barrier_model:Barrier", "seed": 1}},
    ]
    recipe = write_recipe(tmp_path / "two.yaml", steps)
    messages: list[str] = []
    reproduce(recipe, tmp_path / "runs", jobs=2, threads=1, progress=False, log=messages.append)
    # One process per step; the report, in this process, builds the network once more for its
    # layers' names (conv1, fc1) after both steps are done.
    builders = {path.name for path in barrier.iterdir()} - {str(os.getpid())}
    assert len(builders) == 2
    events = [m.split()[1:3] for m in messages if m.split()[1] in ("start", "done")]
    assert events[:2] == [["start", "a:"], ["start", "b:"]]
    # One after the other, the first step waits in vain: the barrier does tell.
    serial = tmp_path / "serial-barrier"
    serial.mkdir()
    monkeypatch.setenv("ADVPRUNE_BARRIER", str(serial))
    monkeypatch.setenv("ADVPRUNE_BARRIER_TIMEOUT", "1")
    with pytest.raises(ConfigError, match="one by one"):  # the constructor's error, named
        reproduce(recipe, tmp_path / "serial", jobs=1, progress=False, log=quiet)


def test_parallel_steps_equal_a_serial_run_bit_for_bit(serial, tmp_path):
    recipe, serial_root = serial
    messages: list[str] = []
    plan = reproduce(
        recipe, tmp_path / "runs", jobs=2, threads=1, progress=False, log=messages.append
    )
    for step in plan.steps:
        assert same_weights(step.run_dir, serial_root / step.name), step.name
        ours = json.loads((step.run_dir / "results.json").read_text())
        theirs = json.loads((serial_root / step.name / "results.json").read_text())
        assert ours["accuracy"] == theirs["accuracy"]
        assert "=== " in (step.run_dir / "log.txt").read_text()  # its output went there
    assert any("2 steps at a time, 1 thread each" in m for m in messages)
    assert (tmp_path / "runs" / "report" / "report.md").is_file()


def alive(pid: int) -> bool:
    """A process that runs (a zombie waiting for its parent to reap it has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def training_steps(runs: Path, names: list[str], timeout: float = 120) -> dict[str, int]:
    """Name → process of those of `names` that have finished their first epoch, as their run
    directories' locks name them, once one has (the dense row's evaluation may hold the other
    slot, or the other step may still be starting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = {}
        for name in names:
            log, lock = runs / name / "log.txt", runs / name / ".advprune.lock"
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                if "epoch 1 " in log.read_text():
                    pids[name] = json.loads(lock.read_text())["pid"]
        if pids:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"none of the steps {names} started training in {timeout:.0f} s")


@pytest.mark.skipif(sys.platform == "win32", reason="a step leaves its process group: POSIX only")
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_an_interrupted_parallel_run_resumes(serial, tmp_path, stop):
    """Stopped half-way (SIGTERM: the parent stops its steps; SIGKILL: they notice its death),
    a rerun skips the finished steps and resumes the others to the serial run's very weights.
    A step stopped in its first epoch checkpoints; one still starting up (a loaded machine) has
    nothing to keep and starts again."""
    recipe, serial_root = serial
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "advprune", "--quiet", "reproduce", recipe]
    command += ["--runs-dir", str(runs), "--jobs", "2", "--threads", "1"]
    parent = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        training = training_steps(runs, ["mag-50", "mag-90"])
        parent.send_signal(stop)
        _, stderr = parent.communicate(timeout=120)
    finally:
        parent.kill()
    deadline = time.monotonic() + 60
    while any(map(alive, training.values())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(alive, training.values())), "a step outlived its reproduction"
    if stop == signal.SIGTERM:
        assert parent.returncode == 130 and b"interrupted" in stderr
    stopped = [n for n in training if not (runs / n / "model.safetensors").exists()]
    assert stopped, "the training steps finished before the signal: the test stopped nothing"
    for name in stopped:
        assert (runs / name / "checkpoint.safetensors").is_file()
        assert "stopped" in (runs / name / "log.txt").read_text()
    messages: list[str] = []
    reproduce(recipe, runs, jobs=2, threads=1, progress=False, log=messages.append)
    assert "[reproduce] done dense: finished before" in messages
    for name in stopped:
        attempts = (runs / name / "log.txt").read_text().split("=== ")
        builds = [attempt for attempt in attempts if f" {name} (process" in attempt]
        assert "resuming" in builds[-1]
    for name in ("dense", "mag-50", "mag-90"):
        assert same_weights(runs / name, serial_root / name), name


def test_a_failing_step_stops_the_others_and_is_named_in_one_line(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    steps = [
        {"name": "slow", "train": {"epochs": 50}},
        {"name": "broken", "train": {"model": "barrier_model:Broken"}},
    ]
    recipe = write_recipe(tmp_path / "broken.yaml", steps)
    messages: list[str] = []
    with pytest.raises(StepFailedError, match=r"step broken failed: .*cannot be built") as error:
        reproduce(recipe, tmp_path / "runs", jobs=2, threads=1, progress=False, log=messages.append)
    assert "\n" not in str(error.value) and error.value.exit_code == 2  # the user's network
    log = (tmp_path / "runs" / "broken" / "log.txt").read_text()
    assert "error: building barrier_model:Broken raised RuntimeError" in log
    assert "Traceback" not in log  # bad input is one line, in the log as on the console
    assert any(m.startswith("[reproduce] stopping slow") for m in messages)
    assert not (tmp_path / "runs" / "slow" / "model.safetensors").exists()
    assert not (tmp_path / "runs" / "report").exists()


# ------------------------------------------------------------------------------------- seeds


def test_seeds_plan_each_chain_from_its_own_seeds_dense(tmp_path):
    recipe = write_recipe(tmp_path / "chain.yaml", CHAIN, seeds=[0, 1])
    plan = make_plan(recipe, tmp_path, seeds=[3, 4])  # --seeds wins over the recipe's
    assert plan.seeds == (3, 4)
    assert [step.label for step in plan.steps] == [
        f"seed-{seed}/{name}" for seed in (3, 4) for name in ("dense", "mag-50", "mag-90")
    ]
    for step in plan.steps:
        assert step.run_dir == tmp_path / f"seed-{step.seed}" / step.name
        assert {c.seed for c in (*step.configs, step.evaluate) if hasattr(c, "seed")} == {step.seed}
        if step.kind == "prune":
            assert step.setting("from_run") == str(tmp_path / f"seed-{step.seed}" / "dense")
            assert step.needed_labels() == {f"seed-{step.seed}/dense"}
    assert make_plan(recipe, tmp_path).seeds == (0, 1)
    for seeds in ([], [1, 1], [-1], ["a"], 3):
        with pytest.raises(ConfigError, match="seeds must be distinct integers"):
            make_plan(write_recipe(tmp_path / "bad.yaml", CHAIN, seeds=seeds), tmp_path)
    with pytest.raises(ConfigError, match="--set seed and seeds"):
        make_plan(recipe, tmp_path, overrides={"seed": 5})


def test_seeds_run_per_seed_and_the_report_shows_mean_std_and_n(tmp_path):
    recipe = write_recipe(tmp_path / "seeds.yaml", CHAIN[:2], seeds=[0, 1])
    runs = tmp_path / "runs"
    reproduce(recipe, runs, jobs=2, threads=1, progress=False, log=quiet)
    for name in ("dense", "mag-50"):
        assert not same_weights(runs / "seed-0" / name, runs / "seed-1" / name)
    assert yaml.safe_load((runs / "seed-1" / "dense" / "config.yaml").read_text())["seed"] == 1
    results = [
        json.loads((runs / f"seed-{seed}" / "mag-50" / "results.json").read_text())
        for seed in (0, 1)
    ]
    clean = [r["accuracy"]["clean"] for r in results]
    report = (runs / "report" / "report.md").read_text()
    mean, std = 100 * statistics.fmean(clean), 100 * statistics.stdev(clean)
    assert "| mag-50 | magnitude | fashion-mnist | lenet300-100 | 2 |" in report
    assert f"{mean:.2f} ± {std:.2f}" in report
    assert "| seed-0/mag-50 |" in report and "| seed-1/mag-50 |" in report
    rows = [line.split(",") for line in (runs / "report" / "report-seeds.csv").read_text().split()]
    row = dict(zip(rows[0], rows[2], strict=True))
    assert row["step"] == "mag-50" and row["n"] == "2" and "clean_std" in row
    assert float(row["clean_mean"]) == pytest.approx(statistics.fmean(clean))


def fake_run(path: Path, clean: float, pgd: float, ratio: float, sparsity: float) -> None:
    path.mkdir(parents=True)
    results = {
        "method": "magnitude" if sparsity else "pgd-at",
        "dataset": "fashion-mnist",
        "model": "lenet5-caffe",
        "eps": 0.1,
        "sparsity": sparsity,
        "accuracy": {"clean": clean, "pgd": pgd},
        "examples": {"clean": 1000, "pgd": 100},
        "latency": {"batch_1": {"ratio": ratio, "ratio_range": [ratio - 0.1, ratio + 0.1]}},
    }
    (path / "results.json").write_text(json.dumps(results))


def test_an_exported_rows_channels_and_speed_up_are_averaged_over_seeds(tmp_path):
    """The structured rows' channel sparsity and measured speed-up, which every run has, appear
    in the row over seeds as their mean (± the medians' sample std), in the table and the CSV."""
    for seed, (median, channels) in enumerate([(3.0, 0.84), (3.4, 0.86)]):
        run = tmp_path / "root" / f"seed-{seed}" / "mag-c85"
        fake_run(run, 0.70, 0.50, 1.0, 0.97)
        results = json.loads((run / "results.json").read_text())
        results["channel_sparsity"] = channels
        results["measured_speedup"] = {
            "batch_128": {"median": median, "min": median - 0.5, "max": median + 0.5}
        }
        (run / "results.json").write_text(json.dumps(results))
    report = write_report([tmp_path / "root"], tmp_path / "out").read_text()
    over_seeds = report.split("## Every run")[0]
    row = next(line for line in over_seeds.splitlines() if line.startswith("| mag-c85 |"))
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    assert "85.0%" in cells  # channel sparsity
    assert "3.20 ± 0.28×" in cells  # speed-up at batch 128
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "report-seeds.csv").read_text())))
    assert float(rows[0]["speedup_batch_128_mean"]) == pytest.approx(3.2)
    assert float(rows[0]["channel_sparsity_mean"]) == pytest.approx(0.85)


def test_the_report_puts_a_steps_seeds_in_one_row_and_keeps_single_runs_intervals(tmp_path):
    for seed, (clean, pgd, ratio) in enumerate([(0.80, 0.40, 0.5), (0.90, 0.50, 0.7)]):
        fake_run(tmp_path / "root" / f"seed-{seed}" / "mag-90", clean, pgd, ratio, 0.9)
        fake_run(tmp_path / "root" / f"seed-{seed}" / "dense", clean + 0.05, pgd, 1.0, 0.0)
    fake_run(tmp_path / "root" / "single", 0.75, 0.42, 0.6, 0.5)
    report = write_report([tmp_path / "root"], tmp_path / "out").read_text()
    over_seeds, every_run = report.split("## Every run")
    row = next(line for line in over_seeds.splitlines() if line.startswith("| mag-90 |"))
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    assert cells[4] == "2"  # n, after the model
    assert "85.00 ± 7.07" in cells and "45.00 ± 7.07" in cells  # mean ± sample std, in %
    assert "0.60 ± 0.14" in cells  # latency ratio over the seeds
    assert "| single |" not in over_seeds
    single = next(line for line in every_run.splitlines() if line.startswith("| single |"))
    assert "42.00/100 [" in single and "0.60 (0.50–0.70)" in single  # interval and range kept
    assert "| seed-0/mag-90 |" in every_run
    assert "robust_vs_sparsity-fashion-mnist_lenet5-caffe.png" in report
    seeds_csv = (tmp_path / "out" / "report-seeds.csv").read_text().splitlines()
    assert len(seeds_csv) == 3  # the header, dense and mag-90; the single run is not there
