"""Bad input through the real CLI: one line naming the problem and the fix, a non-zero exit, no
traceback, and nothing written half.

Every case is its own process running `advprune/__main__.py` exactly as `python -m advprune`
does, with its own working folder (and file-size limit), through the harness in
bad_input_harness.py. Besides its message, every case must leave its folder as it found it — no
temporary file, no lock file, no new folder, every file that was there unchanged — apart from the
complete files it names in `written`. tests/test_bad_inputs_two.py has the second round.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from advprune.core.run_dir import RunDir
from advprune.core.tensor_files import load_tensors
from advprune.models import create_model
from advprune.models.serialization import save_model
from advprune.training import TrainConfig
from advprune.training.checkpoint import save_training_state
from bad_input_harness import (
    TRAIN,
    Command,
    Outcome,
    assert_left_as_found,
    assert_one_line_error,
    run_commands,
)


@dataclass
class Case:
    """`args` run in the case's folder after `setup(folder)`; stderr must hold `message`."""

    id: str
    args: list[str]
    message: str
    setup: Callable[[Path], None] | None = None
    written: set[str] = field(default_factory=set)  # complete files the run may leave
    file_size_limit_kb: int | None = None  # `ulimit -f`: writes beyond it fail like a full disk


# ------------------------------------------------------------------------------ fake files


def write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = struct.pack(f">I{len(dims)}I", magic, *dims) + payload
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def mnist_files(
    images: int = 7, labels: int = 7, image_magic: int = 0x803, image_bytes: int | None = None
) -> Callable[[Path], None]:
    """A tiny MNIST train split in `folder/mnist`, broken as asked."""

    def setup(folder: Path) -> None:
        payload = bytes(images * 28 * 28 if image_bytes is None else image_bytes)
        write_idx(folder / "mnist/train-images-idx3-ubyte", image_magic, (images, 28, 28), payload)
        write_idx(folder / "mnist/train-labels-idx1-ubyte", 0x801, (labels,), bytes(labels))

    return setup


class RunsCommand:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def cifar_batch(contents: Callable[[Path], object]) -> Callable[[Path], None]:
    """A CIFAR-10 train split whose first batch holds `contents` (the others are never read)."""

    def setup(folder: Path) -> None:
        batches = folder / "cifar/cifar-10-batches-py"
        batches.mkdir(parents=True)
        for index in range(2, 6):
            (batches / f"data_batch_{index}").write_bytes(b"")
        batch = contents(folder)
        batch = batch if isinstance(batch, bytes) else pickle.dumps(batch, protocol=2)
        (batches / "data_batch_1").write_bytes(batch)

    return setup


def svhn_garbage(folder: Path) -> None:
    (folder / "svhn").mkdir()
    (folder / "svhn/train_32x32.mat").write_bytes(b"not a mat file at all" * 10)


def saved_run(model: str = "lenet300-100", checkpoint_bytes: int | None = None, **config):
    """A run folder `run` as `advprune train` leaves it: config.yaml (for lenet300-100) and a
    checkpoint of `model`, cut to `checkpoint_bytes` if given."""

    def setup(folder: Path) -> None:
        run = folder / "run"
        TrainConfig(
            model="lenet300-100", limit_train=64, limit_test=64, batch_size=64, **config
        ).validate().save(run / "config.yaml")
        network = create_model(model, 10, 1, image_size=28)
        optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
        path = run / "checkpoint.safetensors"
        save_training_state(path, network, optimizer, {"epoch": 0, "history": []})
        if checkpoint_bytes is not None:
            path.write_bytes(path.read_bytes()[:checkpoint_bytes])

    return setup


def model_file(kind: str) -> Callable[[Path], None]:
    """`run/model.safetensors` that is truncated, or a torch.save pickle."""

    def setup(folder: Path) -> None:
        path = folder / "run" / "model.safetensors"
        path.parent.mkdir()
        model = create_model("lenet300-100", 10, 1, image_size=28)
        if kind == "pickle":
            torch.save(model.state_dict(), path)
        else:
            save_model(path, model, {"architecture": {}})
            path.write_bytes(path.read_bytes()[:5000])

    return setup


def a_file(folder: Path) -> None:
    (folder / "run").write_text("precious")


def an_unfinished_run(folder: Path) -> None:
    (folder / "run").mkdir()
    (folder / "run" / "checkpoint.safetensors").write_bytes(b"from an earlier run")


# --------------------------------------------------------------------------------- the cases

CASES = [
    Case(
        "unknown-dataset", [*TRAIN, "--dataset", "imagenet-22k"], "unknown dataset 'imagenet-22k'"
    ),
    Case(
        "missing-dataset",
        [*TRAIN, "--dataset", "cifar10", "--data-dir", "nowhere"],
        "cifar10 train split not found",
    ),
    Case(
        "unknown-model",
        [*TRAIN, "--model", "lenet6"],
        "unknown model 'lenet6' (known: lenet300-100",
    ),
    Case("unknown-objective", [*TRAIN, "--objective", "mart2"], "unknown objective 'mart2'"),
    Case("unknown-optimizer", [*TRAIN, "--optimizer", "lion"], "unknown optimizer 'lion'"),
    Case("no-examples", [*TRAIN, "--limit-train", "0"], "limit_train must be ≥ 1"),
    Case("negative-eps", [*TRAIN, "--eps", "-0.1"], "ε = -0.1 is outside [0, 1]"),
    Case("batch-beyond-data", [*TRAIN, "--batch-size", "100000"], "lower --batch-size"),
    Case(
        "idx-wrong-magic",
        [*TRAIN, "--dataset", "mnist", "--data-dir", "mnist"],
        "magic number 0x00000802, expected 0x00000803",
        setup=mnist_files(image_magic=0x802),
    ),
    Case(
        "idx-truncated",
        [*TRAIN, "--dataset", "mnist", "--data-dir", "mnist"],
        "train-images-idx3-ubyte is truncated",
        setup=mnist_files(image_bytes=3000),
    ),
    Case(
        "idx-absurd-declared-size",
        [*TRAIN, "--dataset", "mnist", "--data-dir", "mnist"],
        "train-images-idx3-ubyte is truncated",
        setup=mnist_files(images=10**9, labels=7, image_bytes=84),
    ),
    Case(
        "idx-count-mismatch",
        [*TRAIN, "--dataset", "mnist", "--data-dir", "mnist"],
        "holds 7 images but",
        setup=mnist_files(labels=6),
    ),
    Case(
        "cifar-corrupt",
        [*TRAIN, "--dataset", "cifar10", "--data-dir", "cifar"],
        "data_batch_1: ",
        setup=cifar_batch(lambda _: b"\x80\x02garbage"),
    ),
    Case(
        "cifar-malicious-pickle",
        [*TRAIN, "--dataset", "cifar10", "--data-dir", "cifar"],
        "refusing to unpickle",
        setup=cifar_batch(lambda folder: {b"payload": RunsCommand(folder / "executed")}),
    ),
    Case(
        "cifar-wrong-shape",
        [*TRAIN, "--dataset", "cifar10", "--data-dir", "cifar"],
        "is not a CIFAR batch",
        setup=cifar_batch(lambda _: {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}),
    ),
    Case(
        "svhn-corrupt",
        [*TRAIN, "--dataset", "svhn", "--data-dir", "svhn"],
        "train_32x32.mat",
        setup=svhn_garbage,
    ),
    Case(
        "checkpoint-of-another-architecture",
        ["train", "--run-dir", "run", "--resume"],
        "does not fit this model",
        setup=saved_run(model="lenet5-caffe"),
    ),
    Case(
        "truncated-checkpoint",
        ["train", "--run-dir", "run", "--resume"],
        "corrupt or truncated",
        setup=saved_run(checkpoint_bytes=4000),
    ),
    Case(
        "truncated-model-file",
        ["eval", "run", "--limit-test", "8"],
        "corrupt or truncated",
        setup=model_file("truncated"),
    ),
    Case(
        "pickle-for-safetensors",
        ["eval", "run", "--limit-test", "8"],
        "advprune never unpickles files",
        setup=model_file("pickle"),
    ),
    Case(
        "sparsity-outside-0-1",
        ["prune", "--method", "mad", "--sparsity", "1.0", "--from", "dense", "--run-dir", "run"],
        "sparsity must be a fraction in [0, 1)",
    ),
    Case("missing-run", ["eval", "run"], "run directory run does not exist"),
    Case(
        "unknown-attack",
        ["eval", "run", "--attacks", "clean,deepfool"],
        "unknown attack 'deepfool'",
    ),
    Case(
        "unknown-method",
        ["prune", "--method", "nonsense", "--from", "dense", "--run-dir", "run"],
        "unknown method 'nonsense'",
    ),
    Case("run-dir-is-a-file", TRAIN, "run directory run is a file", setup=a_file),
    Case(
        "full-disk",
        [*TRAIN, "--objective", "standard"],
        "cannot write run/checkpoint.safetensors: File too large",
        written={"run/config.yaml", "run/metrics.jsonl"},
        file_size_limit_kb=600,  # config and metrics fit, the 2 MB checkpoint does not
    ),
    Case(
        "non-finite-loss",
        [
            *TRAIN,
            "--objective",
            "standard",
            "--lr",
            "1e30",
            "--limit-train",
            "128",
            "--checkpoint-every",
            "1",
        ],
        "is nan at epoch 1 step 2",
        written={"run/config.yaml", "run/checkpoint.safetensors"},
    ),
    Case(
        "mismatched-resume",
        ["train", "--run-dir", "run", "--resume", "--eps", "0.2"],
        "the run in run was started with eps=0.1, not 0.2; resume it with its settings",
        setup=saved_run(eps=0.1),
    ),
    Case(
        "run-already-there",
        TRAIN,
        "run already holds a run; pass --resume",
        setup=an_unfinished_run,
    ),
    Case("locked-run-dir", TRAIN, f"run is in use by process {os.getpid()}"),
    Case("unknown-backend", [*TRAIN, "--backend", "mpi"], "unknown backend 'mpi'"),
    Case(
        "eval-eps-in-255ths",
        ["eval", "run", "--eps", "8"],
        "ε is in [0, 1] pixels; for 8/255 pass 0.0314 or --eps 8/255",
    ),
    Case("eval-eps-not-a-number", ["eval", "run", "--eps", "8/O"], "'8/O' is not a number"),
    Case(
        "eval-transfer-without-source",
        ["eval", "run", "--attacks", "clean,transfer"],
        "attack transfer needs a source model; pass --transfer-from RUN",
    ),
    Case(
        "eval-unknown-protocol",
        ["eval", "run", "--protocol", "robustbench"],
        "unknown protocol 'robustbench'; choose one of ap-benchmark",
    ),
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    folders = {case.id: tmp_path_factory.mktemp(case.id) for case in CASES}
    with RunDir.create(folders["locked-run-dir"] / "run").locked():  # as another run would
        for case in CASES:
            if case.setup is not None:
                case.setup(folders[case.id])
        commands = [
            Command(case.id, folders[case.id], case.args, {}, case.file_size_limit_kb)
            for case in CASES
        ]
        return run_commands(commands, tmp_path_factory.mktemp("logs"))


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_and_writes_nothing_half(case, outcomes):
    outcome = outcomes[case.id]
    assert_one_line_error(outcome, case.message)
    assert_left_as_found(outcome, case.written)


def test_what_a_failed_run_keeps_is_complete(outcomes):
    """The checkpoint before the non-finite step loads; the malicious pickle never ran."""
    run = outcomes["non-finite-loss"].folder / "run"
    _, metadata = load_tensors(run / "checkpoint.safetensors")
    assert (metadata["epoch"], metadata["batch"]) == (0, 1)
    assert not (outcomes["cifar-malicious-pickle"].folder / "executed").exists()
