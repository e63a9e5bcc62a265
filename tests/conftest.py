import pytest
import torch

from advprune.data import ImageDataset


@pytest.fixture(autouse=True)
def _small_thread_count():
    """Tests run tiny models, where extra threads only add contention on a 2-core machine."""
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
