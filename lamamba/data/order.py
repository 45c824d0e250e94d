"""The two-level sample order of an epoch: a shuffled sequence of shard blocks, samples shuffled
within each block (protocols: a pure function of (seed, epoch) and the data set).

Epoch e permutes the shards with the generator keyed by (seed, "shard_order", e), cuts the
permuted sequence into blocks of ``block_shards`` consecutive shards (the last one may be
shorter), and visits each block's samples in the permutation keyed by
(seed, "block_order", e, block). A node therefore needs only the shards of the block being read
(and the next one, fetched ahead) on local disk, never the whole data set; with ``block_shards``
at least the number of shards the order is one permutation of the whole epoch (the "full copy").

Nothing here depends on ranks, nodes, DataLoader workers or the cache size. What the two levels
give up against a full permutation is measured in docs/data.md (benchmarks/bench_reader.py
``--mixing``); the encoder's strided shard plan makes every shard a cross-section of the data set
so that a block's class mix is close to the whole data set's.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from lamamba.rng import keyed_seed, purpose_id

SHARD_ORDER = purpose_id("shard_order")
BLOCK_ORDER = purpose_id("block_order")


def _generator(*keys: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(keyed_seed(*keys)))


@dataclass(frozen=True)
class EpochOrder:
    """One epoch's order.

    ``index[p]`` is the dataset index visited at position p of the epoch (N,);
    ``blocks[j]`` the shard indices of block j (in the order they are fetched);
    ``block_end[j]`` the first epoch position after block j (cumulative sample counts).
    """

    index: np.ndarray
    blocks: tuple[tuple[int, ...], ...]
    block_end: np.ndarray

    def block_of(self, positions: np.ndarray) -> np.ndarray:
        """The block each epoch position (0 <= p < N) lies in."""
        return np.searchsorted(self.block_end, positions, side="right")


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, shard_sizes: tuple[int, ...], block_shards: int) -> EpochOrder:
    """The order of epoch ``epoch`` over shards of ``shard_sizes`` samples (dataset indices are
    the shards' samples concatenated in manifest order). Cached: the same few epochs are asked
    for again and again."""
    if block_shards < 1:
        raise ValueError(f"block_shards must be >= 1, got {block_shards}")
    sizes = np.asarray(shard_sizes, dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    shards = _generator(seed, SHARD_ORDER, epoch).permutation(len(sizes))
    shards = shards[sizes[shards] > 0]  # empty shards have nothing to visit or fetch
    blocks = tuple(tuple(int(s) for s in shards[i:i + block_shards]) for i in range(0, len(shards), block_shards))
    parts = []
    for j, block in enumerate(blocks):
        members = np.concatenate([np.arange(first[s], first[s] + sizes[s]) for s in block])
        parts.append(members[_generator(seed, BLOCK_ORDER, epoch, j).permutation(len(members))])
    index = np.concatenate(parts)
    block_end = np.cumsum([sizes[list(b)].sum() for b in blocks])
    index.flags.writeable = False
    block_end.flags.writeable = False
    return EpochOrder(index, blocks, block_end)
