"""Keyed randomness: every random draw that touches a sample is a pure function of integer keys.

A sample's flip, posterior noise, timestep, diffusion noise and label drop depend on (seed, global
sample index, epoch), and a sample-set image's noise on (seed, index), never on a per-rank generator
stream (docs/protocols.md, *Data order and keyed randomness*), so that results do not depend on the
number of workers, the batch a sample lands in, or where a run was resumed. Draws are made on the
CPU (whose generator is the same on every machine) and then moved to the target device.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

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
    blob = b"".join(int(k).to_bytes(8, "little", signed=True) for k in keys)
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little") >> 1


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
