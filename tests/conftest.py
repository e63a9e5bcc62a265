import os
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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """`tiny_run(name, seed=0)`: the run directory of a PGD-AT LeNet-300-100 trained for one
    epoch on 1,024 Fashion-MNIST images (ε 0.1), made once per name for the whole session."""
    made = {}

    def make(name: str, seed: int = 0):
        if name not in made:
            path = tmp_path_factory.mktemp(name)
            made[name] = train_tiny(path, attack_steps=3, limit_train=1024, seed=seed)
        return made[name]

    return make


@pytest.fixture(scope="session")
def robust_mlp():
    """A PGD-AT-like LeNet-300-100 (ε 0.1, PGD-3, 8 epochs on 2,000 Fashion-MNIST images, about
    5 s) and the first 100 test images as float tensors: the normal model every attack-failure
    indicator must pass on."""
    import torch.nn.functional as F

    from advprune.attacks import pgd
    from advprune.data import load_dataset
    from advprune.models import create_model

    train_set = load_dataset("fashion-mnist", "train", limit=2000)
    test_set = load_dataset("fashion-mnist", "test", limit=100)
    torch.manual_seed(0)
    model = create_model("lenet300-100", 10, 1, image_size=28)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = train_set.images.float() / 255, train_set.labels
    generator = torch.Generator().manual_seed(0)
    for _ in range(8):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 100):
            batch = order[start : start + 100]
            x_adv = pgd(model, x[batch], y[batch], 0.1, steps=3, generator=generator)
            optimizer.zero_grad()
            F.cross_entropy(model(x_adv), y[batch]).backward()
            optimizer.step()
    return model.eval(), test_set.images.float() / 255, test_set.labels


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real single-node Slurm cluster (tests/slurm_cluster.py) for the session, SLURM_CONF set
    to it; skipped, with the reason, where it cannot start (not root, Slurm not installed)."""
    import slurm_cluster

    reason = slurm_cluster.unavailable()
    if reason:
        pytest.skip(reason)
    previous = os.environ.get("SLURM_CONF")
    cluster = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous


class SmallCNN(torch.nn.Module):
    """A user's own network (conv-BN-ReLU twice, one linear head) for a method's Python-API
    test; 1×28×28 images, 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(4),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def tiny_data():
    """The first 256 Fashion-MNIST training images as float tensors in [0, 1], with labels."""
    from advprune.data import load_dataset

    train = load_dataset("fashion-mnist", "train", limit=256)
    return train.images.float() / 255, train.labels
