"""`reproduce --executor slurm` on a real single-node Slurm (the `slurm` fixture): one job per
task with afterok dependencies, results bit-equal to `--executor local`; a job preempted mid-epoch
is requeued and resumes, one cancelled mid-epoch resumes on a rerun, which submits nothing that is
finished or queued; `advprune status` says which task is done, queued, running or failed."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from advprune.core.errors import ConfigError
from advprune.reproduction import reproduce
from advprune.reproduction.executor import Resources
from advprune.reproduction.runner import planned_at
from advprune.reproduction.slurm import JOBS, SlurmExecutor, queue, status_lines
from conftest import TINY_TRAINING, quiet

pytestmark = pytest.mark.slow

EVALUATE = {
    "attacks": ["clean", "fgsm"],
    "limit_test": 100,
    "sanity_examples": 0,
    "indicator_examples": 0,
    "latency_repeats": 0,
}
# The pruned rows fine-tune on 16,384 images with a checkpoint every 16 of their 256 steps (about
# 4 s on one thread): the test stops each job once its first checkpoint is written, mid-epoch.
LONG = {"from": "dense", "method": "magnitude", "limit_train": 16384, "checkpoint_every": 16}
STEPS = [
    {"name": "dense", "train": {}},
    {"name": "mag-50", "prune": {**LONG, "sparsity": 0.5}},
    {"name": "mag-90", "prune": {**LONG, "sparsity": 0.9}},
]
TIMEOUT = 120


def write_recipe(path: Path) -> str:
    recipe = {
        "title": "a tiny graph on Slurm",
        "train": TINY_TRAINING,
        "prune": {"finetune_epochs": 1, "allow_chance": True},
        "evaluate": EVALUATE,
        "slurm": {"cpus": 1, "time": "10:00"},
        "steps": STEPS,
    }
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def wait_for(condition, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}; queue: {queue()}")
        time.sleep(0.05)


def settled() -> bool:
    """No job runs or can still start (a job waiting on a failed one never will)."""
    return all(
        state in ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT")
        or reason == "DependencyNeverSatisfied"
        for state, reason in queue().values()
    )


def jobs(root: Path) -> dict[str, str]:
    return json.loads((root / "slurm" / JOBS).read_text())


def states(root: Path) -> dict[str, str]:
    """Task label → the state word `status` prints."""
    rows = [re.split(r"\s{2,}", line, maxsplit=1) for line in status_lines(planned_at(root))]
    return {label: rest.split()[0] for label, rest in rows}


def stop_mid_epoch(root: Path, ids: dict[str, str]) -> None:
    """Once each pruned row has its first checkpoint and no model: mag-50's job is preempted
    (SIGUSR2, what Slurm sends before a time limit or a preemption: requeued under its id,
    released from the requeue's hold at once), mag-90's cancelled (SIGTERM, no requeue)."""
    signals = {"mag-50": ["--signal=USR2"], "mag-90": []}
    deadline = time.monotonic() + TIMEOUT
    while signals:
        for name in [n for n in signals if (root / n / "checkpoint.safetensors").exists()]:
            assert not (root / name / "model.safetensors").exists(), f"{name} ended too soon"
            subprocess.run(["scancel", *signals.pop(name), ids[name]], check=True)
        assert time.monotonic() < deadline, f"no checkpoint after {TIMEOUT}s: {queue()}"
        time.sleep(0.05)
    wait_for(lambda: queue()[ids["mag-50"]][1] == "BeginTime", "mag-50 to be requeued")
    subprocess.run(["scontrol", "update", f"JobId={ids['mag-50']}", "StartTime=now"], check=True)


def same_weights(a: Path, b: Path) -> bool:
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def run_flow(tmp: Path) -> tuple[Path, Path, dict]:
    """The recipe run locally (the reference), then on Slurm: submitted, mag-50's job preempted
    and mag-90's cancelled mid-epoch, the command run again, every job waited for; with the
    status and the job ids seen at each point."""
    recipe = write_recipe(tmp / "graph.yaml")
    reproduce(recipe, tmp / "local", jobs=1, threads=1, progress=False, log=quiet)
    root = tmp / "slurm"
    seen: dict = {"first": [], "second": []}
    reproduce(recipe, root, executor=SlurmExecutor(), progress=False, log=seen["first"].append)
    seen["jobs"] = jobs(root)
    seen["submitted"] = states(root)
    stop_mid_epoch(root, seen["jobs"])
    wait_for(settled, "the cancelled job to end")
    seen["cancelled"] = states(root)
    seen["status"] = status_lines(planned_at(root))
    reproduce(recipe, root, executor=SlurmExecutor(), progress=False, log=seen["second"].append)
    seen["jobs again"] = jobs(root)
    wait_for(lambda: not any(s in ("running", "queued") for s in states(root).values()), "all")
    seen["finished"] = states(root)
    return tmp / "local", root, seen


def test_reproduce_on_a_real_slurm(slurm, tmp_path, capsys):
    """One test, so that pytest-xdist gives the cluster to one process (its `loadgroup` does not
    group under pytest 9): a job sbatch refuses, then the flow and what each part of it shows."""
    refused_job_is_one_line_and_leaves_nothing(tmp_path / "refused", capsys)
    flow = run_flow(tmp_path)
    slurm_results_equal_local_bit_for_bit(flow)
    a_cancelled_job_resumes_and_finished_ones_are_not_resubmitted(flow)
    a_preempted_job_is_requeued_under_its_id_and_resumes(flow)
    status_shows_done_queued_running_and_failed(flow)


def slurm_results_equal_local_bit_for_bit(flow: tuple[Path, Path, dict]) -> None:
    local, root, seen = flow
    assert set(seen["jobs"]) == {"dense", "dense (eval)", "mag-50", "mag-90", "report"}
    assert all(line.startswith("[reproduce] ") for line in seen["first"])
    assert any(
        "dense (eval): submitted as job" in line and "after" in line for line in seen["first"]
    )
    for name in ("dense", "mag-50", "mag-90"):
        assert same_weights(local / name, root / name), name
        ours = json.loads((root / name / "results.json").read_text())
        theirs = json.loads((local / name / "results.json").read_text())
        assert ours["accuracy"] == theirs["accuracy"], name
    assert (root / "report" / "report.md").is_file()


def a_cancelled_job_resumes_and_finished_ones_are_not_resubmitted(flow: tuple) -> None:
    _, root, seen = flow
    first, again = seen["jobs"], seen["jobs again"]
    for label in ("dense", "dense (eval)", "mag-50"):
        assert again[label] == first[label], label  # finished: not submitted again
    assert again["mag-90"] != first["mag-90"] and again["report"] != first["report"]
    assert not any(
        line.startswith(("[reproduce] dense", "[reproduce] mag-50")) for line in seen["second"]
    )
    folder = root / "slurm" / "mag-90" / "both"
    stopped = (folder / f"{first['mag-90']}_0_log.out").read_text()
    assert "checkpoint saved" in stopped
    assert resumed_at(folder / f"{again['mag-90']}_0_log.out") > 0  # its mid-epoch checkpoint


def a_preempted_job_is_requeued_under_its_id_and_resumes(flow: tuple) -> None:
    """SIGUSR2 (a time limit's or a preemption's warning): the step saves a checkpoint, the job
    is requeued by submitit (its one log has both attempts) and resumes mid-epoch."""
    _, _, seen = flow
    log = flow[1] / "slurm" / "mag-50" / "both" / f"{seen['jobs']['mag-50']}_0_log.out"
    text = log.read_text()
    assert "checkpoint saved" in text and f"Requeued job {seen['jobs']['mag-50']}" in text
    assert resumed_at(log) > 0


def resumed_at(log: Path) -> int:
    """The batch the log's step resumed at (0: it did not resume mid-epoch)."""
    found = re.search(r"resuming .* at epoch 1/1, batch (\d+)", log.read_text())
    return int(found.group(1)) if found else 0


def status_shows_done_queued_running_and_failed(flow: tuple) -> None:
    _, _, seen = flow
    assert set(seen["submitted"].values()) <= {"queued", "running", "done"}
    assert seen["submitted"]["report"] == "queued"
    cancelled = seen["cancelled"]
    assert cancelled["dense"] == cancelled["dense (eval)"] == cancelled["mag-50"] == "done"
    assert cancelled["mag-90"] == "failed"
    assert cancelled["report"] == "queued"  # waiting on mag-90, which failed
    (line,) = [line for line in seen["status"] if line.startswith("mag-90")]
    assert f"job {seen['jobs']['mag-90']}: " in line and "StoppedError" in line
    assert set(seen["finished"].values()) == {"done"}


def test_a_bad_slurm_setting_is_refused_before_any_job(tmp_path):
    with pytest.raises(ConfigError, match="time 'soon' is not a Slurm time limit"):
        SlurmExecutor({"time": "soon"})
    with pytest.raises(ConfigError, match="unknown Slurm setting"):
        Resources.from_mapping({"gpu": 1}, "recipe")
    assert Resources(time="2-12:30").minutes() == 3630


def refused_job_is_one_line_and_leaves_nothing(tmp: Path, capsys) -> None:
    tmp.mkdir()
    recipe = write_recipe(tmp / "graph.yaml")
    root = tmp / "runs"
    with pytest.raises(ConfigError, match=r"^sbatch refused the job of dense: .*partition"):
        reproduce(recipe, root, executor=SlurmExecutor({"partition": "nosuch"}), log=quiet)
    assert not root.exists()
    assert capsys.readouterr().err == ""  # sbatch's own lines are in the error, not printed


def test_status_and_slurm_flags_need_no_cluster(tmp_path, capsys):
    """`reproduce … --status` plans from its own arguments (nothing run: every task to do);
    `advprune status` of a root no Slurm reproduction used, and a Slurm flag without
    `--executor slurm`, are one-line errors."""
    from advprune.cli import main

    recipe = write_recipe(tmp_path / "graph.yaml")
    root = str(tmp_path / "runs")
    assert main(["reproduce", recipe, "--runs-dir", root, "--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["dense", "dense", "mag-50", "mag-90"]
    assert all(line.endswith("to do") for line in lines)
    assert main(["status", root]) == 2
    assert "holds no submitted reproduction" in capsys.readouterr().err
    assert main(["reproduce", recipe, "--runs-dir", root, "--gpus", "1"]) == 2
    assert "--gpus is a Slurm flag; add --executor slurm" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
