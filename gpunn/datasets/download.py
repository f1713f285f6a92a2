"""Download a data set file once, check its size and SHA-256, and keep it in the cache folder.

Files are cached in ``$GPUNN_DATA/<dataset>/`` if GPUNN_DATA is set, else in the user cache
folder (``$XDG_CACHE_HOME/gpunn`` or ``~/.cache/gpunn``). A file is only ever moved into the
cache once its size and SHA-256 match the pinned values; a cached copy with the wrong hash is
downloaded again (and kept until a verified copy replaces it). The parsers of the data sets
(:mod:`gpunn.datasets.idx` for MNIST, :mod:`gpunn.datasets.cifar` for CIFAR-10) call
:func:`fetch` with their own pinned tables.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DatasetError", "cache_root", "fetch", "file_digest"]

_TIMEOUT_S = 60  # per socket operation, not for the whole download
_CHUNK = 1 << 16


class DatasetError(OSError):
    """A data set file could not be downloaded, verified or parsed."""


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding cached data sets: cache_dir, else $GPUNN_DATA, else the user cache."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("GPUNN_DATA"):
        return Path(os.environ["GPUNN_DATA"]).expanduser()
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "gpunn" / "Cache"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "gpunn"
    return Path.home() / ".cache" / "gpunn"


def fetch(
    name: str, folder: Path, size: int, sha256: str, urls: Sequence[str], title: str, env: str
) -> Path:
    """Path to a verified copy of file ``name`` in ``folder``, downloading it if needed.

    ``urls`` are tried in order; ``title`` names the data set and ``env`` the variable that
    replaces its mirrors, both for the error message (DatasetError) when every URL fails.
    """
    target = folder / name
    note = ""
    if target.is_file():
        if file_digest(target) == sha256:
            return target
        # Keep the bad copy until a verified one replaces it, in case the user put it there.
        note = f"\nThe copy already at {target} has the wrong SHA-256 and was not used."
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(
            f"cannot create the data folder {folder} ({err}); set GPUNN_DATA to a writable folder"
        ) from err

    failures = []
    for url in urls:
        print(f"gpunn: downloading {url}", file=sys.stderr)
        try:
            _download(url, target, size, sha256)
            return target
        except (urllib.error.URLError, http.client.HTTPException, OSError, _BadDownload) as err:
            failures.append(f"  - {url}: {_why(err)}")
    raise DatasetError(
        f"could not download {title} file {name!r}:\n"
        + "\n".join(failures)
        + note
        + f"\nTo fix it, download {urls[0]} yourself (or the same file from a mirror listed "
        f"above; {size} bytes, SHA-256 {sha256}) and put it in the folder {folder}{os.sep} -- "
        f"or set GPUNN_DATA to a folder whose {folder.name}{os.sep} subfolder holds it, or "
        f"{env} to a base URL that serves it."
    )


class _BadDownload(Exception):
    """The server answered, but not with the expected bytes."""


def _download(url: str, target: Path, size: int, sha256: str) -> None:
    """Stream ``url`` into a temp file beside ``target``; move it there only once verified."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        received = 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
            while chunk := resp.read(_CHUNK):
                received += len(chunk)
                if received > size:
                    raise _BadDownload(f"server sent more than the expected {size} bytes")
                digest.update(chunk)
                out.write(chunk)
        if received != size:
            raise _BadDownload(f"got {received} of {size} bytes (download cut short?)")
        if digest.hexdigest() != sha256:
            raise _BadDownload(f"SHA-256 mismatch: got {digest.hexdigest()}, expected {sha256}")
        os.replace(tmp, target)
    finally:
        # After a successful os.replace the temp name is gone; otherwise never leave a part file.
        tmp.unlink(missing_ok=True)


def _why(err: BaseException) -> str:
    """A one-line reason for a failed download attempt."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"cannot connect ({err.reason}) -- offline, or the mirror is down?"
    if isinstance(err, TimeoutError):
        return f"timed out after {_TIMEOUT_S} s without data -- offline or a very slow network?"
    return str(err) or type(err).__name__


def file_digest(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
