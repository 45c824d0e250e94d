"""Keyed randomness: every random draw that touches a sample is a pure function of integer keys.

A sample's flip, posterior noise, timestep, diffusion noise and label drop depend on (seed, global
sample index, epoch), and a sample-set image's noise on (seed, index), never on a per-rank generator
stream (docs/protocols.md, *Data order and keyed randomness*), so that results do not depend on the
number of workers, the batch a sample lands in, or where a run was resumed. Draws are made on the
CPU (whose generator is the same on every machine) and then moved to the target device: from one
seeded torch generator per sample, or, for the loader's posterior noise, from the counter-based
:func:`keyed_normals`, which draws a whole batch in a few array operations.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterable, Sequence

import numpy as np
import torch

# Distinct purposes get distinct streams even under the same (seed, index, epoch).
PURPOSES = {
    "flip": 1,
    "posterior": 2,
    "timestep": 3,
    "noise": 4,
    "label_drop": 5,
    "sample": 6,
    "shard_order": 7,
    "block_order": 8,
}


def keyed_seed(*keys: int) -> int:
    """A 63-bit seed from a tuple of non-negative integers (blake2b, so keys never collide by sum)."""
    blob = struct.pack(f"<{len(keys)}q", *keys)
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little") >> 1


def keyed_seeds(seed: int, purpose: int, index: np.ndarray, epochs: np.ndarray) -> np.ndarray:
    """(b,) uint64: ``keyed_seed(seed, purpose, index[k], epochs[k])`` of each sample."""
    return np.fromiter((keyed_seed(seed, purpose, i, e) for i, e in zip(index.tolist(), epochs.tolist())),
                       dtype=np.uint64, count=len(index))


# SplitMix64 (Steele, Lea and Flood 2014): the golden-ratio increment and the output mix.
_GAMMA = 0x9E3779B97F4A7C15
_MIX = ((np.uint64(30), np.uint64(0xBF58476D1CE4E5B9)), (np.uint64(27), np.uint64(0x94D049BB133111EB)))


def keyed_normals(seeds: np.ndarray, n: int) -> np.ndarray:
    """(b, n) float32 standard normals, row k a pure function of ``seeds[k]`` (b,) uint64 and ``n`` (even).

    Counter-based, so a whole batch is a few array operations: with w_j the j-th output
    (j = 0 .. n/2 - 1) of SplitMix64 seeded with the row's seed, i.e. the mix of
    seed + (j + 1) * 0x9E3779B97F4A7C15 mod 2^64, hi and lo the top 24 bits of its high and low
    32-bit halves, the Box-Muller pair r = sqrt(-2 ln((hi + 1) / 2^24)), a = lo * 2 pi / 2^24 gives
    element j = r cos a and element n/2 + j = r sin a (float32 arithmetic).
    """
    if n % 2:
        raise ValueError(f"keyed_normals draws pairs: n must be even, got {n}")
    w = seeds.astype(np.uint64)[:, None] + _counters(n // 2)[None, :]
    shifted = np.empty_like(w)
    for shift, factor in _MIX:
        w ^= np.right_shift(w, shift, out=shifted)
        w *= factor
    w ^= np.right_shift(w, np.uint64(31), out=shifted)
    words = w.view(np.uint32)  # (b, n): the low and high 32-bit halves of each w_j (little-endian)
    words >>= np.uint32(8)
    words = words.view(np.int32)  # < 2^24: int32 casts to float32 in SIMD, uint32 does not
    radius = words[:, 1::2].astype(np.float32)
    radius += np.float32(1)
    radius *= np.float32(2.0 ** -24)
    np.log(radius, out=radius)
    radius *= np.float32(-2)
    np.sqrt(radius, out=radius)
    angle = words[:, 0::2].astype(np.float32)
    angle *= np.float32(2 * np.pi * 2.0 ** -24)
    out = np.empty((len(seeds), n), np.float32)
    np.multiply(radius, np.cos(angle), out=out[:, :n // 2])
    np.multiply(radius, np.sin(angle, out=angle), out=out[:, n // 2:])
    return out


@functools.lru_cache(maxsize=8)
def _counters(pairs: int) -> np.ndarray:
    """(pairs,) uint64: (j + 1) * gamma mod 2^64, SplitMix64's state steps."""
    return np.arange(1, pairs + 1, dtype=np.uint64) * np.uint64(_GAMMA)  # wraps: integer arrays never warn


def keyed_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded by ``keyed_seed(*keys)``."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(keyed_seed(*keys))
    return gen


def purpose_id(purpose: str) -> int:
    try:
        return PURPOSES[purpose]
    except KeyError:
        raise ValueError(f"unknown randomness purpose {purpose!r}; known: {sorted(PURPOSES)}") from None


class PerSampleGenerators:
    """One CPU generator per sample, keyed by (seed, purpose, *sample_keys).

    ``gens.randn((4, 32, 32))`` returns a (B, 4, 32, 32) tensor whose row i depends only on
    sample i's keys and on how many draws were made before, never on the batch composition.
    """

    def __init__(self, seed: int, purpose: str, sample_keys: Iterable[Sequence[int] | int]):
        pid = purpose_id(purpose)
        self.generators = [
            keyed_generator(seed, pid, *(k if isinstance(k, Sequence) else (k,))) for k in sample_keys
        ]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal draws of shape (B, *shape)."""
        out = torch.stack([torch.randn(tuple(shape), generator=g) for g in self.generators])
        return out.to(device=device, dtype=dtype)

    def rand(self, shape: Sequence[int] = (), device: torch.device | str = "cpu") -> torch.Tensor:
        """Uniform [0, 1) draws of shape (B, *shape)."""
        out = torch.stack([torch.rand(tuple(shape), generator=g) for g in self.generators])
        return out.to(device)

    def randint(self, high: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """One integer in [0, high) per sample, shape (B,)."""
        out = torch.stack([torch.randint(high, (), generator=g) for g in self.generators])
        return out.to(device)
