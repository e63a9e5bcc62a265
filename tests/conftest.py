from pathlib import Path

import pytest
import torch

from advprune.data import ImageDataset


@pytest.fixture(autouse=True, scope="session")
def _small_thread_count():
    """Tests run tiny models, where extra threads only add contention on a 2-core machine.

    Session-wide, so that module fixtures (built before any function fixture) run with the same
    thread count as the tests: a run resumed in a test must add up its floats in the same order
    as the uninterrupted run a fixture made, or the two differ in the last bits.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fashion_slice():
    """The first examples of the real Fashion-MNIST (installed by `make install`)."""
    from advprune.data import load_dataset

    def load(split: str, limit: int) -> ImageDataset:
        return load_dataset("fashion-mnist", split, limit=limit)

    return load


# The tiny PGD-AT run most end-to-end tests start from: LeNet-300-100 on 512 Fashion-MNIST
# images, one epoch of PGD-2 (about a second on one CPU thread).
TINY_TRAINING = dict(
    dataset="fashion-mnist",
    model="lenet300-100",
    objective="pgd-at",
    eps=0.1,
    attack_steps=2,
    epochs=1,
    batch_size=64,
    optimizer="adam",
    lr=1e-3,
    limit_train=512,
    limit_test=64,
    monitor_examples=0,
)


def quiet(_: str) -> None:
    """A `log` that prints nothing."""


def tiny_config(**overrides):
    from advprune.training import TrainConfig

    return TrainConfig.from_dict({**TINY_TRAINING, **overrides})


def train_tiny(run_dir, **overrides):
    """Train the tiny run into `run_dir` (with `overrides`) and return `run_dir`."""
    from advprune.training import train

    train(tiny_config(**overrides), str(run_dir), progress=False, log=quiet)
    return run_dir


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    """The tiny PGD-AT run, trained once per test module."""
    return train_tiny(tmp_path_factory.mktemp("dense"))


def prune_tiny(dense_run, run_dir, method: str, log=quiet, **settings):
    """Prune `dense_run` with `method` into `run_dir`; flat settings of either kind (generic
    or the method's own), a cache under run_dir's parent. Tiny budgets can leave a pruned network
    at chance after one epoch: these runs go on (allow_chance) unless told otherwise."""
    from advprune.methods import PruneSettings, get_method
    from advprune.pipelines import prune_run

    cls = get_method(method)
    generic = {k: v for k, v in settings.items() if k in PruneSettings.field_names()}
    own = {k: v for k, v in settings.items() if k not in generic}
    generic.setdefault("cache_dir", str(Path(run_dir).parent / "cache"))
    generic.setdefault("allow_chance", True)
    prune = PruneSettings.from_dict({"method": method, "from_run": str(dense_run), **generic})
    method_object = cls(cls.Settings.from_dict(own))
    return prune_run(prune, method_object, run_dir, progress=False, log=log)
