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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """`tiny_run(name, seed=0)`: the run directory of a PGD-AT LeNet-300-100 trained for one
    epoch on 1,024 Fashion-MNIST images (ε 0.1), made once per name for the whole session."""
    from advprune.training import TrainConfig, train

    made = {}

    def make(name: str, seed: int = 0):
        if name not in made:
            path = tmp_path_factory.mktemp(name)
            config = TrainConfig(
                dataset="fashion-mnist",
                model="lenet300-100",
                objective="pgd-at",
                eps=0.1,
                attack_steps=3,
                epochs=1,
                batch_size=64,
                optimizer="adam",
                lr=1e-3,
                limit_train=1024,
                limit_test=64,
                monitor_examples=0,
                seed=seed,
            )
            train(config, str(path), progress=False, log=lambda _: None)
            made[name] = path
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
