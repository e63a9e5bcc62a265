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
