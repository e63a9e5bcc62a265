"""Downloads from each dataset's canonical URL, checked against its published MD5 sum.

`SOURCES` is the one table of URLs and checksums (the same files and sums torchvision uses). A file
is streamed to a temporary name and only renamed into place once its checksum matches, so a failed
or corrupt download leaves nothing behind; archives are unpacked member by member after checking
that no member could land outside the target folder.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm import tqdm

from advprune.core.errors import DataError
from advprune.core.io import atomic_write
from advprune.core.run_dir import undone_on_failure
from advprune.data.dataset import get_spec

_CHUNK = 1 << 20
_TIMEOUT_S = 60


@dataclass(frozen=True)
class RemoteFile:
    filename: str
    md5: str
    urls: tuple[str, ...]  # mirrors, tried in order


@dataclass(frozen=True)
class Source:
    """The files of one dataset and the folder (under the data directory) they go to.

    Archives (.tar.gz, .zip) are unpacked into that folder and kept, so a second download only
    re-checks their checksum.
    """

    folder: str
    files: tuple[RemoteFile, ...]


def _idx_files(mirrors: tuple[str, ...], md5s: tuple[str, str, str, str]) -> tuple[RemoteFile, ...]:
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
    names += ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    return tuple(
        RemoteFile(name, md5, tuple(mirror + name for mirror in mirrors))
        for name, md5 in zip(names, md5s, strict=True)
    )


_SVHN = "http://ufldl.stanford.edu/housenumbers/"

SOURCES: dict[str, Source] = {
    "mnist": Source(
        "mnist",
        _idx_files(
            ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
            (
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ),
        ),
    ),
    "fashion-mnist": Source(
        "fashion-mnist",
        _idx_files(
            ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
            (
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ),
        ),
    ),
    "cifar10": Source(
        "",
        (
            RemoteFile(
                "cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a",
                ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
            ),
        ),
    ),
    "cifar100": Source(
        "",
        (
            RemoteFile(
                "cifar-100-python.tar.gz",
                "eb9058c3a382ffc7106e4002c42a8d85",
                ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
            ),
        ),
    ),
    "svhn": Source(
        "svhn",
        (
            RemoteFile(
                "train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373", (_SVHN + "train_32x32.mat",)
            ),
            RemoteFile(
                "test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3", (_SVHN + "test_32x32.mat",)
            ),
        ),
    ),
    "tiny-imagenet": Source(
        "",
        (
            RemoteFile(
                "tiny-imagenet-200.zip",
                "90528d7ca1a48142e341f4ef8d21d0de",
                ("http://cs231n.stanford.edu/tiny-imagenet-200.zip",),
            ),
        ),
    ),
}


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stream(url: str, md5: str, folder: Path, tmp: Path) -> None:
    """Write `url` to `tmp`, hashing as it goes; a network error or a wrong sum is a DataError."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response, open(tmp, "wb") as out:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=size,
                unit="B",
                unit_scale=True,
                desc=url.rsplit("/", 1)[-1],
                disable=None,
                leave=False,
            ) as progress:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    progress.update(len(chunk))
    except (
        urllib.error.URLError,
        http.client.HTTPException,
        ConnectionError,
        TimeoutError,
        ValueError,
    ) as err:
        # HTTPError's text carries the status code; a plain URLError's reason is the useful part.
        reason = err.reason if type(err) is urllib.error.URLError else err
        raise DataError(
            f"cannot download {url}: {reason}; download it by hand into {folder}"
        ) from err
    if digest.hexdigest() != md5:
        raise DataError(
            f"{url} does not match its published checksum (MD5 {digest.hexdigest()}, expected "
            f"{md5}): the download is corrupt or the file changed; try again or download it by "
            f"hand into {folder}"
        )


def _fetch(remote: RemoteFile, path: Path) -> None:
    """Download `remote` to `path` from the first mirror that delivers the right bytes."""
    for attempt, url in enumerate(remote.urls, start=1):
        try:
            atomic_write(path, partial(_stream, url, remote.md5, path.parent))
            return
        except DataError:
            if attempt == len(remote.urls):
                raise


def _check_member(name: str, archive: Path, is_regular: bool) -> None:
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts or not is_regular:
        raise DataError(
            f"{archive} holds an unsafe member {name!r} (absolute path, '..' or a link); refusing "
            "to unpack it: delete the archive and download it again"
        )


Opener = Callable[[], AbstractContextManager[BinaryIO]]


def _members(archive: Path) -> Iterator[tuple[str, bool, Opener]]:
    """(name, is folder, open member) for each member, rejecting those that are not safe."""
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                _check_member(info.filename, archive, not is_link)
                yield info.filename, info.is_dir(), partial(zipped.open, info)
    else:
        with tarfile.open(archive, "r:gz") as tarred:
            for member in tarred:
                _check_member(member.name, archive, member.isfile() or member.isdir())
                yield member.name, member.isdir(), partial(tarred.extractfile, member)


def _merge(source: Path, target: Path) -> None:
    """Move the tree `source` into `target`, replacing files that are already there."""
    if source.is_dir() and target.is_dir():
        for child in source.iterdir():
            _merge(child, target / child.name)
    else:
        os.replace(source, target)


def _unpack(archive: Path, target: Path) -> None:
    """Unpack into a staging folder inside `target`, then move the result in, so a rejected or
    interrupted unpack leaves `target` as it was."""
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target))
    try:
        for name, is_dir, open_member in _members(archive):
            destination = staging / name
            if is_dir:
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with open_member() as source, open(destination, "wb") as out:
                shutil.copyfileobj(source, out, _CHUNK)
        for child in staging.iterdir():
            _merge(child, target / child.name)
    except (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(f"cannot unpack {archive}: {err}; delete it and download it again") from err
    except OSError as err:
        raise DataError(
            f"cannot unpack {archive} into {target}: {err}; check free space and permissions"
        ) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download(name: str, data_dir: str | os.PathLike) -> Path:
    """Fetch dataset `name` into `data_dir`, verify every file, unpack archives; returns the
    folder the files went to. Files already there with the right checksum are not fetched again."""
    get_spec(name)
    source = SOURCES[name]
    target = Path(data_dir) / source.folder
    with undone_on_failure(target):  # no network: no empty cache folder left behind
        for remote in source.files:
            path = target / remote.filename
            if not (path.is_file() and md5sum(path) == remote.md5):
                _fetch(remote, path)
            if remote.filename.endswith((".tar.gz", ".zip")):
                _unpack(path, target)
    return target
