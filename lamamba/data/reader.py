"""One process's open shards: fetched ahead through the node's :class:`ShardCache`, memory-mapped,
indexed (from the index file the cache keeps beside each shard), and checked against the manifest
before a sample is read.

The loader tells the reader which shards the next steps need (``keep``), most urgent first; the
reader fetches them on a small thread pool while the current step is built from shards already in
place, and releases (unmaps and unpins) every shard that left the window, so eviction may reclaim
it. State is per process: a DataLoader worker that receives a pickled reader opens its own.
"""

from __future__ import annotations

import concurrent.futures
import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from lamamba import storage
from lamamba.data.cache import CacheFullError, ShardCache, ShardRef
from lamamba.data.manifest import shard_url
from lamamba.data.shard_format import ShardError, ShardIndex, index_file, index_file_bytes, index_shard


@dataclass
class OpenShard:
    """A pinned, memory-mapped shard and its index."""

    ref: ShardRef
    buffer: mmap.mmap
    index: ShardIndex
    cache: ShardCache

    def gather(self, rows: np.ndarray, flips: np.ndarray) -> np.ndarray:
        """(k, 2, C, h, w) float16: sample ``rows[k]``'s [mean, std] of flip ``flips[k]``, copied out
        of the map in one fancy-indexing gather; no view of the map outlives this call, so
        :meth:`release` can always unmap it."""
        half = self.index.count // 2
        values = np.frombuffer(self.buffer, np.float16, len(self.buffer) // 2)
        windows = np.lib.stride_tricks.sliding_window_view(values, half)  # row v: the half values from value v
        return windows[self.index.offsets[rows] // 2 + half * flips].reshape(len(rows), *self.index.shape[1:])

    def release(self) -> None:
        self.buffer.close()  # unmapped before unpinned: eviction never frees a file still mapped
        self.cache.unpin(self.ref)


class ShardReader:
    """The manifest's shards as this process sees them (see the module docstring).

    Args:
        manifest_url, manifest: the data set.
        storage_options: fsspec options for the shards.
        cache_dir, limit_bytes: the node's shard cache and its limit.
        fetch_workers: shards fetched at once by this process.
    """

    def __init__(self, manifest_url: str, manifest: dict[str, Any], storage_options: dict | None, cache_dir: str,
                 limit_bytes: int, fetch_workers: int, **cache_options: Any):
        self.refs = [ShardRef(shard_url(manifest_url, s), s["sha256"], int(s["size"]), index_file_bytes(s["num_items"]))
                     for s in manifest["shards"]]
        self.counts = [int(s["num_items"]) for s in manifest["shards"]]
        c, s = int(manifest["channels"]), int(manifest["latent_size"])
        self.shape = (2, 2, c, s, s)
        self.num_classes = int(manifest["num_classes"])
        self.storage_options = storage_options
        self.cache_dir = cache_dir
        self.limit_bytes = limit_bytes
        self.fetch_workers = fetch_workers
        self.cache_options = cache_options
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("cache", "_pool", "_ahead_pool", "_open")} | {"_pid": None}

    def _process_state(self) -> None:
        if self._pid != os.getpid():  # first use in this process (or a forked worker's copy)
            self.cache = ShardCache(self.cache_dir, self.limit_bytes, self.storage_options, indexer=index_file,
                                    **self.cache_options)
            self._pool = ThreadPoolExecutor(self.fetch_workers, thread_name_prefix="shard-fetch")
            self._ahead_pool = ThreadPoolExecutor(self.fetch_workers, thread_name_prefix="shard-read-ahead")
            self._open: dict[int, tuple[Future[OpenShard], bool]] = {}  # shard -> (fetch, needed now)
            self._pid = os.getpid()

    def keep(self, wanted: list[int], urgent: int = 0) -> None:
        """Fetch the shards ``wanted`` (most urgent first; the first ``urgent`` are needed now,
        the rest are read-ahead) and release every other one."""
        self._process_state()
        for k, shard in enumerate(wanted):
            entry = self._open.get(shard)
            if entry is None or (entry[0].done() and isinstance(entry[0].exception(), CacheFullError)):
                self._submit(shard, k < urgent)  # new, or a read-ahead that found no room: try again
        keep = set(wanted)
        for shard in [s for s in self._open if s not in keep]:
            self._open.pop(shard)[0].add_done_callback(_close)

    def shard(self, shard: int) -> OpenShard:
        """Shard ``shard``, open (waits for its fetch; raises its :class:`ShardError`)."""
        self._process_state()
        entry = self._open.get(shard)
        if entry is None or (not entry[1] and entry[0].cancel()):  # not started as read-ahead: jump the queue
            entry = (self._submit(shard, True), True)
        future, urgent = entry
        try:
            return future.result()
        except CacheFullError:
            if urgent:
                raise
            return self._submit(shard, True).result()  # read-ahead found no room; now it is needed

    def _submit(self, shard: int, urgent: bool) -> Future[OpenShard]:
        # Two pools: what a step needs now never queues behind read-ahead.
        future = (self._pool if urgent else self._ahead_pool).submit(self._open_shard, shard, urgent)
        self._open[shard] = (future, urgent)
        return future

    def close(self, wait: bool = True) -> None:
        """Release every shard this process holds; with ``wait``, also wait for fetches already
        running (they cannot be interrupted) so that none outlives the loader."""
        if self._pid == os.getpid():
            futures = [future for future, _ in self._open.values()]
            for future in futures:
                future.cancel()  # read-ahead not started yet is dropped
                future.add_done_callback(_close)
            self._open.clear()
            if wait:
                concurrent.futures.wait(futures)

    def __del__(self) -> None:
        self.close(wait=False)

    def _open_shard(self, shard: int, wait: bool) -> OpenShard:
        ref = self.refs[shard]
        path = self.cache.pin(ref, wait)
        try:
            with open(path, "rb") as f:
                # Populated here, on the fetch thread: the step that gathers from it takes no page faults.
                buffer = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                                   prot=mmap.PROT_READ)
            try:
                index = self._index(ref, buffer)
                self._check(index, shard, path)
            except BaseException:
                buffer.close()
                raise
        except BaseException:
            self.cache.unpin(ref)
            raise
        return OpenShard(ref, buffer, index, self.cache)

    def _index(self, ref: ShardRef, buffer: mmap.mmap) -> ShardIndex:
        """The pinned shard's index: from the file the cache keeps beside it or, where there is none
        (a shard cached before index files) or it is damaged, from its tar headers, then kept there."""
        kept = self.cache.index_path(ref)
        try:
            with open(kept, "rb") as f:
                return ShardIndex.from_bytes(f.read(), len(buffer), ref.url)
        except (FileNotFoundError, ShardError):
            index = index_shard(buffer, ref.url)
            storage.write_bytes(kept, index.to_bytes())  # atomic: concurrent readers write the same bytes
            return index

    def _check(self, index: ShardIndex, shard: int, path: str) -> None:
        """What the cached file holds must be what the manifest claims, before any sample is used."""
        ref, expected = self.refs[shard], self.counts[shard]
        if len(index) != expected or index.shape != self.shape:
            raise ShardError(f"shard {ref.url} (cached as {path}) holds {len(index)} samples of shape {index.shape}, "
                             f"the manifest says {expected} of {self.shape}")
        bad = index.labels[(index.labels < 0) | (index.labels >= self.num_classes)]
        if len(bad):
            raise ShardError(f"shard {ref.url} holds label {int(bad[0])}, outside the manifest's "
                             f"{self.num_classes} classes")


def _close(future: Future[OpenShard]) -> None:
    if future.cancelled() or future.exception() is not None:
        return  # nothing was pinned
    future.result().release()
