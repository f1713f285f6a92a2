"""CIFAR-10 from its binary distribution: download once (checked by SHA-256), read the records.

The archive is ``cifar-10-binary.tar.gz`` (the "binary version" of
https://www.cs.toronto.edu/~kriz/cifar.html), not the Python version, whose batches are pickles:
unpickling runs code from the file, and gpunn never unpickles anything. Inside the archive,
``cifar-10-batches-bin/`` holds ``data_batch_1.bin`` .. ``data_batch_5.bin`` (the 50,000 training
images) and ``test_batch.bin`` (the 10,000 test images). Each is a run of 3073-byte records: one
label byte (0..9), then the 32x32 red, green and blue planes, each row by row.

The archive is read in memory, member by member: nothing is extracted to disk, so no name in it
can point outside the cache folder, and only those six members are read (each must be a regular
file). Setting ``GPUNN_CIFAR10_URL`` to a base URL replaces the built-in mirror.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from pathlib import Path

import numpy as np

from gpunn.datasets.download import DatasetError, cache_root, fetch

__all__ = ["CLASSES", "IMAGE_SHAPE", "cifar10"]

Split = tuple[np.ndarray, np.ndarray]

ARCHIVE = "cifar-10-binary.tar.gz"
#: base URLs tried in order; tests swap these out
MIRRORS: tuple[str, ...] = ("https://www.cs.toronto.edu/~kriz/",)
#: (size in bytes, SHA-256) of the archive, as published by tensorflow_datasets'
#: url_checksums/cifar10.txt for https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz
PINNED: dict[str, tuple[int, str]] = {
    ARCHIVE: (170052171, "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"),
}
URL_ENV = "GPUNN_CIFAR10_URL"
FOLDER = "cifar-10-batches-bin"
TRAIN_MEMBERS = tuple(f"{FOLDER}/data_batch_{i}.bin" for i in range(1, 6))
TEST_MEMBER = f"{FOLDER}/test_batch.bin"
#: one image's shape with ``images=True``: (channels, height, width)
IMAGE_SHAPE = (3, 32, 32)
RECORD_BYTES = 1 + 3 * 32 * 32  # a label byte, then the three colour planes
CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def cifar10(
    cache_dir: str | os.PathLike[str] | None = None, *, images: bool = False
) -> tuple[Split, Split]:
    """CIFAR-10: ((X_train (50000, 3072), y_train (50000,)), (X_test (10000, 3072), y_test)).

    X is float32 in [0, 1] (pixel byte / 255), channel-major: the 1024 red values of an image,
    then its green, then its blue, each plane row by row. ``images=True`` gives X as
    (N, 3, 32, 32), the same numbers. y is int64 in [0, 10), naming :data:`CLASSES`.
    Downloads ~163 MB on first use.
    """
    folder = cache_root(cache_dir) / "cifar10"
    size, sha256 = PINNED[ARCHIVE]
    override = os.environ.get(URL_ENV)
    urls = [base.rstrip("/") + "/" + ARCHIVE for base in ((override,) if override else MIRRORS)]
    path = fetch(ARCHIVE, folder, size, sha256, urls, "CIFAR-10", URL_ENV)
    members = _read_members(path, (*TRAIN_MEMBERS, TEST_MEMBER))
    train = _records(path, [members[name] for name in TRAIN_MEMBERS], TRAIN_MEMBERS)
    test = _records(path, [members[TEST_MEMBER]], (TEST_MEMBER,))
    shape = IMAGE_SHAPE if images else (RECORD_BYTES - 1,)
    return tuple(  # type: ignore[return-value]
        (pixels.reshape(len(pixels), *shape).astype(np.float32) / np.float32(255.0), labels)
        for pixels, labels in (train, test)
    )


def _read_members(path: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """The bytes of the members ``names`` of a .tar.gz archive, read without extracting."""
    wanted = set(names)
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:gz") as archive:
            for member in archive:  # one pass through the compressed stream
                if member.name not in wanted:
                    continue  # anything else in the archive is never read
                if member.name in found:
                    raise DatasetError(f"{path}: the archive holds {member.name} twice")
                if not member.isfile():
                    raise DatasetError(
                        f"{path}: {member.name} is not a regular file in the archive "
                        "(a link or a folder); delete the file and download it again"
                    )
                stream = archive.extractfile(member)
                assert stream is not None  # a regular file always has one
                found[member.name] = stream.read()
    except DatasetError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:  # gzip errors are OSError
        raise DatasetError(
            f"{path}: not a readable .tar.gz archive ({err}); delete it and try again"
        ) from err
    missing = [name for name in names if name not in found]
    if missing:
        raise DatasetError(
            f"{path}: the archive lacks {', '.join(missing)}; is it the binary version of "
            "CIFAR-10 (cifar-10-binary.tar.gz)?"
        )
    return found


def _records(path: Path, blobs: list[bytes], names: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """(pixels (N, 3072) uint8, labels (N,) int64) from runs of 3073-byte records."""
    for blob, name in zip(blobs, names, strict=True):
        if not blob or len(blob) % RECORD_BYTES:
            raise DatasetError(
                f"{path}: {name} holds {len(blob)} bytes, not a whole number of "
                f"{RECORD_BYTES}-byte records (1 label byte + 3072 pixel bytes)"
            )
    table = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = table[:, 0]
    if labels.max() > 9:
        bad = int(np.flatnonzero(labels > 9)[0])
        raise DatasetError(
            f"{path}: record {bad} of {' + '.join(n.rsplit('/', 1)[-1] for n in names)} has "
            f"label {int(labels[bad])}; CIFAR-10 labels are 0..9"
        )
    return table[:, 1:], labels.astype(np.int64)
