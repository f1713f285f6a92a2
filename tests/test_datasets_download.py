"""Tests for the MNIST / Fashion-MNIST / CIFAR-10 download, verify, cache and parse path.

A stdlib HTTP server on 127.0.0.1 serves small IDX files and a small CIFAR-10 archive in the
exact binary format, generated here, and the pinned sizes and checksums are patched to match
them; the real internet is never used.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from gpunn.datasets import DatasetError, cache_root, cifar10, fashion_mnist, mnist
from gpunn.datasets import cifar as cifar_module
from gpunn.datasets import idx as idx_module

NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _idx(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    """Raw IDX bytes: magic 00 00 <type> <rank>, big-endian dims, then the data."""
    header = bytes([0, 0, type_code, arr.ndim])
    dims = b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + dims + arr.astype(np.uint8).tobytes()


def _gz(raw: bytes) -> bytes:
    return gzip.compress(raw, mtime=0)


def _make_files(seed: int = 0, n_train: int = 20, n_test: int = 8):
    """Gzipped IDX files (name -> bytes) and the arrays they hold."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays["train-images-idx3-ubyte.gz"][0, 0, :2] = (0, 255)  # make sure both ends occur
    return {name: _gz(_idx(a)) for name, a in arrays.items()}, arrays


class _Server:
    """Serves routes path -> (body, declared Content-Length); counts every request."""

    def __init__(self):
        self.routes: dict[str, tuple[bytes, int]] = {}
        self.requests: list[str] = []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                state.requests.append(self.path)
                if self.path not in state.routes:
                    self.send_error(404)
                    return
                body, declared = state.routes[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(declared))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # A short poll interval keeps shutdown() from adding half a second to every test.
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def serve(self, prefix: str, files: dict[str, bytes]) -> str:
        """Publish files under /prefix/ and return that base URL."""
        for name, body in files.items():
            self.routes[f"/{prefix}/{name}"] = (body, len(body))
        return f"{self.base}/{prefix}/"


@pytest.fixture
def server():
    srv = _Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _refused_url() -> str:
    """A base URL on a local port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Cache in tmp_path, no proxies, and mirrors that can only reach this machine."""
    monkeypatch.setenv("GPUNN_DATA", str(tmp_path / "cache"))
    for var in ("GPUNN_MNIST_URL", "GPUNN_FASHION_MNIST_URL", "GPUNN_CIFAR10_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    refused = _refused_url()
    for dataset in ("mnist", "fashion_mnist"):
        monkeypatch.setitem(idx_module.MIRRORS, dataset, (refused,))
    monkeypatch.setattr(cifar_module, "MIRRORS", (refused,))
    return tmp_path / "cache"


def _pin(monkeypatch, files: dict[str, bytes], dataset: str = "mnist", **overrides):
    """Patch the expected (size, SHA-256) of each file to those of ``files``."""
    pins = {name: (len(body), hashlib.sha256(body).hexdigest()) for name, body in files.items()}
    pins.update(overrides)
    monkeypatch.setitem(idx_module.FILES, dataset, pins)


def _mirrors(monkeypatch, *bases: str, dataset: str = "mnist"):
    monkeypatch.setitem(idx_module.MIRRORS, dataset, tuple(bases))


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------- success and caching


def test_download_parse_and_cache(server, monkeypatch, isolated):
    files, arrays = _make_files()
    _pin(monkeypatch, files)
    _mirrors(monkeypatch, server.serve("m", files))

    (X_tr, y_tr), (X_te, y_te) = mnist()
    assert X_tr.shape == (20, 784) and X_tr.dtype == np.float32
    assert X_te.shape == (8, 784) and y_te.shape == (8,)
    assert y_tr.dtype == np.int64 and y_te.dtype == np.int64
    expected = arrays["train-images-idx3-ubyte.gz"].reshape(20, 784) / np.float32(255)
    np.testing.assert_array_equal(X_tr, expected)
    assert X_tr.min() == 0.0 and X_tr.max() == 1.0
    np.testing.assert_array_equal(y_tr, arrays["train-labels-idx1-ubyte.gz"])
    np.testing.assert_array_equal(y_te, arrays["t10k-labels-idx1-ubyte.gz"])
    assert len(server.requests) == 4
    assert _leftovers(isolated / "mnist") == sorted(NAMES)

    (X_again, _), _ = mnist()
    assert len(server.requests) == 4, "second call must be served from the cache"
    np.testing.assert_array_equal(X_again, X_tr)

    (X_img, y_img), (X_img_te, _) = mnist(images=True)
    assert X_img.shape == (20, 1, 28, 28) and X_img_te.shape == (8, 1, 28, 28)
    assert X_img.dtype == np.float32
    # pixel (row r, column c) of image i is the IDX byte [i, r, c] / 255
    pixels = arrays["train-images-idx3-ubyte.gz"]
    np.testing.assert_array_equal(X_img[:, 0], pixels / np.float32(255))
    np.testing.assert_array_equal(X_img.reshape(20, -1), X_tr)
    np.testing.assert_array_equal(y_img, y_tr)
    assert len(server.requests) == 4


def test_fashion_mnist_has_its_own_cache_folder(server, monkeypatch, isolated):
    digits_files, _ = _make_files(seed=1)
    fashion_files, fashion_arrays = _make_files(seed=2, n_train=12, n_test=4)
    _pin(monkeypatch, digits_files)
    _pin(monkeypatch, fashion_files, dataset="fashion_mnist")
    _mirrors(monkeypatch, server.serve("m", digits_files))
    _mirrors(monkeypatch, server.serve("f", fashion_files), dataset="fashion_mnist")

    mnist()
    (X_tr, y_tr), (X_te, _) = fashion_mnist()
    assert X_tr.shape == (12, 784) and X_te.shape == (4, 784)
    assert fashion_mnist(images=True)[1][0].shape == (4, 1, 28, 28)
    np.testing.assert_array_equal(y_tr, fashion_arrays["train-labels-idx1-ubyte.gz"])
    assert _leftovers(isolated / "fashion_mnist") == sorted(NAMES)
    assert _leftovers(isolated / "mnist") == sorted(NAMES)


def test_second_mirror_used_when_first_gives_404(server, monkeypatch, isolated):
    files, arrays = _make_files()
    _pin(monkeypatch, files)
    good = server.serve("good", files)
    _mirrors(monkeypatch, f"{server.base}/missing/", good)

    (_, y_tr), _ = mnist()
    np.testing.assert_array_equal(y_tr, arrays["train-labels-idx1-ubyte.gz"])
    assert server.requests[:2] == [
        "/missing/train-images-idx3-ubyte.gz",
        "/good/train-images-idx3-ubyte.gz",
    ]
    assert _leftovers(isolated / "mnist") == sorted(NAMES)


def test_url_env_var_replaces_mirrors(server, monkeypatch):
    files, _ = _make_files()
    _pin(monkeypatch, files)
    monkeypatch.setenv("GPUNN_MNIST_URL", server.serve("local", files).rstrip("/"))
    mnist()
    assert server.requests == [f"/local/{name}" for name in NAMES]


def test_cache_dir_argument_wins(server, monkeypatch, tmp_path, isolated):
    files, _ = _make_files()
    _pin(monkeypatch, files)
    _mirrors(monkeypatch, server.serve("m", files))
    mnist(cache_dir=tmp_path / "elsewhere")
    assert _leftovers(tmp_path / "elsewhere" / "mnist") == sorted(NAMES)
    assert _leftovers(isolated) == []


def test_cache_root_fallbacks(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUNN_DATA", str(tmp_path / "d"))
    assert cache_root() == tmp_path / "d"
    assert cache_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("GPUNN_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("LOCALAPPDATA", raising=False)
    assert cache_root() == tmp_path / "xdg" / "gpunn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "gpunn"


def test_corrupt_cached_file_is_downloaded_again(server, monkeypatch, isolated):
    files, _ = _make_files()
    _pin(monkeypatch, files)
    _mirrors(monkeypatch, server.serve("m", files))
    folder = isolated / "mnist"
    folder.mkdir(parents=True)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"bit rot")
    mnist()
    assert (folder / "train-labels-idx1-ubyte.gz").read_bytes() == files[NAMES[1]]
    assert len(server.requests) == 4


# ---------------------------------------------------------------- failures


def _check_failure_message(message: str, name: str, folder) -> None:
    """The message names the file, where to get it and where to put it."""
    assert name in message
    assert "download" in message and f"/{name}" in message
    assert str(folder) in message
    assert "GPUNN_DATA" in message


def test_checksum_mismatch_fails_and_caches_nothing(server, monkeypatch, isolated):
    files, _ = _make_files()
    size = len(files[NAMES[0]])
    _pin(monkeypatch, files, **{NAMES[0]: (size, "0" * 64)})
    _mirrors(monkeypatch, server.serve("m", files))

    with pytest.raises(DatasetError) as info:
        mnist()
    assert isinstance(info.value, OSError)
    message = str(info.value)
    _check_failure_message(message, NAMES[0], isolated / "mnist")
    assert "SHA-256 mismatch" in message and hashlib.sha256(files[NAMES[0]]).hexdigest() in message
    assert _leftovers(isolated / "mnist") == []


def test_content_length_lie_is_a_truncated_download(server, monkeypatch, isolated):
    files, _ = _make_files()
    _pin(monkeypatch, files)
    base = server.serve("m", files)
    body = files[NAMES[0]]
    server.routes[f"/m/{NAMES[0]}"] = (body[: len(body) // 2], len(body))
    _mirrors(monkeypatch, base)

    with pytest.raises(DatasetError) as info:
        mnist()
    message = str(info.value)
    _check_failure_message(message, NAMES[0], isolated / "mnist")
    assert f"of {len(body)} bytes" in message
    assert _leftovers(isolated / "mnist") == []


def test_oversized_download_is_rejected(server, monkeypatch, isolated):
    files, _ = _make_files()
    _pin(monkeypatch, files)
    base = server.serve("m", files)
    body = files[NAMES[0]] + b"extra bytes"
    server.routes[f"/m/{NAMES[0]}"] = (body, len(body))
    _mirrors(monkeypatch, base)
    with pytest.raises(DatasetError, match="more than the expected"):
        mnist()
    assert _leftovers(isolated / "mnist") == []


def test_http_404_on_every_mirror(server, monkeypatch, isolated):
    files, _ = _make_files()
    _pin(monkeypatch, files)
    _mirrors(monkeypatch, f"{server.base}/a/", f"{server.base}/b/")
    with pytest.raises(DatasetError) as info:
        mnist()
    message = str(info.value)
    _check_failure_message(message, NAMES[0], isolated / "mnist")
    assert message.count("HTTP 404") == 2 and "/a/" in message and "/b/" in message
    assert _leftovers(isolated / "mnist") == []


def test_offline_gives_download_instructions(monkeypatch, isolated):
    files, _ = _make_files()
    _pin(monkeypatch, files)  # the mirrors are the refused local port from the fixture
    with pytest.raises(DatasetError) as info:
        mnist()
    message = str(info.value)
    _check_failure_message(message, NAMES[0], isolated / "mnist")
    assert "cannot connect" in message and "offline" in message
    assert "MNIST" in message and str(len(files[NAMES[0]])) in message
    assert _leftovers(isolated / "mnist") == []


def test_bad_cached_file_is_reported_and_kept_when_offline(monkeypatch, isolated):
    files, _ = _make_files()
    _pin(monkeypatch, files)
    folder = isolated / "mnist"
    folder.mkdir(parents=True)
    (folder / NAMES[0]).write_bytes(b"not the real file")
    with pytest.raises(DatasetError, match="wrong SHA-256"):
        mnist()
    assert (folder / NAMES[0]).read_bytes() == b"not the real file"


def _serve_with(server, monkeypatch, name: str, body: bytes) -> None:
    """Serve the usual files but with ``body`` as ``name``, checksums pinned to match."""
    files, _ = _make_files()
    files[name] = body
    _pin(monkeypatch, files)
    _mirrors(monkeypatch, server.serve("m", files))


def test_truncated_gzip_is_a_dataset_error(server, monkeypatch):
    good = _make_files()[0][NAMES[0]]
    _serve_with(server, monkeypatch, NAMES[0], good[:-20])
    with pytest.raises(DatasetError, match=f"{NAMES[0]}: not a readable gzip"):
        mnist()


@pytest.mark.parametrize(
    "raw,pattern",
    [
        (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + bytes(5), "bad IDX magic"),  # rank 1
        (b"\x00\x00\x0d\x03" + bytes(12), "bad IDX magic"),  # float type code
        (b"\x01\x00\x08\x03" + bytes(12), "bad IDX magic"),
        (b"\x00\x00\x08\x03" + bytes(7), "too short"),
        (b"\x00\x00\x08", "bad IDX magic"),
        (_idx(np.zeros((2, 28, 28)))[:-1], r"declares shape \(2, 28, 28\) = 1568 bytes"),
        (_idx(np.zeros((2, 28, 28))) + b"\x00", "but the file holds 1569"),
        (_idx(np.zeros((2, 28, 27))), "expected 28x28 images, found 28x27"),
    ],
)
def test_corrupt_idx_images_are_dataset_errors(server, monkeypatch, raw, pattern):
    _serve_with(server, monkeypatch, NAMES[0], _gz(raw))
    with pytest.raises(DatasetError, match=pattern) as info:
        mnist()
    assert NAMES[0] in str(info.value)


def test_label_problems_are_dataset_errors(server, monkeypatch):
    _serve_with(server, monkeypatch, NAMES[1], _gz(_idx(np.zeros(19))))
    with pytest.raises(DatasetError, match="holds 20 images but .* holds 19 labels"):
        mnist()


def test_labels_above_nine_are_rejected(server, monkeypatch):
    _serve_with(server, monkeypatch, NAMES[1], _gz(_idx(np.full(20, 10))))
    with pytest.raises(DatasetError, match=f"{NAMES[1]}: labels must be 0..9, found 10"):
        mnist()


# ---------------------------------------------------------------- pinned constants


def test_pinned_files_and_mirrors_are_complete():
    for dataset in ("mnist", "fashion_mnist"):
        pins = idx_module.FILES[dataset]
        assert sorted(pins) == sorted(NAMES)
        for size, digest in pins.values():
            assert size > 4000
            assert len(digest) == 64 and int(digest, 16) >= 0
        assert len(set(pins.values())) == 4
    assert idx_module.FILES["mnist"]["train-images-idx3-ubyte.gz"][0] == 9912422
    assert idx_module.FILES["fashion_mnist"]["train-images-idx3-ubyte.gz"][0] == 26421880


# ---------------------------------------------------------------- CIFAR-10 (binary version)

CIFAR = cifar_module.ARCHIVE
BATCHES = [f"data_batch_{i}.bin" for i in range(1, 6)]


def _cifar_records(rng: np.random.Generator, n: int) -> np.ndarray:
    """n records (n, 3073) uint8: a label byte 0..9, then 3072 pixel bytes."""
    records = rng.integers(0, 256, (n, 3073), dtype=np.uint8)
    records[:, 0] = rng.integers(0, 10, n)
    return records


def _tar_gz(members: list[tuple[str, bytes | None, str]]) -> bytes:
    """A .tar.gz of (name, data, kind) members; kind "file", "symlink" (to data) or "dir"."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data or b"")
                tar.addfile(info, io.BytesIO(data or b""))
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, (data or b"").decode()
                tar.addfile(info)
            else:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
    return buf.getvalue()


def _cifar_archive(seed: int = 0, per_batch: int = 3, n_test: int = 4, extra=(), drop=()):
    """A synthetic cifar-10-binary.tar.gz in the official layout, and the records it holds."""
    rng = np.random.default_rng(seed)
    batches = {name: _cifar_records(rng, per_batch) for name in BATCHES}
    test = _cifar_records(rng, n_test)
    test[0, 0], test[0, 1:3] = 9, (0, 255)  # the label and pixel extremes occur
    members = [("cifar-10-batches-bin", None, "dir")]
    members.append(("cifar-10-batches-bin/batches.meta.txt", b"airplane\nautomobile\n", "file"))
    for name, records in batches.items():
        members.append((f"cifar-10-batches-bin/{name}", records.tobytes(), "file"))
    members.append(("cifar-10-batches-bin/test_batch.bin", test.tobytes(), "file"))
    members = [m for m in members if m[0].rsplit("/", 1)[-1] not in drop] + list(extra)
    train = np.concatenate([batches[name] for name in BATCHES])
    return _tar_gz(members), train, test


def _serve_cifar(server, monkeypatch, archive: bytes, pin: bool = True) -> None:
    if pin:
        monkeypatch.setitem(
            cifar_module.PINNED, CIFAR, (len(archive), hashlib.sha256(archive).hexdigest())
        )
    monkeypatch.setattr(cifar_module, "MIRRORS", (server.serve("c", {CIFAR: archive}),))


def test_cifar10_download_parse_and_cache(server, monkeypatch, isolated):
    archive, train, test = _cifar_archive()
    _serve_cifar(server, monkeypatch, archive)

    (X_tr, y_tr), (X_te, y_te) = cifar10()
    assert X_tr.shape == (15, 3072) and X_te.shape == (4, 3072)
    assert X_tr.dtype == np.float32 and y_tr.dtype == np.int64
    # the five training batches in order, each record's label byte and then its pixels / 255
    np.testing.assert_array_equal(y_tr, train[:, 0])
    np.testing.assert_array_equal(X_tr, train[:, 1:] / np.float32(255))
    np.testing.assert_array_equal(y_te, test[:, 0])
    assert X_te.min() == 0.0 and X_te.max() == 1.0
    assert server.requests == [f"/c/{CIFAR}"]
    assert _leftovers(isolated / "cifar10") == [CIFAR]  # the archive only: nothing extracted

    (X_img, y_img), (X_img_te, _) = cifar10(images=True)
    assert server.requests == [f"/c/{CIFAR}"], "second call must be served from the cache"
    assert X_img.shape == (15, 3, 32, 32) and X_img_te.shape == (4, 3, 32, 32)
    # channel c, row r, column k of record i is byte 1 + 1024 c + 32 r + k
    i, c, r, k = 7, 2, 5, 30
    assert X_img[i, c, r, k] == np.float32(train[i, 1 + 1024 * c + 32 * r + k]) / np.float32(255)
    np.testing.assert_array_equal(X_img.reshape(15, -1), X_tr)
    np.testing.assert_array_equal(y_img, y_tr)


def test_cifar10_url_env_var_replaces_the_mirror(server, monkeypatch):
    archive, _, _ = _cifar_archive()
    monkeypatch.setitem(
        cifar_module.PINNED, CIFAR, (len(archive), hashlib.sha256(archive).hexdigest())
    )
    monkeypatch.setenv("GPUNN_CIFAR10_URL", server.serve("local", {CIFAR: archive}))
    cifar10()
    assert server.requests == [f"/local/{CIFAR}"]


def test_cifar10_corrupted_archive_fails_the_hash_and_caches_nothing(server, monkeypatch, isolated):
    archive, _, _ = _cifar_archive()
    corrupted = bytearray(archive)
    corrupted[len(corrupted) // 2] ^= 0xFF  # one flipped byte, same size
    monkeypatch.setitem(
        cifar_module.PINNED, CIFAR, (len(archive), hashlib.sha256(archive).hexdigest())
    )
    monkeypatch.setattr(cifar_module, "MIRRORS", (server.serve("c", {CIFAR: bytes(corrupted)}),))
    with pytest.raises(DatasetError) as info:
        cifar10()
    message = str(info.value)
    assert "SHA-256 mismatch" in message and hashlib.sha256(corrupted).hexdigest() in message
    assert "CIFAR-10" in message and "GPUNN_CIFAR10_URL" in message
    assert _leftovers(isolated / "cifar10") == []


def test_cifar10_checks_the_pinned_official_hash(server, monkeypatch, isolated):
    """The loader checks the published SHA-256 of cifar-10-binary.tar.gz: with only the size
    patched (to the synthetic archive's), the synthetic archive is refused against it."""
    official = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
    assert cifar_module.PINNED[CIFAR] == (170052171, official)
    archive, _, _ = _cifar_archive()
    monkeypatch.setitem(cifar_module.PINNED, CIFAR, (len(archive), official))
    _serve_cifar(server, monkeypatch, archive, pin=False)
    with pytest.raises(DatasetError, match=f"SHA-256 mismatch: got .*, expected {official}"):
        cifar10()
    assert _leftovers(isolated / "cifar10") == []


def test_cifar10_reads_only_the_expected_members_and_extracts_nothing(
    server, monkeypatch, isolated, tmp_path
):
    evil = [
        ("../escaped.bin", b"x" * 3073, "file"),
        ("/tmp/absolute.bin", b"x" * 3073, "file"),
        ("cifar-10-batches-bin/../../escaped2.bin", b"x" * 3073, "file"),
        ("cifar-10-batches-bin/link", b"/etc/passwd", "symlink"),
    ]
    archive, train, _ = _cifar_archive(extra=evil)
    _serve_cifar(server, monkeypatch, archive)
    (X_tr, y_tr), _ = cifar10(images=True)
    np.testing.assert_array_equal(y_tr, train[:, 0])
    assert _leftovers(isolated / "cifar10") == [CIFAR]
    assert not (isolated / "escaped.bin").exists() and not (tmp_path / "escaped.bin").exists()
    assert not (isolated / "escaped2.bin").exists()


@pytest.mark.parametrize(
    "archive_kw,pattern",
    [
        ({"drop": ("data_batch_3.bin",)}, "lacks cifar-10-batches-bin/data_batch_3.bin"),
        ({"drop": ("test_batch.bin",)}, "lacks cifar-10-batches-bin/test_batch.bin"),
        (
            {
                "drop": ("data_batch_2.bin",),
                "extra": [("cifar-10-batches-bin/data_batch_2.bin", b"/etc/passwd", "symlink")],
            },
            "data_batch_2.bin is not a regular file",
        ),
        (
            {"extra": [("cifar-10-batches-bin/test_batch.bin", bytes(3073), "file")]},
            "holds cifar-10-batches-bin/test_batch.bin twice",
        ),
    ],
)
def test_cifar10_archive_problems_are_dataset_errors(server, monkeypatch, archive_kw, pattern):
    archive, _, _ = _cifar_archive(**archive_kw)
    _serve_cifar(server, monkeypatch, archive)
    with pytest.raises(DatasetError, match=pattern):
        cifar10()


@pytest.mark.parametrize(
    "test_bytes,pattern",
    [
        (bytes(3073 * 2 - 1), r"holds 6145 bytes, not a whole number of 3073-byte records"),
        (b"", "holds 0 bytes"),
        (bytes([10]) + bytes(3072), "record 0 of test_batch.bin has label 10"),
    ],
)
def test_cifar10_bad_records_are_dataset_errors(server, monkeypatch, test_bytes, pattern):
    archive, _, _ = _cifar_archive(
        drop=("test_batch.bin",),
        extra=[("cifar-10-batches-bin/test_batch.bin", test_bytes, "file")],
    )
    _serve_cifar(server, monkeypatch, archive)
    with pytest.raises(DatasetError, match=pattern):
        cifar10()


def test_cifar10_a_file_that_is_no_tar_gz_is_a_dataset_error(server, monkeypatch):
    _serve_cifar(server, monkeypatch, gzip.compress(b"not a tar archive", mtime=0))
    with pytest.raises(DatasetError, match="not a readable .tar.gz archive"):
        cifar10()
    _serve_cifar(server, monkeypatch, b"plain bytes, not even gzip")
    with pytest.raises(DatasetError, match="not a readable .tar.gz archive"):
        cifar10()
