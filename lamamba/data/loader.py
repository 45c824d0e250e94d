"""The deterministic, resumable, rank-sliced latent loader (docs/protocols.md,
*Data order and keyed randomness*).

The global stream is the concatenation of epochs; epoch e visits every dataset index once, in
the order ``global_order(seed, e, N)``. Global step k covers stream positions
[s0 + k*G, s0 + (k+1)*G) for a start ``s0 = start_sample`` and global batch G; rank r of W takes
positions [r*b, (r+1)*b) of each global batch, b = G / W. A batch may straddle two epochs, so
nothing is dropped and every sample is seen exactly once per epoch.

Everything random about a sample is keyed by (seed, dataset index, epoch) with
:mod:`lamamba.rng`: whether it is flipped (bit 0 of the keyed seed of purpose "flip") and the
posterior draw z = mean + std * eps (eps from the keyed generator of purpose "posterior"). So the batches depend on neither the number of
ranks nor the number of DataLoader workers nor where the run resumed, and a resume at
``samples_consumed`` seeks there without replaying anything.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lamamba.data.cache import LatentArrays
from lamamba.rng import keyed_seed, purpose_id

FLIP = purpose_id("flip")
POSTERIOR = purpose_id("posterior")


@functools.lru_cache(maxsize=4)
def global_order(seed: int, epoch: int, num_items: int) -> np.ndarray:
    """The permutation of dataset indices that epoch ``epoch`` visits (read-only, cached)."""
    order = np.random.Generator(np.random.PCG64(keyed_seed(seed, epoch))).permutation(num_items)
    order.flags.writeable = False
    return order


def keyed_flips(seed: int, index: np.ndarray, epochs: np.ndarray) -> np.ndarray:
    """(b,) 0/1: whether each sample is read flipped; bit 0 of ``keyed_seed(seed, FLIP, index, epoch)``."""
    return np.array([keyed_seed(seed, FLIP, i, e) & 1 for i, e in zip(index.tolist(), epochs.tolist())],
                    dtype=np.int64)


def keyed_latents(moments: np.ndarray, index: np.ndarray, epochs: np.ndarray, seed: int,
                  shape: tuple[int, int, int], scale: float) -> torch.Tensor:
    """z = (mean + std * eps) * scale for the keyed flip of each sample; (b, C, h, w) float32.

    ``moments`` is (N, 2, 2, C, h, w) float16. eps for a sample is the first normal draw of the CPU
    generator seeded with ``keyed_seed(seed, POSTERIOR, index, epoch)``, i.e. exactly
    ``PerSampleGenerators(seed, "posterior", [(index, epoch)]).randn(shape)``. The work is done one
    sample at a time on purpose: these small ops stay on one thread and never contend with the
    caller's intra-op thread pool (batch-wide ops were 5x slower on a busy machine).
    """
    chosen = torch.from_numpy(moments[index, keyed_flips(seed, index, epochs)])  # (b, 2, C, h, w)
    x = torch.empty((len(index), *shape))
    generator = torch.Generator()
    for row, (i, e) in enumerate(zip(index.tolist(), epochs.tolist())):
        generator.manual_seed(keyed_seed(seed, POSTERIOR, i, e))
        z = x[row]
        z.normal_(generator=generator)
        z.mul_(chosen[row, 1]).add_(chosen[row, 0]).mul_(scale)
    return x


class _RankBatches(Dataset):
    """Item k = this rank's part of global step k after ``start_sample`` (a pure function of k)."""

    def __init__(self, arrays: LatentArrays, global_batch: int, rank: int, world_size: int, seed: int,
                 start_sample: int):
        self.arrays = arrays
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.seed = seed
        self.start_sample = start_sample
        m = arrays.manifest
        self.latent_shape = (int(m["channels"]), int(m["latent_size"]), int(m["latent_size"]))
        self.scale = float(m["scale_factor"])

    def positions(self, step: int) -> np.ndarray:
        first = self.start_sample + step * self.global_batch + self.rank * self.local_batch
        return np.arange(first, first + self.local_batch, dtype=np.int64)

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        n = len(self.arrays)
        positions = self.positions(step)
        epochs = positions // n
        index = np.empty_like(positions)
        for epoch in np.unique(epochs):
            where = epochs == epoch
            index[where] = global_order(self.seed, int(epoch), n)[positions[where] % n]
        x = keyed_latents(self.arrays.moments, index, epochs, self.seed, self.latent_shape, self.scale)
        return {
            "x": x,
            "y": torch.from_numpy(self.arrays.labels[index]),
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
    back as ``start_sample`` to resume. ``manifest`` is the manifest dict.

    Args:
        manifest_url: the manifest file or its folder (local path or URL).
        global_batch: samples per global step, divisible by ``world_size``.
        rank, world_size: this rank's slice of every global batch.
        seed: decides the order and every keyed draw.
        start_sample: global samples already consumed (resume point).
        num_workers: DataLoader worker processes (0 = build batches in this process).
        storage_options: fsspec options for reading the manifest and shards.
        cache_dir: where shards are decoded to (default $LAMAMBA_DATA_CACHE or ~/.cache/lamamba/latents).
    """

    def __init__(self, manifest_url: str, global_batch: int, rank: int, world_size: int, seed: int,
                 start_sample: int = 0, num_workers: int = 0, storage_options: dict | None = None,
                 cache_dir: str | None = None):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if global_batch < 1 or global_batch % world_size:
            raise ValueError(f"global_batch {global_batch} is not a positive multiple of world_size {world_size}")
        if start_sample < 0:
            raise ValueError(f"start_sample must be >= 0, got {start_sample}")
        self.arrays = LatentArrays(manifest_url, storage_options, cache_dir)
        self.manifest: dict[str, Any] = self.arrays.manifest
        self.global_batch = global_batch
        self.num_workers = num_workers
        self.samples_consumed = start_sample
        self._batches = _RankBatches(self.arrays, global_batch, rank, world_size, seed, start_sample)

    def __len__(self) -> int:
        """Global steps per epoch (rounded up; batches straddle epochs)."""
        return -(-len(self.arrays) // self.global_batch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # Iterating again continues from the current position, never from the start.
        self._batches.start_sample = self.samples_consumed
        if self.num_workers == 0:
            source = (self._batches[step] for step in _Steps())
        else:
            source = iter(DataLoader(self._batches, batch_size=None, sampler=_Steps(),
                                     num_workers=self.num_workers, persistent_workers=False,
                                     prefetch_factor=4))
        for batch in source:
            self.samples_consumed += self.global_batch
            yield batch
