"""URLs for every artefact: local paths and ``file://`` by default, ``s3://`` (or any fsspec
protocol) when asked.

Credentials and endpoints come from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` / ``LAMAMBA_S3_ENDPOINT``) or from explicit
``storage_options``; they are never logged. Writes of whole objects go through
:func:`write_bytes`, which is atomic on both backends (temp file + rename locally, one PUT on S3),
so a reader never sees half a shard or half a checkpoint file.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import uuid
from typing import Any

import fsspec
from fsspec.core import url_to_fs


def _default_options(url: str) -> dict[str, Any]:
    if url.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("LAMAMBA_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            return {"endpoint_url": endpoint}
    return {}


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` and the path inside it."""
    return url_to_fs(url, **{**_default_options(url), **(storage_options or {})})


def join(url: str, *parts: str) -> str:
    """Join path parts onto a local path or URL with '/'."""
    if "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{posixpath.join(rest, *parts)}"
    return os.path.join(url, *parts)


class UnsafePathError(ValueError):
    """A path taken from data (an object key, a manifest entry, a tar member) leaves its root."""


def safe_join(root: str, relative: str, what: str = "path") -> str:
    """``join(root, relative)`` for a ``relative`` that comes from data, refused unless it stays
    inside ``root``: absolute names, ``..`` components and empty names raise
    :class:`UnsafePathError` naming ``what`` and the offending value."""
    parts = relative.replace("\\", "/").split("/")
    if not relative or relative.startswith("/") or ".." in parts or "" in parts[:-1] or "\x00" in relative:
        raise UnsafePathError(f"{what} {relative!r} is not a plain relative path inside {root}")
    return join(root, *parts)


def is_transient_error(err: BaseException) -> bool:
    """Whether ``err`` looks like the storage being unreachable (connection refused or reset,
    timeouts, endpoint errors of botocore/aiohttp) rather than a bad request or a bug: the kind
    worth retrying with backoff."""
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    try:
        import aiohttp
        import botocore.exceptions
    except ImportError:
        return False
    return isinstance(err, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError,
                            aiohttp.ClientConnectionError, aiohttp.ServerTimeoutError))


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def exists(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    fs, path = filesystem(url, storage_options)
    return fs.exists(path)


def read_bytes(url: str, storage_options: dict[str, Any] | None = None) -> bytes:
    fs, path = filesystem(url, storage_options)
    with fs.open(path, "rb") as f:
        return f.read()


def sha256(url: str, storage_options: dict[str, Any] | None = None) -> str:
    """Hex sha256 of a local file or object, streamed in 4 MiB blocks."""
    fs, path = filesystem(url, storage_options)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bytes(url: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Write a whole object atomically: readers see the old state or the new one, never a part."""
    fs, path = filesystem(url, storage_options)
    if is_local(url):
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):  # a failed write leaves nothing behind
                os.remove(tmp)
            raise
    else:
        fs.pipe_file(path, data)


def listdir(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Names (not paths) of the entries directly under ``url``; empty if it does not exist."""
    fs, path = filesystem(url, storage_options)
    try:
        entries = fs.ls(path, detail=False, refresh=True) if not is_local(url) else fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(posixpath.basename(e.rstrip("/")) for e in entries)


def makedirs(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Create a directory (a no-op on object stores, which have none)."""
    fs, path = filesystem(url, storage_options)
    if is_local(url):
        fs.makedirs(path, exist_ok=True)


def remove(url: str, recursive: bool = False, storage_options: dict[str, Any] | None = None) -> None:
    fs, path = filesystem(url, storage_options)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)
