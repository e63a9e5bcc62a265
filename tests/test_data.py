"""advprune.data: readers on small files written in the real formats, downloads, the loader."""

import io
import os
import pickle
import struct
import tarfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from advprune.core.errors import ConfigError, DataError
from advprune.data import (
    DATASETS,
    BatchLoader,
    DatasetSpec,
    ImageDataset,
    dataset_names,
    download,
    downloads,
    get_spec,
    image_folder_spec,
    load_dataset,
)
from advprune.data.downloads import RemoteFile, Source, md5sum
from advprune.data.loader import crop_and_flip
from dataset_files import (
    cifar_rows,
    make_tiny_imagenet,
    write_cifar_batch,
    write_idx,
    write_idx_split,
    write_image_folder,
    write_svhn_split,
)

# ---------------------------------------------------------------------------------------- specs


def test_registry_holds_the_six_datasets_with_their_published_budgets():
    assert set(DATASETS) == {
        "mnist",
        "fashion-mnist",
        "cifar10",
        "cifar100",
        "svhn",
        "tiny-imagenet",
    }
    assert get_spec("mnist").default_eps == 0.3
    assert get_spec("fashion-mnist").default_eps == 0.1
    assert get_spec("cifar10").default_eps == pytest.approx(8 / 255)
    assert get_spec("svhn").crop_padding == 4 and not get_spec("svhn").flip
    tiny = get_spec("tiny-imagenet")
    assert (tiny.num_classes, tiny.image_size, tiny.in_channels) == (200, 64, 3)
    for spec in DATASETS.values():
        assert len(spec.mean) == len(spec.std) == spec.in_channels


def test_unknown_dataset_name_lists_the_known_ones(tmp_path):
    for call in (lambda: get_spec("imagenet"), lambda: load_dataset("imagenet", "train", tmp_path)):
        with pytest.raises(DataError, match=r"unknown dataset 'imagenet'.*cifar10"):
            call()
    with pytest.raises(DataError, match="unknown dataset"):
        download("imagenet", tmp_path)


def test_take_and_to():
    data = ImageDataset("x", torch.zeros(5, 1, 2, 2, dtype=torch.uint8), torch.arange(5), 5)
    assert len(data.take(3)) == 3 and data.take(3).labels.tolist() == [0, 1, 2]
    assert len(data.take(None)) == len(data.take(99)) == 5
    assert data.to("cpu").images.device.type == "cpu"
    with pytest.raises(DataError, match="positive"):
        data.take(0)


def test_image_dataset_takes_uint8_or_float_images_in_0_1_and_nothing_else():
    labels = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(DataError, match="uint8 or float32"):
        ImageDataset("x", torch.zeros(2, 1, 2, 2, dtype=torch.float64), labels, 2)
    with pytest.raises(DataError, match=r"must be in \[0, 1\]"):
        ImageDataset.from_tensors(torch.full((2, 1, 2, 2), 255.0), labels)
    floats = ImageDataset.from_tensors(torch.rand(2, 2, 2), torch.tensor([0, 3]))
    assert floats.images.shape == (2, 1, 2, 2) and floats.num_classes == 4
    x, _ = next(BatchLoader(floats, None, 2, shuffle=False, augment=False).epoch(0))
    assert torch.equal(x, floats.images)  # float images are used as they are


# ------------------------------------------------------------------------------------------ IDX


@pytest.fixture
def digits():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (7, 28, 28), dtype=np.uint8), np.arange(7, dtype=np.uint8) % 10


@pytest.mark.parametrize(
    ("name", "subfolder", "gz"),
    [("mnist", "MNIST/raw", False), ("mnist", "", True), ("fashion-mnist", "fashion-mnist", True)],
)
def test_idx_round_trip(tmp_path, digits, name, subfolder, gz):
    images, labels = digits
    write_idx_split(tmp_path / subfolder, "t10k", images, labels, gz)
    data = load_dataset(name, "test", data_dir=tmp_path)
    assert data.images.shape == (7, 1, 28, 28) and data.images.dtype == torch.uint8
    assert torch.equal(data.images[:, 0], torch.from_numpy(images))
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == labels.tolist()
    assert data.num_classes == 10 and data.name == name
    assert load_dataset(name, "test", data_dir=tmp_path, limit=3).labels.tolist() == [0, 1, 2]


def test_idx_wrong_magic_names_the_file(tmp_path, digits):
    images, labels = digits
    write_idx_split(tmp_path, "train", images, labels, gz=False)
    bad = write_idx(tmp_path / "train-labels-idx1-ubyte", 0x803, labels.shape, labels.tobytes())
    with pytest.raises(DataError, match=f"{bad}.*magic number 0x00000803, expected 0x00000801"):
        load_dataset("mnist", "train", data_dir=tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_is_a_data_error(tmp_path, digits, gz):
    images, labels = digits
    write_idx_split(tmp_path, "train", images, labels, gz)
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    write_idx(path, 0x803, images.shape, images.tobytes()[:-100])
    with pytest.raises(DataError, match=f"{path} is truncated"):
        load_dataset("mnist", "train", data_dir=tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_absurd_declared_size_fails_fast_without_allocating(tmp_path, gz):
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    write_idx(path, 0x803, (10**9, 28, 28), bytes(84))
    write_idx(tmp_path / "train-labels-idx1-ubyte", 0x801, (10**9,), bytes(84))
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(DataError, match=f"{path} is truncated"):
        load_dataset("mnist", "train", data_dir=tmp_path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - started < 2
    assert peak < 10 * 2**20


def test_idx_trailing_bytes_and_count_mismatch(tmp_path, digits):
    images, labels = digits
    write_idx_split(tmp_path, "train", images, labels, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", 0x801, (6,), labels.tobytes()[:6])
    with pytest.raises(DataError, match=r"holds 7 images but .* holds 6 labels"):
        load_dataset("mnist", "train", data_dir=tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", 0x801, (7,), labels.tobytes() + b"\0")
    with pytest.raises(DataError, match="more bytes than its header declares"):
        load_dataset("mnist", "train", data_dir=tmp_path)


def test_labels_outside_the_classes_are_refused(tmp_path, digits):
    images, labels = digits
    write_idx_split(tmp_path, "train", images, labels + 5, gz=False)
    with pytest.raises(DataError, match=r"range over \[5, 11\].*mnist has 10 classes"):
        load_dataset("mnist", "train", data_dir=tmp_path)


# ---------------------------------------------------------------------------------------- CIFAR


def test_cifar10_round_trip_and_pixel_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    rows = [cifar_rows(2, seed) for seed in range(6)]
    for i in range(5):
        write_cifar_batch(folder / f"data_batch_{i + 1}", rows[i], [i, 9 - i], b"labels")
    write_cifar_batch(folder / "test_batch", rows[5], [3, 4], b"labels")

    train = load_dataset("cifar10", "train", data_dir=tmp_path)
    assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5]
    # A row holds 1024 red, 1024 green, then 1024 blue values, each plane row-major.
    first = rows[0][0]
    assert train.images[0, 1, 2, 5] == first[1024 + 2 * 32 + 5]
    assert torch.equal(train.images[2:4].reshape(2, -1), torch.from_numpy(rows[1]))
    test = load_dataset("cifar10", "test", data_dir=tmp_path)
    assert test.labels.tolist() == [3, 4] and torch.equal(
        test.images.reshape(2, -1), torch.from_numpy(rows[5])
    )

    # With a limit, only the batches needed are read: a broken third batch is never opened.
    (folder / "data_batch_3").write_bytes(b"garbage")
    assert load_dataset("cifar10", "train", data_dir=tmp_path, limit=3).labels.tolist() == [0, 9, 1]
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", "train", data_dir=tmp_path)


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    write_cifar_batch(folder / "train", cifar_rows(3, 0), [99, 0, 42], b"fine_labels")
    write_cifar_batch(folder / "test", cifar_rows(1, 1), [7], b"fine_labels")
    train = load_dataset("cifar100", "train", data_dir=tmp_path)
    assert train.labels.tolist() == [99, 0, 42] and train.num_classes == 100
    assert len(load_dataset("cifar100", "test", data_dir=tmp_path)) == 1


def python2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as the official files hold it: Python 2 + numpy 1.x, strings as BINSTRING, the
    array rebuilt by numpy.core.multiarray._reconstruct (Python 3 cannot write this itself)."""

    def string(raw: bytes) -> bytes:
        short = len(raw) < 256
        return (b"U" + bytes([len(raw)]) if short else b"T" + struct.pack("<i", len(raw))) + raw

    def integer(n: int) -> bytes:
        return b"J" + struct.pack("<i", n)

    dtype = b"cnumpy\ndtype\n" + string(b"u1") + integer(0) + integer(1) + b"\x87R("
    dtype += integer(3) + string(b"|") + b"NNN" + integer(-1) + integer(-1) + integer(0) + b"tb"
    array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
    array += integer(0) + b"\x85" + string(b"b") + b"\x87R(" + integer(1)
    array += integer(data.shape[0]) + integer(data.shape[1]) + b"\x86" + dtype + b"\x89"
    array += string(data.tobytes()) + b"tb"
    label_list = b"](" + b"".join(integer(label) for label in labels) + b"e"
    return b"\x80\x02}(" + string(b"data") + array + string(b"labels") + label_list + b"u."


def test_cifar_batch_written_by_python2_is_read(tmp_path):
    rows = cifar_rows(3, 0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(python2_cifar_pickle(rows, [5, 0, 9]))
    data = load_dataset("cifar10", "test", data_dir=tmp_path)
    assert data.labels.tolist() == [5, 0, 9]
    assert torch.equal(data.images.reshape(3, -1), torch.from_numpy(rows))


class RunsCommand:
    """Unpickling this would run a shell command: the classic malicious pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickle_with_forbidden_global_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "executed"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {b"data": cifar_rows(1, 0), b"labels": [0], b"payload": RunsCommand(marker)}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(
        DataError, match=r"refusing to unpickle \w+\.system from .*test_batch: not a CIFAR batch"
    ):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    assert not marker.exists()


class HugeArray:
    def __reduce__(self):
        reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
        return (reconstruct, (np.ndarray, (10**12,), b"b"))


def test_cifar_pickle_cannot_request_a_huge_array(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": HugeArray()}, protocol=2))
    with pytest.raises(DataError, match="unexpected array reconstruction"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


def test_cifar_batch_with_wrong_shape_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_batch(folder / "test_batch", cifar_rows(2, 0)[:, :100], [0, 1], b"labels")
    with pytest.raises(DataError, match="is not a CIFAR batch"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    write_cifar_batch(folder / "test_batch", cifar_rows(2, 0), [0], b"labels")
    with pytest.raises(DataError, match="is not a CIFAR batch"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


# ----------------------------------------------------------------------------------------- SVHN


def test_svhn_round_trip_maps_label_10_to_0(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    y = np.array([[10], [1], [9], [10]], dtype=np.uint8)
    write_svhn_split(tmp_path / "svhn", "test", x, y)
    data = load_dataset("svhn", "test", data_dir=tmp_path)
    assert data.images.shape == (4, 3, 32, 32) and data.images.is_contiguous()
    assert data.labels.tolist() == [0, 1, 9, 0]
    assert data.images[2, 1, 3, 4] == x[3, 4, 1, 2]
    assert load_dataset("svhn", "test", data_dir=tmp_path, limit=2).labels.tolist() == [0, 1]


def test_svhn_corrupt_file_is_a_data_error(tmp_path):
    (tmp_path / "train_32x32.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(DataError, match=r"train_32x32\.mat"):
        load_dataset("svhn", "train", data_dir=tmp_path)


# ---------------------------------------------------------------------------------- Tiny-ImageNet


def test_tiny_imagenet_round_trip(tmp_path):
    make_tiny_imagenet(tmp_path)
    train = load_dataset("tiny-imagenet", "train", data_dir=tmp_path)
    assert train.images.shape == (4, 3, 64, 64) and train.num_classes == 200
    assert train.labels.tolist() == [0, 0, 1, 1]  # sorted wnids: n01 is class 0
    mean_colour = train.images.float().mean(dim=(2, 3))
    assert torch.allclose(mean_colour[0], torch.tensor([20.0, 40, 220]), atol=4)
    assert torch.allclose(mean_colour[3], torch.tensor([200.0, 30, 30]), atol=4)
    test = load_dataset("tiny-imagenet", "test", data_dir=tmp_path)
    assert test.labels.tolist() == [1, 0]
    assert torch.allclose(test.images[1].float().mean(dim=(1, 2)), torch.full((3,), 128.0), atol=2)
    assert load_dataset("tiny-imagenet", "train", data_dir=tmp_path, limit=1).labels.tolist() == [0]


def test_tiny_imagenet_wrong_size_image(tmp_path):
    folder = make_tiny_imagenet(tmp_path)
    Image.new("RGB", (32, 32)).save(folder / "val/images/val_0.JPEG")
    with pytest.raises(DataError, match=r"val_0\.JPEG is 32x32, not 64x64"):
        load_dataset("tiny-imagenet", "test", data_dir=tmp_path)


# ------------------------------------------------------------------------------- missing files


def test_missing_files_name_the_paths_and_the_fix(tmp_path, monkeypatch):
    with pytest.raises(DataError) as caught:
        load_dataset("cifar10", "train", data_dir=tmp_path)
    message = str(caught.value)
    assert "data_batch_1" in message and str(tmp_path / "cifar-10-batches-py") in message
    assert "pass --data-dir DIR or --download" in message and "\n" not in message

    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError, match=r"\.cache/advprune/datasets.*--data-dir DIR or --download"):
        load_dataset("svhn", "test")
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "train", data_dir=tmp_path)


def test_invalid_split_and_limit(tmp_path):
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_dataset("mnist", "val", data_dir=tmp_path)
    with pytest.raises(DataError, match="positive"):
        load_dataset("mnist", "train", data_dir=tmp_path, limit=-1)


# -------------------------------------------------------------------------------- image folder


def test_image_folder_reads_each_split_as_uint8_with_class_names(tmp_path):
    root = write_image_folder(tmp_path / "images", size=12)
    train = load_dataset("imagefolder", "train", data_dir=root)
    test = load_dataset("imagefolder", "test", data_dir=root)
    assert train.images.dtype == torch.uint8 and train.images.shape == (72, 3, 12, 12)
    assert len(test) == 24 and train.class_names == test.class_names == ("cat", "dog", "emu")
    assert train.num_classes == 3 and torch.bincount(train.labels).tolist() == [24, 24, 24]
    # label k was written brighter in channel k: labels follow the sorted folder names
    for label in range(3):
        means = train.images[train.labels == label].float().mean((0, 2, 3))
        assert means.argmax().item() == label
    assert train.source == {"dataset": "imagefolder", "data_dir": str(root), "test_fraction": None}
    # a fixed shuffled order: the first N are a sample of every class, the same every time
    first = load_dataset("imagefolder", "train", data_dir=root, limit=12)
    assert len(set(first.labels.tolist())) == 3
    assert torch.equal(first.images, train.images[:12])


def test_image_folder_grey_images_have_one_channel(tmp_path):
    root = write_image_folder(tmp_path / "grey", ("a", "b"), mode="L", size=10)
    train = load_dataset("imagefolder", "train", data_dir=root)
    assert train.images.shape == (48, 1, 10, 10)
    spec = image_folder_spec(train, eps=0.1)
    assert (spec.in_channels, spec.image_size, spec.num_classes) == (1, 10, 2)
    pixels = train.images.double() / 255
    assert spec.mean[0] == pytest.approx(pixels.mean().item())
    assert spec.std[0] == pytest.approx(pixels.std().item(), rel=1e-3)


def test_image_folder_without_test_folder_holds_out_a_fixed_fraction_per_class(tmp_path):
    root = write_image_folder(tmp_path / "images", per_class={"train": 20})
    with pytest.raises(DataError, match=r"no test folder.*--test-fraction 0\.2"):
        load_dataset("imagefolder", "test", data_dir=root)
    train = load_dataset("imagefolder", "train", data_dir=root, test_fraction=0.25)
    test = load_dataset("imagefolder", "test", data_dir=root, test_fraction=0.25)
    assert torch.bincount(test.labels).tolist() == [5, 5, 5] and len(train) == 45
    again = load_dataset("imagefolder", "test", data_dir=root, test_fraction=0.25)
    assert torch.equal(test.images, again.images)
    seen = {bytes(image.numpy()) for image in train.images}
    assert not any(bytes(image.numpy()) in seen for image in test.images)


def test_image_folder_class_folders_directly_under_the_data_dir(tmp_path):
    root = write_image_folder(tmp_path / "images", per_class={"train": 4})
    flat = tmp_path / "flat"
    (root / "train").rename(flat)
    assert load_dataset("imagefolder", "train", data_dir=flat).class_names == ("cat", "dog", "emu")


def test_image_folder_mixed_sizes_or_modes_name_the_file_and_the_fix(tmp_path):
    root = write_image_folder(tmp_path / "images", per_class={"train": 3, "test": 1})
    odd = root / "train" / "dog" / "odd.png"
    Image.new("RGB", (12, 11)).save(odd)
    with pytest.raises(DataError, match=r"odd\.png is 12×11 RGB.*one size and mode.*convert"):
        load_dataset("imagefolder", "train", data_dir=root)
    Image.new("L", (12, 12)).save(odd)
    with pytest.raises(DataError, match=r"odd\.png is 12×12 L, but .* RGB"):
        load_dataset("imagefolder", "train", data_dir=root)
    Image.new("RGBA", (12, 12)).save(odd)
    with pytest.raises(DataError, match=r"odd\.png is a RGBA image; .* L \(grey\) or RGB"):
        load_dataset("imagefolder", "train", data_dir=root)
    odd.write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*odd\.png"):
        load_dataset("imagefolder", "train", data_dir=root)


def test_image_folder_layout_errors_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match="does not exist; pass --data-dir"):
        load_dataset("imagefolder", "train", data_dir=tmp_path / "nowhere")
    with pytest.raises(DataError, match="needs its folder; pass --data-dir"):
        load_dataset("imagefolder", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders; put each class's images"):
        load_dataset("imagefolder", "train", data_dir=tmp_path / "empty")
    root = write_image_folder(tmp_path / "images", per_class={"train": 2, "test": 1})
    (root / "test" / "yak").mkdir()
    Image.new("RGB", (12, 12)).save(root / "test" / "yak" / "0.png")
    with pytest.raises(DataError, match="yak is not a class of the train split"):
        load_dataset("imagefolder", "test", data_dir=root)
    with pytest.raises(DataError, match=r"has a test folder.*drop --test-fraction"):
        load_dataset("imagefolder", "train", data_dir=root, test_fraction=0.2)
    (root / "train" / "empty").mkdir()
    with pytest.raises(DataError, match="empty holds no images"):
        load_dataset("imagefolder", "train", data_dir=root)
    rect = write_image_folder(tmp_path / "rect", per_class={"train": 2})
    for path in rect.rglob("*.png"):
        Image.new("RGB", (12, 10)).save(path)
    with pytest.raises(DataError, match="12×10; advprune's models take square images"):
        image_folder_spec(load_dataset("imagefolder", "train", data_dir=rect), eps=0.1)


def test_every_listed_dataset_name_is_one_the_readers_know():
    """`--help` lists `dataset_names()`; `custom` (tensors given in Python) is not among them."""
    assert set(dataset_names()) == {*DATASETS, "imagefolder"}


# ------------------------------------------------------------------------------------ download


def test_download_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    served = tmp_path / "served.gz"
    served.write_bytes(b"not what was published")
    remote = RemoteFile("train-images-idx3-ubyte.gz", "0" * 32, (served.as_uri(),))
    monkeypatch.setitem(downloads.SOURCES, "mnist", Source("mnist", (remote,)))
    target = tmp_path / "data"
    with pytest.raises(DataError, match="does not match its published checksum"):
        download("mnist", target)
    assert not any(target.rglob("*.gz")) and not any(p.is_file() for p in target.rglob("*"))


def test_download_network_failure_says_where_to_put_the_file(tmp_path, monkeypatch):
    url = (tmp_path / "absent.mat").as_uri()
    remote = RemoteFile("test_32x32.mat", "0" * 32, (url,))
    monkeypatch.setitem(downloads.SOURCES, "svhn", Source("svhn", (remote,)))
    with pytest.raises(DataError, match=f"cannot download {url}: .*download it by hand into"):
        download("svhn", tmp_path / "data")


def test_download_tries_the_next_mirror(tmp_path, monkeypatch, digits):
    images, _ = digits
    served = write_idx(
        tmp_path / "served" / "t10k-images-idx3-ubyte.gz", 0x803, images.shape, images.tobytes()
    )
    urls = ((tmp_path / "absent.gz").as_uri(), served.as_uri())
    remote = RemoteFile(served.name, md5sum(served), urls)
    monkeypatch.setitem(downloads.SOURCES, "mnist", Source("mnist", (remote,)))
    folder = download("mnist", tmp_path / "data")
    assert folder == tmp_path / "data" / "mnist"
    assert (folder / served.name).read_bytes() == served.read_bytes()


def serve_archive(tmp_path: Path, monkeypatch, name: str, members: dict[str, bytes]) -> None:
    """An archive of `members` served from a file:// URL as dataset `name`'s only file."""
    archive = tmp_path / "served" / ("archive.zip" if name == "tiny-imagenet" else "archive.tar.gz")
    archive.parent.mkdir(exist_ok=True)
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zipped:
            for member, content in members.items():
                zipped.writestr(member, content)
    else:
        with tarfile.open(archive, "w:gz") as tarred:
            for member, content in members.items():
                info = tarfile.TarInfo(member)
                info.size = len(content)
                tarred.addfile(info, io.BytesIO(content))
    remote = RemoteFile(archive.name, md5sum(archive), (archive.as_uri(),))
    monkeypatch.setitem(downloads.SOURCES, name, Source("", (remote,)))


def test_load_dataset_downloads_and_unpacks_a_tar_archive(tmp_path, monkeypatch):
    rows = cifar_rows(2, 0)
    buffer = io.BytesIO()
    pickle.dump({b"data": rows, b"labels": [1, 2]}, buffer, protocol=2)
    serve_archive(
        tmp_path, monkeypatch, "cifar10", {"cifar-10-batches-py/test_batch": buffer.getvalue()}
    )
    data_dir = tmp_path / "data"
    data = load_dataset("cifar10", "test", data_dir=data_dir, download=True)
    assert data.labels.tolist() == [1, 2]
    assert sorted(p.name for p in data_dir.iterdir()) == ["archive.tar.gz", "cifar-10-batches-py"]


@pytest.mark.parametrize("member", ["../escaped", "/tmp/escaped", "a/../../escaped"])
@pytest.mark.parametrize("name", ["cifar10", "tiny-imagenet"])
def test_unsafe_archive_members_are_refused(tmp_path, monkeypatch, member, name):
    serve_archive(tmp_path, monkeypatch, name, {"fine.txt": b"ok", member: b"evil"})
    data_dir = tmp_path / "data" / "inner"
    with pytest.raises(DataError, match="unsafe member"):
        download(name, data_dir)
    assert not (tmp_path / "data" / "escaped").exists() and not Path("/tmp/escaped").exists()
    assert not (data_dir / "fine.txt").exists()


def test_tar_links_are_refused(tmp_path, monkeypatch):
    archive = tmp_path / "served.tar.gz"
    with tarfile.open(archive, "w:gz") as tarred:
        link = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tarred.addfile(link)
    remote = RemoteFile(archive.name, md5sum(archive), (archive.as_uri(),))
    monkeypatch.setitem(downloads.SOURCES, "cifar10", Source("", (remote,)))
    with pytest.raises(DataError, match="unsafe member"):
        download("cifar10", tmp_path / "data")


# -------------------------------------------------------------------------------------- loader


def indexed_dataset(n: int, shape=(1, 4, 4)) -> ImageDataset:
    """Example i has label i and every pixel equal to i % 256, so batches reveal their origin."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, *shape).clone()
    return ImageDataset("indexed", images, torch.arange(n), n)


def spec_with(crop_padding: int, flip: bool) -> DatasetSpec:
    return DatasetSpec("test", 10, 1, 4, (0.5,), (0.5,), crop_padding, flip, 0.1)


def test_batches_are_floats_in_unit_range_matching_their_labels():
    loader = BatchLoader(indexed_dataset(10), None, 4, shuffle=True, augment=True, seed=1)
    assert len(loader) == 3
    for x, y in loader.epoch(0):
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (1, 4, 4)
        assert torch.equal(x, (y % 256).float().view(-1, 1, 1, 1).expand_as(x) / 255)


def test_epoch_is_a_function_of_seed_and_epoch_only():
    data = indexed_dataset(50, shape=(1, 8, 8))
    data.images.random_(0, 256, generator=torch.Generator().manual_seed(0))
    make = lambda: BatchLoader(data, spec_with(2, True), 8, shuffle=True, augment=True, seed=3)  # noqa: E731
    first, second = make(), make()
    torch.manual_seed(0)
    list(first.epoch(0))
    a = list(first.epoch(4))
    torch.manual_seed(123)
    b = list(second.epoch(4))
    assert all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True)
    )
    c = list(second.epoch(5))
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in c]))
    other_seed = BatchLoader(data, None, 8, shuffle=True, augment=False, seed=4)
    assert not torch.equal(
        torch.cat([y for _, y in a]), torch.cat([y for _, y in other_seed.epoch(4)])
    )


def test_start_batch_resumes_mid_epoch():
    data = indexed_dataset(30, shape=(1, 6, 6))
    data.images.random_(0, 256, generator=torch.Generator().manual_seed(1))
    loader = BatchLoader(data, spec_with(3, True), 4, shuffle=True, augment=True, seed=7)
    full = list(loader.epoch(2))
    resumed = list(loader.epoch(2, start_batch=5))
    assert len(resumed) == len(full) - 5
    for (xf, yf), (xr, yr) in zip(full[5:], resumed, strict=True):
        assert torch.equal(xf, xr) and torch.equal(yf, yr)
    assert list(loader.epoch(2, start_batch=len(loader))) == []
    with pytest.raises(ConfigError, match="start batch"):
        loader.epoch(2, start_batch=len(loader) + 1)


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_example_once_per_epoch(shuffle):
    loader = BatchLoader(indexed_dataset(23), None, 5, shuffle=shuffle, augment=False)
    labels = torch.cat([y for _, y in loader.epoch(1)])
    assert sorted(labels.tolist()) == list(range(23))
    assert (labels.tolist() == list(range(23))) != shuffle


def test_drop_last_drops_the_incomplete_batch():
    loader = BatchLoader(indexed_dataset(23), None, 5, shuffle=True, augment=False, drop_last=True)
    sizes = [len(y) for _, y in loader.epoch(0)]
    assert len(loader) == 4 and sizes == [5, 5, 5, 5]


def test_ranks_are_disjoint_and_cover_the_data():
    shards = [
        torch.cat(
            [
                y
                for _, y in BatchLoader(
                    indexed_dataset(24),
                    None,
                    3,
                    shuffle=True,
                    augment=False,
                    seed=5,
                    rank=r,
                    world_size=3,
                ).epoch(6)
            ]
        )
        for r in range(3)
    ]
    assert [len(s) for s in shards] == [8, 8, 8]
    assert sorted(torch.cat(shards).tolist()) == list(range(24))


def test_uneven_ranks_pad_by_wrapping_to_equal_length():
    loaders = [
        BatchLoader(indexed_dataset(10), None, 3, shuffle=True, augment=False, rank=r, world_size=4)
        for r in range(4)
    ]
    shards = [torch.cat([y for _, y in loader.epoch(0)]).tolist() for loader in loaders]
    assert [len(loader) for loader in loaders] == [1, 1, 1, 1]
    assert [len(s) for s in shards] == [3, 3, 3, 3]
    everything = [label for shard in shards for label in shard]
    assert set(everything) == set(range(10)) and len(everything) == 12
    with pytest.raises(ConfigError, match="rank 4"):
        BatchLoader(indexed_dataset(10), None, 3, shuffle=True, augment=False, rank=4, world_size=4)


def test_no_augmentation_is_the_identity():
    data = indexed_dataset(12, shape=(3, 5, 5))
    data.images.random_(0, 256, generator=torch.Generator().manual_seed(2))
    expected = data.images.float() / 255
    for spec, augment in ((spec_with(0, False), True), (spec_with(4, True), False), (None, True)):
        loader = BatchLoader(data, spec, 12, shuffle=False, augment=augment)
        ((x, _),) = loader.epoch(3)
        assert torch.equal(x, expected)


def test_flip_mirrors_about_half_of_the_samples():
    data = indexed_dataset(200, shape=(1, 3, 5))
    data.images.random_(0, 256, generator=torch.Generator().manual_seed(3))
    loader = BatchLoader(data, spec_with(0, True), 200, shuffle=False, augment=True)
    ((x, _),) = loader.epoch(0)
    original = data.images.float() / 255
    same = (x == original).flatten(1).all(1)
    flipped = (x == original.flip(3)).flatten(1).all(1)
    assert bool((same | flipped).all()) and 60 < int(flipped.sum()) < 140
    assert torch.equal(
        crop_and_flip(data.images, 0, None, torch.ones(200, dtype=torch.bool)), data.images.flip(3)
    )


def test_crop_equals_a_shifted_copy_with_zeros():
    images = torch.randint(1, 256, (6, 2, 5, 7), dtype=torch.uint8)
    offsets = torch.tensor([[0, 0], [4, 4], [2, 2], [0, 3], [1, 4], [4, 0]])
    flips = torch.tensor([False, False, True, False, True, False])
    out = crop_and_flip(images, 2, offsets, flips)
    padded = F.pad(images, (2, 2, 2, 2))
    for i, (dy, dx) in enumerate(offsets.tolist()):
        expected = padded[i, :, dy : dy + 5, dx : dx + 7]
        assert torch.equal(out[i], expected.flip(2) if flips[i] else expected)
    assert torch.equal(out[2], images[2].flip(2))  # centred window: no shift
    assert (out[1, :, -2:, :] == 0).all() and (out[1, :, :, -2:] == 0).all()


def test_loader_crops_each_sample_with_its_own_offset():
    data = indexed_dataset(64, shape=(1, 6, 6))
    data.images.random_(1, 256, generator=torch.Generator().manual_seed(4))
    loader = BatchLoader(data, spec_with(2, False), 64, shuffle=False, augment=True, seed=9)
    ((x, _),) = loader.epoch(0)
    padded = F.pad(data.images, (2, 2, 2, 2)).float() / 255
    found = set()
    for i in range(64):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(x[i], padded[i, :, dy : dy + 6, dx : dx + 6])
        ]
        assert matches, f"sample {i} is not a shifted copy of its input"
        found.add(matches[0])
    assert len(found) > 10


# ---------------------------------------------------------------------------- real Fashion-MNIST


def test_real_fashion_mnist_from_the_debian_package():
    # Installed by the Makefile (apt-get install -y dataset-fashion-mnist): missing is a failure.
    assert Path("/usr/share/datasets/fashion-mnist").is_dir()
    data = load_dataset("fashion-mnist", "test", limit=100)
    assert data.images.shape == (100, 1, 28, 28) and data.images.dtype == torch.uint8
    assert int(data.labels.min()) >= 0 and int(data.labels.max()) < 10
    assert data.labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    full = load_dataset("fashion-mnist", "test")
    assert full.labels.bincount().tolist() == [1000] * 10
