"""The local cache a manifest's shards are decoded into once: one memory-mapped array per dataset.

Random access over the whole dataset (the order is a permutation of all of it) is cheap from a
memory map and ruinous from tar streams, so the first loader on a machine downloads every shard,
checks its size and sha256 against the manifest, decodes it, and writes the moments of all
samples into ``<cache_dir>/<manifest id>/moments.npy`` (N, 2, 2, C, h, w) float16 and the labels
into ``labels.npy``; a ``COMPLETE`` file marks the cache usable. A file lock makes concurrent
loaders (ranks, DataLoader workers) build it once. Processes then share the page cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from tqdm import tqdm

from lamamba import storage
from lamamba.data.shard_format import ShardError, unpack_shard

MANIFEST_NAME = "manifest.json"
REQUIRED_KEYS = ("id", "num_items", "shards", "resolution", "latent_size", "channels", "scale_factor", "num_classes")


def manifest_url_of(url: str) -> str:
    """Accept the manifest file's URL or the shard folder's."""
    return url if url.endswith(".json") else storage.join(url, MANIFEST_NAME)


def read_manifest(url: str, storage_options: dict | None = None) -> dict[str, Any]:
    """Read and check a manifest (``url`` = the file or its folder)."""
    url = manifest_url_of(url)
    try:
        manifest = json.loads(storage.read_bytes(url, storage_options))
    except FileNotFoundError:
        raise FileNotFoundError(f"no manifest at {url} (has the encode job finished?)") from None
    except ValueError as err:
        raise ValueError(f"manifest {url} is not valid JSON: {err}") from None
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"manifest {url} lacks {missing}")
    return manifest


def default_cache_dir() -> str:
    return os.environ.get("LAMAMBA_DATA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lamamba", "latents")


class LatentArrays:
    """The decoded dataset of one manifest: ``moments`` (N, 2, 2, C, h, w) float16 memmap, ``labels`` (N,).

    Picklable without copying the data: a process that unpickles it reopens the memory maps.
    """

    def __init__(self, manifest_url: str, storage_options: dict | None = None, cache_dir: str | None = None):
        self.manifest_url = manifest_url_of(manifest_url)
        self.storage_options = storage_options
        self.manifest = read_manifest(self.manifest_url, storage_options)
        self.directory = os.path.join(cache_dir or default_cache_dir(), self.manifest["id"])
        self._ensure_built()
        self._moments: np.ndarray | None = None
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.manifest["num_items"])

    @property
    def moments(self) -> np.ndarray:
        if self._moments is None:
            self._moments = np.load(os.path.join(self.directory, "moments.npy"), mmap_mode="r")
        return self._moments

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = np.load(os.path.join(self.directory, "labels.npy"))
        return self._labels

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_moments": None, "_labels": None}

    def _ensure_built(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        complete = os.path.join(self.directory, "COMPLETE")
        if os.path.exists(complete):
            return
        with open(os.path.join(self.directory, ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.exists(complete):
                self._build()
                with open(complete, "w") as f:
                    f.write(self.manifest["id"] + "\n")

    def _build(self) -> None:
        m = self.manifest
        c, s = int(m["channels"]), int(m["latent_size"])
        base = self.manifest_url.rsplit("/", 1)[0] if "/" in self.manifest_url else "."
        offsets = np.cumsum([0] + [int(sh["num_items"]) for sh in m["shards"]])
        partial = os.path.join(self.directory, "moments.npy.partial")
        moments = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(len(self), 2, 2, c, s, s))
        labels = np.zeros(len(self), dtype=np.int64)

        def fill(i: int) -> int:
            shard = m["shards"][i]
            if not shard["num_items"]:
                return 0
            url = storage.join(base, shard["name"])
            try:
                data = storage.read_bytes(url, self.storage_options)
            except FileNotFoundError:
                raise ShardError(f"shard {url} is missing") from None
            if len(data) != shard["size"]:
                raise ShardError(f"shard {url} has {len(data)} bytes, the manifest says {shard['size']} (truncated?)")
            if hashlib.sha256(data).hexdigest() != shard["sha256"]:
                raise ShardError(f"shard {url} does not match its sha256 in the manifest (corrupt)")
            arrays = unpack_shard(data, url)
            if len(arrays.labels) != shard["num_items"] or arrays.moments.shape[1:] != (2, 2, c, s, s):
                raise ShardError(f"shard {url} holds {len(arrays.labels)} samples of shape "
                                 f"{arrays.moments.shape[1:]}, the manifest says {shard['num_items']} of "
                                 f"{(2, 2, c, s, s)}")
            moments[offsets[i]:offsets[i + 1]] = arrays.moments
            labels[offsets[i]:offsets[i + 1]] = arrays.labels
            return int(shard["num_items"])

        with ThreadPoolExecutor(max_workers=8) as pool, \
                tqdm(total=len(self), unit="sample", desc="cache latents", leave=False) as bar:
            for n in pool.map(fill, range(len(m["shards"]))):
                bar.update(n)
        moments.flush()
        del moments
        np.save(os.path.join(self.directory, "labels.npy"), labels)
        os.replace(partial, os.path.join(self.directory, "moments.npy"))
