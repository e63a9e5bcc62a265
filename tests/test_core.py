import json
import pickle

import pytest
import torch

from advprune.core.errors import AdvpruneError, CheckpointError, ConfigError
from advprune.core.io import atomic_write, atomic_write_json, read_json
from advprune.core.run_dir import LOCK_NAME, RunDir
from advprune.core.tensor_files import load_tensors, save_tensors


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "results.json"
    atomic_write_json(target, {"accuracy": 0.9})

    def failing(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert read_json(target) == {"accuracy": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_unwritable_destination_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(AdvpruneError, match="cannot write"):
        atomic_write_json(blocker / "sub" / "results.json", {})


def test_tensors_and_metadata_round_trip(tmp_path):
    tensors = {"a": torch.arange(6.0).view(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    save_tensors(tmp_path / "t.safetensors", tensors, {"epoch": 3, "history": [{"x": 1.5}]})
    loaded, metadata = load_tensors(tmp_path / "t.safetensors")
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert metadata == {"epoch": 3, "history": [{"x": 1.5}]}


def test_truncated_safetensors_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "t.safetensors"
    save_tensors(path, {"a": torch.zeros(1000)}, {})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_tensors(path)


def test_pickle_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "t.safetensors"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_tensors(path)
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_tensors(path)


def test_read_json_names_the_corrupt_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("{not json")
    with pytest.raises(AdvpruneError, match=r"results\.json is not valid JSON"):
        read_json(path, "results")


def test_run_dir_that_is_a_file_is_a_config_error(tmp_path):
    path = tmp_path / "run"
    path.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        RunDir.create(path)
    with pytest.raises(ConfigError, match="does not exist"):
        RunDir.existing(tmp_path / "missing")


def test_atomic_files_get_ordinary_permissions(tmp_path):
    import os

    path = atomic_write_json(tmp_path / "results.json", {})
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_safetensors_files_get_ordinary_permissions_too(tmp_path):
    """safetensors replaces the temporary file it is given, so the mode is set after writing."""
    import os

    path = save_tensors(tmp_path / "t.safetensors", {"a": torch.zeros(2)}, {})
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_run_directory_admits_one_writer_and_a_dead_ones_lock_is_no_obstacle(tmp_path):
    import os

    run = RunDir.create(tmp_path / "run")
    with (
        run.locked(),
        pytest.raises(ConfigError, match=f"is in use by process {os.getpid()} on "),
        run.locked(),
    ):
        pass
    assert not (run.path / LOCK_NAME).exists()  # released and removed
    (run.path / LOCK_NAME).write_text('{"pid": 1}')  # what a killed run leaves: a file, no lock
    with run.locked():
        assert (run.path / LOCK_NAME).exists()


def test_every_generator_state_round_trips():
    import random

    import numpy as np

    from advprune.core.seeding import rng_state, seed_everything, set_rng_state

    seed_everything(11)
    tensors, scalars = rng_state(torch.device("cpu"))
    first = (torch.rand(3), random.random(), np.random.rand(), np.random.randn())
    json.dumps(scalars)  # the scalars travel in a JSON header
    set_rng_state(tensors, scalars, torch.device("cpu"))
    assert (torch.rand(3), random.random(), np.random.rand(), np.random.randn())[1:] == first[1:]
    set_rng_state(tensors, scalars, torch.device("cpu"))
    assert torch.equal(torch.rand(3), first[0])


def test_the_command_line_allocator_settings_are_taken_on_glibc():
    import platform

    from advprune.core.device import keep_freed_host_memory

    taken = keep_freed_host_memory()
    assert isinstance(taken, bool)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert taken  # page-fault savings are measured in docs/benchmarks.md, not here


def test_the_command_line_flushes_subnormal_floats_to_zero():
    from advprune.cli import main

    torch.set_flush_denormal(False)
    subnormal = torch.tensor([1e-39])
    assert (subnormal * 1.0).item() != 0.0
    assert main(["list", "models"]) == 0  # any command
    assert (subnormal * 1.0).item() == 0.0  # ANP-VS's saturated gates ran ~1.5× slower without
