"""A node's bounded cache of shard files, shared by every reader process on it (ranks, DataLoader
workers, other runs).

Layout under the cache root: ``shards/<sha256>.tar`` (content-addressed: a file is named by the
checksum it was verified against, so two data sets or two runs sharing a shard share one copy,
and a hand-edited manifest can never make a reader trust another shard's bytes),
``shards/<sha256>.index`` beside it (its member offsets, written once by the process that
downloaded it, so no other reader parses the tar again), ``shards/<sha256>.<bytes>.partial``
while it downloads (bytes = the shard and its index), ``locks/<sha256>.lock`` per shard and
``cache.lock`` for the space accounting.

- Pins: a reader holds a shared ``flock`` on a shard's lock file for as long as it may read the
  shard; eviction takes the exclusive lock without waiting, so a pinned shard is never removed.
  Locks die with their process, so a crashed reader pins nothing.
- One download per shard: the fetching process holds the shard's exclusive lock; others block on
  their shared lock and then find the file in place. A download streams into the partial file
  (bounded memory), is checked against the manifest's size and sha256, and is renamed into place.
- The limit: before a download the bytes of the shard and its index are reserved under
  ``cache.lock`` (the partial file, which carries them in its name, is created inside that critical
  section), evicting the least recently pinned unpinned shards (with their indexes) first. The
  index is written before the shard is renamed into place, and the rename happens under
  ``cache.lock`` too, so an accounting listing never sees a shard half-renamed (a directory
  listing taken across a rename may miss the file under both names): files on disk therefore
  never exceed the limit. If
  live pins leave no room, the reservation waits for readers to move on, then fails with the fix.
- Object storage: transient failures (connection drops, timeouts, a checksum mismatch in transit)
  are retried with exponential backoff; a missing shard, or one still wrong after the retries, is a
  :class:`ShardError` naming it. No sample is ever skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from lamamba import storage
from lamamba.data.shard_format import ShardError

log = logging.getLogger("lamamba.data")

CHUNK = 8 << 20  # bytes per read of a download (one range request on an object store)


class CacheFullError(RuntimeError):
    """The cache limit cannot hold what the live readers on this node need at once."""


@dataclass(frozen=True)
class ShardRef:
    """What the manifest says about one shard: where it is and what its bytes must be."""

    url: str
    sha256: str
    size: int
    index_size: int = 0  # bytes of the index file kept beside it (reserved with it)


def default_cache_dir() -> str:
    return os.environ.get("LAMAMBA_DATA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lamamba", "latents")


def _try_exclusive(path: str) -> int | None:
    """An fd holding ``path``'s exclusive flock, or None if someone holds a lock on it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class ShardCache:
    """The cache under ``root``, at most ``limit_bytes`` of shard files on disk.

    ``pin(ref)`` returns the local path of the verified shard (fetching it if needed) and keeps it
    pinned until ``unpin(ref)``; pins are counted per process, so threads may pin one shard twice.

    Args:
        root: the cache folder (created); shared by every run on the node.
        limit_bytes: most bytes of shard files (complete and partial) and their indexes on disk at any time.
        storage_options: fsspec options for reading the shards.
        attempts: tries per shard download before it is an error.
        backoff_s: the first retry's wait; doubled per retry, at most 16x.
        space_timeout_s: how long a download waits for pinned shards to be released.
        indexer: ``indexer(path, url)`` = the bytes of the index file of the verified shard at
            ``path`` (written beside it after the download; None = no index files).
    """

    def __init__(self, root: str, limit_bytes: int, storage_options: dict | None = None, *, attempts: int = 6,
                 backoff_s: float = 0.5, space_timeout_s: float = 600.0,
                 indexer: Callable[[str, str], bytes] | None = None):
        self.root = root
        self.limit_bytes = int(limit_bytes)
        self.storage_options = storage_options
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.space_timeout_s = space_timeout_s
        self.indexer = indexer
        self.downloaded: list[str] = []  # urls this process fetched (tests and benchmarks read it)
        for sub in ("shards", "locks"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        self._pins: dict[str, list[int]] = {}  # sha256 -> [lock fd, count]
        self._guard = threading.Lock()
        self._fetching: dict[str, threading.Lock] = {}

    def path(self, ref: ShardRef) -> str:
        return os.path.join(self.root, "shards", f"{ref.sha256}.tar")

    def index_path(self, ref: ShardRef) -> str:
        """Where ``ref``'s index file is kept (a reader that finds none may write it while pinned)."""
        return os.path.join(self.root, "shards", f"{ref.sha256}.index")

    def _lock_path(self, sha: str) -> str:
        return os.path.join(self.root, "locks", f"{sha}.lock")

    # -- pins ---------------------------------------------------------------------------------

    def pin(self, ref: ShardRef, wait: bool = True) -> str:
        """The local path of ``ref``'s verified bytes, pinned until :meth:`unpin`.

        With ``wait=False`` (read-ahead) a download that finds no room raises
        :class:`CacheFullError` at once instead of waiting for other readers' pins: read-ahead
        never holds up what another reader needs now."""
        if ref.size > self.limit_bytes:
            raise CacheFullError(f"shard {ref.url} ({ref.size / 1e9:.3g} GB) is larger than the data cache limit "
                                 f"({self.limit_bytes / 1e9:.3g} GB); raise data.cache_limit_gb")
        with self._guard:
            fetching = self._fetching.setdefault(ref.sha256, threading.Lock())
        with fetching:  # one thread of this process per shard
            with self._guard:
                if ref.sha256 in self._pins:
                    self._pins[ref.sha256][1] += 1
                    return self.path(ref)
            fd = os.open(self._lock_path(ref.sha256), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                self._pin_locked(ref, fd, wait)
            except BaseException:
                os.close(fd)
                raise
            with self._guard:
                self._pins[ref.sha256] = [fd, 1]
            return self.path(ref)

    def _pin_locked(self, ref: ShardRef, fd: int, wait: bool) -> None:
        """Take the shared lock on a shard whose file is in place, downloading it first if needed.

        The exclusive lock is only ever tried, never waited for: its other holders may be pins of
        a reader that itself waits for a shard this one pins (two ranks, each having fetched the
        shard the other one wants, blocked in their exclusive requests forever: seen with two
        ranks and two shards). Waiting happens on the shared lock alone, which only a download in
        progress holds up.
        """
        path = self.path(ref)
        downloads, pause = 0, 0.005
        while True:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if _size(path) == ref.size:
                os.utime(path)  # the recency eviction goes by
                return
            try:  # a failed conversion leaves no lock: the shared one is dropped first
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another reader is looking (or pinned it just now): look again
                time.sleep(pause)
                pause = min(2 * pause, 0.2)
                continue
            if _size(path) != ref.size:
                if downloads == 8:  # lock conversions are not atomic: an evictor may slip in between
                    raise ShardError(f"shard {ref.url} keeps being evicted from {self.root} as soon as it is "
                                     "fetched; raise data.cache_limit_gb")
                downloads += 1
                self._download(ref, path, wait)

    def unpin(self, ref: ShardRef) -> None:
        with self._guard:
            entry = self._pins[ref.sha256]
            entry[1] -= 1
            if entry[1] == 0:
                del self._pins[ref.sha256]
                os.close(entry[0])  # releases the shared lock

    def pinned(self) -> int:
        with self._guard:
            return len(self._pins)

    # -- space --------------------------------------------------------------------------------

    def usage_bytes(self) -> int:
        """Bytes of shard and index files on disk now (partial files at their final size)."""
        return sum(size for _, _, size, _ in self._entries())

    def peak_bytes(self) -> int:
        """The most bytes ever reserved in this cache (recorded under the accounting lock)."""
        try:
            with open(os.path.join(self.root, "peak_bytes")) as f:
                return int(f.read() or 0)
        except FileNotFoundError:
            return 0

    def _entries(self) -> list[tuple[str, list[str], int, float]]:
        """(sha256, file names, bytes, last use) of every shard on disk: its complete or partial
        file and its index file."""
        folder = os.path.join(self.root, "shards")
        shards: dict[str, tuple[list[str], int, float]] = {}
        for name in os.listdir(folder):
            sha, _, kind = name.partition(".")
            if kind != "tar" and not kind.startswith("index") and not kind.endswith(".partial"):
                continue  # "index" also covers an index file being written (or left by a crash)
            try:
                stat = os.stat(os.path.join(folder, name))
            except FileNotFoundError:
                continue
            names, size, used = shards.get(sha, ([], 0, 0.0))
            size += int(kind.split(".")[0]) if kind.endswith(".partial") else stat.st_size
            shards[sha] = ([*names, name], size, max(used, stat.st_mtime))
        return [(sha, names, size, used) for sha, (names, size, used) in shards.items()]

    @contextlib.contextmanager
    def accounting(self):
        """Hold the cache's space-accounting lock (listing, reserving, evicting, renaming into place)."""
        with open(os.path.join(self.root, "cache.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _reserve(self, ref: ShardRef, partial: str, wait: bool) -> None:
        """Make room for ``ref`` and create its partial file, inside the accounting lock."""
        deadline = time.monotonic() + (self.space_timeout_s if wait else 0.0)
        pause = 0.02
        while True:
            with self.accounting():
                need = ref.size + ref.index_size
                used = self._make_room(need)
                if used + need <= self.limit_bytes:
                    open(partial, "wb").close()
                    self._record_peak(used + need)
                    return
            if time.monotonic() >= deadline:
                raise CacheFullError(
                    f"the data cache {self.root} (limit {self.limit_bytes / 1e9:.3g} GB) holds {used / 1e9:.3g} GB "
                    f"of shards pinned by live readers and cannot fit {ref.url} ({ref.size / 1e9:.3g} GB) after "
                    f"{self.space_timeout_s:.0f} s; raise data.cache_limit_gb or lower data.block_shards")
            time.sleep(pause)
            pause = min(2 * pause, 1.0)

    def _make_room(self, need: int) -> int:
        """Evict unpinned shards, least recently used first, until ``need`` fits; the bytes in use."""
        entries = self._entries()
        used = sum(size for _, _, size, _ in entries)
        folder = os.path.join(self.root, "shards")
        for sha, names, size, _ in sorted(entries, key=lambda e: e[3]):
            if used + need <= self.limit_bytes:
                break
            fd = _try_exclusive(self._lock_path(sha))
            if fd is None:
                continue  # pinned, or being downloaded
            try:  # nobody holds it: a complete shard to evict or a dead download's leftover
                for name in names:
                    try:
                        os.remove(os.path.join(folder, name))
                    except FileNotFoundError:
                        pass
                used -= size
            finally:
                os.close(fd)
        return used

    def _record_peak(self, used: int) -> None:
        if used > self.peak_bytes():
            storage.write_bytes(os.path.join(self.root, "peak_bytes"), str(used).encode())

    # -- download -----------------------------------------------------------------------------

    def _download(self, ref: ShardRef, path: str, wait: bool) -> None:
        """Fetch ``ref`` into ``path`` (this process holds the shard's exclusive lock)."""
        partial = os.path.join(self.root, "shards", f"{ref.sha256}.{ref.size + ref.index_size}.partial")
        self._reserve(ref, partial, wait)
        try:
            last, mismatches = None, 0
            for attempt in range(self.attempts):
                if attempt:
                    delay = self.backoff_s * 2 ** min(attempt - 1, 4)
                    log.warning("shard %s: %s; retry %d of %d in %.1f s", ref.url, last, attempt,
                                self.attempts - 1, delay)
                    time.sleep(delay)
                try:
                    self._fetch_once(ref, partial)
                except (FileNotFoundError, PermissionError) as err:
                    raise ShardError(f"shard {ref.url} cannot be read: {err}") from None
                except _Mismatch as err:
                    mismatches += 1
                    if mismatches == 2:  # the same damage twice is the stored bytes, not the transfer
                        raise ShardError(f"shard {ref.url} has {err}") from None
                    last = str(err)
                    continue
                except Exception as err:  # noqa: BLE001 - any transfer failure is retried, then reported
                    last = f"{type(err).__name__}: {err}"
                    continue
                self._write_index(ref, partial)  # inside the reservation either way
                with self.accounting():
                    os.replace(partial, path)
                self.downloaded.append(ref.url)
                return
            raise ShardError(f"shard {ref.url} could not be fetched in {self.attempts} attempts; last error: {last}")
        finally:
            if os.path.exists(partial):
                os.remove(partial)

    def _write_index(self, ref: ShardRef, path: str) -> None:
        """Keep the index of the shard just verified at ``path`` beside it (this process holds its
        exclusive lock)."""
        if self.indexer is None:
            return
        try:
            data = self.indexer(path, ref.url)
        except ShardError:
            return  # bytes the manifest vouches for but that do not parse: the reader names the shard
        storage.write_bytes(self.index_path(ref), data)

    def _fetch_once(self, ref: ShardRef, partial: str) -> None:
        fs, remote = storage.filesystem(ref.url, self.storage_options)
        digest, size = hashlib.sha256(), 0
        with fs.open(remote, "rb", block_size=CHUNK, cache_type="none") as src, open(partial, "wb") as dst:
            while chunk := src.read(CHUNK):
                size += len(chunk)
                if size > ref.size:  # never write past the reservation
                    break
                digest.update(chunk)
                dst.write(chunk)
        if size != ref.size:
            raise _Mismatch(f"{size} bytes, the manifest says {ref.size} (truncated?)")
        if digest.hexdigest() != ref.sha256:
            raise _Mismatch("bytes that do not match the manifest's sha256 (corrupt)")


class _Mismatch(OSError):
    """The fetched bytes are not the manifest's (retried: a transfer can be cut or damaged)."""


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return -1
