"""The deterministic, resumable, rank-sliced latent loader (docs/protocols.md,
*Data order and keyed randomness*).

The global stream is the concatenation of epochs; epoch e visits every dataset index once, in the
two-level order of :func:`lamamba.data.order.epoch_order` (shuffled shard blocks, samples shuffled
in each block). Global step k covers stream positions [s0 + k*G, s0 + (k+1)*G) for a start
``s0 = start_sample`` and global batch G; rank r of W takes positions [r*b, (r+1)*b) of each global
batch, b = G / W. A batch may straddle two blocks or two epochs, so nothing is dropped and every
sample is seen exactly once per epoch.

Everything random about a sample is keyed by (seed, dataset index, epoch) with
:mod:`lamamba.rng`: whether it is flipped (bit 0 of the keyed seed of purpose "flip") and the
posterior draw z = mean + std * eps (eps from :func:`~lamamba.rng.keyed_normals` of the keyed
seed of purpose "posterior", counter-based, so a batch is drawn at once). So the
batches depend on neither the number of ranks nor the number of DataLoader workers nor where the
run resumed, and a resume at ``samples_consumed`` seeks there without replaying anything.

Shards come through the node's bounded :class:`~lamamba.data.cache.ShardCache`: for each step a
reader keeps the blocks the global step touches plus the next block (fetched ahead, in the
background), and releases the rest.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lamamba.data.cache import CacheFullError, default_cache_dir
from lamamba.data.manifest import manifest_url_of, read_manifest
from lamamba.data.order import epoch_order
from lamamba.data.reader import ShardReader
from lamamba.data.shard_format import index_file_bytes
from lamamba.rng import keyed_normals, keyed_seeds, purpose_id

FLIP = purpose_id("flip")
POSTERIOR = purpose_id("posterior")
PREFETCH_FACTOR = 4  # steps each DataLoader worker builds ahead
CHUNK_VALUES = 1 << 16  # latent values per chunk of the keyed draw (see keyed_latents)
SERIAL_VALUES = (1 << 15) - 1  # torch runs an element-wise op under 32768 elements (its grain) on one thread


def keyed_flips(seed: int, index: np.ndarray, epochs: np.ndarray) -> np.ndarray:
    """(b,) 0/1: whether each sample is read flipped; bit 0 of ``keyed_seed(seed, FLIP, index, epoch)``."""
    return (keyed_seeds(seed, FLIP, index, epochs) & np.uint64(1)).astype(np.int64)


def keyed_latents(chosen: np.ndarray, index: np.ndarray, epochs: np.ndarray, seed: int, scale: float) -> torch.Tensor:
    """z = (mean + std * eps) * scale; ``chosen`` (b, 2, C, h, w) float16 = each sample's [mean, std]
    of its keyed flip; returns (b, C, h, w) float32.

    eps for a sample is ``keyed_normals([keyed_seed(seed, POSTERIOR, index, epoch)], C*h*w)``
    reshaped to (C, h, w). The draw goes through in chunks of about ``CHUNK_VALUES`` values, which
    keep numpy's temporaries in the CPU cache (a whole 256-sample batch at once was 2-3x slower).
    """
    b, n = len(index), int(np.prod(chosen.shape[2:]))
    seeds = keyed_seeds(seed, POSTERIOR, index, epochs)
    moments = _to_float32(chosen).reshape(b, 2, n)
    x = np.empty((b, n), np.float32)
    step = max(1, CHUNK_VALUES // n)
    for lo in range(0, b, step):
        z = x[lo:lo + step]
        np.multiply(keyed_normals(seeds[lo:lo + step], n), moments[lo:lo + step, 1], out=z)
        z += moments[lo:lo + step, 0]
        z *= np.float32(scale)
    return torch.from_numpy(x).view(b, *chosen.shape[2:])


def _to_float32(values: np.ndarray) -> np.ndarray:
    """float16 -> float32 through torch's vectorised cast (numpy's is scalar, 20x slower), in
    pieces below torch's intra-op grain: they stay on this thread and never queue for the caller's
    thread pool (one batch-wide cast was 70x slower on a busy 2-core machine)."""
    out = np.empty(values.shape, np.float32)
    src, dst = torch.from_numpy(values.reshape(-1)), torch.from_numpy(out.reshape(-1))
    for lo in range(0, len(src), SERIAL_VALUES):
        dst[lo:lo + SERIAL_VALUES].copy_(src[lo:lo + SERIAL_VALUES])
    return out


def required_cache_bytes(manifest: dict[str, Any], block_shards: int, window_samples: int) -> int:
    """Bytes of shards (with their index files) the readers of one node may pin at once: the
    blocks a span of ``window_samples`` stream positions can touch (one more if it crosses an
    epoch's short last block), plus the block fetched ahead; never more than the whole data set."""
    shards = [s for s in manifest["shards"] if s["num_items"]]
    stored = [s["size"] + index_file_bytes(s["num_items"]) for s in shards]
    k = min(block_shards, len(shards))
    largest = sum(sorted(stored, reverse=True)[:k])
    smallest = sum(sorted(s["num_items"] for s in shards)[:k])
    blocks = math.ceil(window_samples / smallest) + 3
    return min(blocks * largest, sum(stored))


class _RankBatches(Dataset):
    """Item k = this rank's part of global step k after ``start_sample`` (a pure function of k)."""

    def __init__(self, reader: ShardReader, manifest: dict[str, Any], global_batch: int, rank: int,
                 world_size: int, seed: int, start_sample: int, block_shards: int):
        self.reader = reader
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.seed = seed
        self.start_sample = start_sample
        self.block_shards = block_shards
        self.sizes = tuple(int(s["num_items"]) for s in manifest["shards"])
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.num_items = int(manifest["num_items"])
        self.scale = float(manifest["scale_factor"])

    def _order(self, epoch: int):
        return epoch_order(self.seed, epoch, self.sizes, self.block_shards)

    def _window(self, first: int, last: int, now: list[int]) -> list[int]:
        """Shards to keep for stream positions [first, last]: ``now`` first, then the rest of the
        blocks those positions touch, then the next block."""
        n = self.num_items
        wanted = dict.fromkeys(now)
        for epoch in range(first // n, last // n + 1):
            order = self._order(epoch)
            lo, hi = max(first, epoch * n) - epoch * n, min(last, epoch * n + n - 1) - epoch * n
            for block in range(int(order.block_of(np.array([lo]))[0]), int(order.block_of(np.array([hi]))[0]) + 1):
                wanted.update(dict.fromkeys(order.blocks[block]))
        order = self._order(last // n)
        after = int(order.block_of(np.array([last % n]))[0]) + 1
        ahead = order.blocks[after] if after < len(order.blocks) else self._order(last // n + 1).blocks[0]
        wanted.update(dict.fromkeys(ahead))
        return list(wanted)

    def _locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(epoch, dataset index, shard, row in shard) of each stream position."""
        n = self.num_items
        epochs = positions // n
        index = np.empty_like(positions)
        for epoch in np.unique(epochs):
            where = epochs == epoch
            index[where] = self._order(int(epoch)).index[positions[where] % n]
        shards = np.searchsorted(self.starts, index, side="right") - 1
        return epochs, index, shards, index - self.starts[shards]

    def check_first_step(self) -> None:
        """Fetch and check the shards of the first global step (every rank's), then release them:
        a missing or damaged shard there is an error before training starts, and the first step
        finds them in the cache. Nothing stays pinned (DataLoader workers fork after this)."""
        first = self.start_sample
        shards = self._locate(np.arange(first, first + self.global_batch, dtype=np.int64))[2]
        wanted = list(dict.fromkeys(shards.tolist()))
        try:
            self.reader.keep(wanted, urgent=len(wanted))
            for shard in wanted:
                self.reader.shard(shard)
        finally:
            self.reader.close()

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        first = self.start_sample + step * self.global_batch
        positions = np.arange(first + self.rank * self.local_batch, first + (self.rank + 1) * self.local_batch,
                              dtype=np.int64)
        epochs, index, shards, rows = self._locate(positions)
        now = list(dict.fromkeys(shards.tolist()))
        self.reader.keep(self._window(first, first + self.global_batch - 1, now), urgent=len(now))

        flips = keyed_flips(self.seed, index, epochs)
        chosen = np.empty((len(index), *self.reader.shape[1:]), dtype=np.float16)
        labels = np.empty(len(index), dtype=np.int64)
        for shard in now:  # the batch's samples shard by shard
            where = np.flatnonzero(shards == shard)
            opened = self.reader.shard(shard)
            chosen[where] = opened.gather(rows[where], flips[where])
            labels[where] = opened.index.labels[rows[where]]
        return {
            "x": keyed_latents(chosen, index, epochs, self.seed, self.scale),
            "y": torch.from_numpy(labels),
            "index": torch.from_numpy(index),
            "epoch": torch.from_numpy(epochs),
        }


class _Steps(Sampler):
    """0, 1, 2, ... forever."""

    def __iter__(self) -> Iterator[int]:
        step = 0
        while True:
            yield step
            step += 1


class LatentLoader:
    """Per-rank batches of latents for each global step, forever (the trainer decides when to stop).

    Each item is a dict: "x" (b, C, R, R) float32 latents z = (mean + std * eps) * scale_factor of
    the chosen flip, "y" (b,) int64 labels, "index" (b,) int64 dataset indices, "epoch" (b,) int64.
    ``samples_consumed`` counts global samples up to and including the last yielded step; pass it
    back as ``start_sample`` to resume. ``manifest`` is the manifest dict. ``DRAW_VERSION`` names
    the definition of the keyed draws (docs/protocols.md), recorded in checkpoints: 1 = eps from one
    torch generator per sample (checkpoints without the field), 2 = :func:`lamamba.rng.keyed_normals`.

    Args:
        manifest_url: the manifest file or its folder (local path or URL).
        global_batch: samples per global step, divisible by ``world_size``.
        rank, world_size: this rank's slice of every global batch.
        seed: decides the order and every keyed draw.
        start_sample: global samples already consumed (resume point).
        num_workers: DataLoader worker processes (0 = build batches in this process).
        storage_options: fsspec options for reading the manifest and shards.
        cache_dir: the node's shard cache (default $LAMAMBA_DATA_CACHE or ~/.cache/lamamba/latents).
        cache_limit_gb: most GB of shards on the node's disk (shared by every reader using ``cache_dir``).
        block_shards: shards per block of the two-level order (part of the order, like the seed).
        fetch_workers: shards fetched at once per process.
        cache_options: passed to :class:`~lamamba.data.cache.ShardCache` (retries, backoff, waits).
    """

    DRAW_VERSION = 2

    def __init__(self, manifest_url: str, global_batch: int, rank: int, world_size: int, seed: int,
                 start_sample: int = 0, num_workers: int = 0, storage_options: dict | None = None,
                 cache_dir: str | None = None, cache_limit_gb: float = 50.0, block_shards: int = 64,
                 fetch_workers: int = 4, **cache_options: Any):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if global_batch < 1 or global_batch % world_size:
            raise ValueError(f"global_batch {global_batch} is not a positive multiple of world_size {world_size}")
        if start_sample < 0:
            raise ValueError(f"start_sample must be >= 0, got {start_sample}")
        if block_shards < 1 or fetch_workers < 1 or num_workers < 0:
            raise ValueError(f"block_shards and fetch_workers must be >= 1 and num_workers >= 0, got "
                             f"{block_shards}, {fetch_workers}, {num_workers}")
        manifest_url = manifest_url_of(manifest_url)
        self.manifest: dict[str, Any] = read_manifest(manifest_url, storage_options)
        limit = int(cache_limit_gb * 1e9)
        depth = num_workers * PREFETCH_FACTOR
        need = required_cache_bytes(self.manifest, block_shards, (depth + 2) * global_batch)
        if need > limit:
            raise CacheFullError(f"data.cache_limit_gb={cache_limit_gb:g} cannot hold the {need / 1e9:.3g} GB of "
                                 f"shards a node reads at once with data.block_shards={block_shards} and a global "
                                 f"batch of {global_batch}; raise the limit or lower block_shards")
        self.global_batch = global_batch
        self.num_workers = num_workers
        self.samples_consumed = start_sample
        self.reader = ShardReader(manifest_url, self.manifest, storage_options, cache_dir or default_cache_dir(),
                                  limit, fetch_workers, **cache_options)
        self._batches = _RankBatches(self.reader, self.manifest, global_batch, rank, world_size, seed,
                                     start_sample, block_shards)
        self._batches.check_first_step()

    def __len__(self) -> int:
        """Global steps per epoch (rounded up; batches straddle epochs)."""
        return -(-int(self.manifest["num_items"]) // self.global_batch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # Iterating again continues from the current position, never from the start.
        self._batches.start_sample = self.samples_consumed
        if self.num_workers == 0:
            source = (self._batches[step] for step in _Steps())
        else:
            source = iter(DataLoader(self._batches, batch_size=None, sampler=_Steps(),
                                     num_workers=self.num_workers, persistent_workers=False,
                                     prefetch_factor=PREFETCH_FACTOR))
        for batch in source:
            self.samples_consumed += self.global_batch
            yield batch

    def close(self) -> None:
        """Release the shards this process holds (workers release theirs when they exit)."""
        self.reader.close()
