"""A run killed with SIGKILL mid-epoch and resumed ends exactly where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from advprune.core.run_dir import LOCK_NAME
from advprune.core.tensor_files import load_tensors
from advprune.training import TrainConfig, train
from conftest import TINY_TRAINING

SRC = Path(__file__).parents[1] / "src"

SETTINGS = {**TINY_TRAINING, "epochs": 2, "batch_size": 32, "optimizer": "sgd", "lr": 0.05}
SETTINGS.update(limit_test=256, monitor_examples=64, seed=1, checkpoint_every=3, tensorboard=True)
# 512 training examples: 16 steps per epoch


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "advprune", "--quiet", *args]


def train_flags(run_dir: Path) -> list[str]:
    flags = ["train", "--run-dir", str(run_dir)]
    for key, value in SETTINGS.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return flags


def checkpoint_position(path: Path) -> tuple[int, int] | None:
    """(epoch, batch) from the checkpoint's header, or None while there is none yet."""
    try:
        with open(path, "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    except (FileNotFoundError, ValueError):
        return None
    metadata = json.loads(header["__metadata__"]["advprune"])
    return metadata["epoch"], metadata["batch"]


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar but wall-clock times, as TensorBoard shows it (purges applied)."""
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {
        tag: [(event.step, event.value) for event in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
        if tag != "epoch/seconds"
    }


def without_seconds(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    train(TrainConfig(**SETTINGS), str(tmp_path / "whole"), progress=False, log=lambda _: None)

    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    process = subprocess.Popen(cli(*train_flags(killed)), env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while (position := checkpoint_position(killed / "checkpoint.safetensors")) is None or (
        position[1] == 0  # wait for a checkpoint in the middle of an epoch
    ):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists()
    assert (killed / LOCK_NAME).exists()  # left behind, but the OS released its lock
    epoch, batch = checkpoint_position(killed / "checkpoint.safetensors")
    assert 0 < batch < 16

    resumed = subprocess.run(
        cli("train", "--run-dir", str(killed), "--resume"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"at epoch {epoch + 1}/2, batch {batch}/16" in resumed.stdout
    assert sorted(p.name for p in killed.iterdir()) == sorted(
        p.name for p in (tmp_path / "whole").iterdir()
    )

    for name in ("model.safetensors", "checkpoint.safetensors"):
        expected, _ = load_tensors(tmp_path / "whole" / name)
        actual, _ = load_tensors(killed / name)
        assert expected.keys() == actual.keys()
        for key, tensor in expected.items():
            assert torch.equal(actual[key], tensor), f"{name}: {key}"
    assert without_seconds(killed) == without_seconds(tmp_path / "whole")
    assert scalars(killed) == scalars(tmp_path / "whole")
