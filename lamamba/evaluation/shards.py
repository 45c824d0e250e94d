"""The on-disk layout of a sample set: fixed index shards, each with a done-marker.

    <out>/metadata.json                 the protocol (written before any shard)
    <out>/shard_00000.npz               arr_0 (n, H, W, C) uint8 NHWC (ADM's format), labels, indices
    <out>/shard_00000.features.npz      pool / spatial / logits float32 (optional, "features only")
    <out>/shard_00000.done              JSON marker, written last: the shard is complete

Shard i always holds sample indices [i * shard_size, min((i + 1) * shard_size, N)), whatever
the number of workers, so a rerun only computes shards without a marker.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass

import numpy as np

from lamamba import storage

METADATA = "metadata.json"
_DONE = re.compile(r"^shard_(\d{5,})\.done$")


def images_name(shard: int) -> str:
    return f"shard_{shard:05d}.npz"


def features_name(shard: int) -> str:
    return f"shard_{shard:05d}.features.npz"


def done_name(shard: int) -> str:
    return f"shard_{shard:05d}.done"


@dataclass(frozen=True)
class ShardPlan:
    """Fixed shards of the index range [0, num_samples)."""

    num_samples: int
    shard_size: int

    def __post_init__(self):
        if self.num_samples <= 0 or self.shard_size <= 0:
            raise ValueError(f"num_samples and shard_size must be positive, got {self.num_samples}, {self.shard_size}")

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.shard_size)

    def indices(self, shard: int) -> range:
        start = shard * self.shard_size
        return range(start, min(start + self.shard_size, self.num_samples))


def done_shards(out: str) -> list[int]:
    """Shard ids whose done-marker exists under ``out``, sorted."""
    return sorted(int(m.group(1)) for name in storage.listdir(out) if (m := _DONE.match(name)))


def write_npz(url: str, **arrays: np.ndarray) -> None:
    """Write arrays as an uncompressed .npz in one atomic put (readable by ``np.load``)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    storage.write_bytes(url, buf.getvalue())


def read_npz(url: str) -> dict[str, np.ndarray]:
    """All arrays of an .npz at a local path or URL."""
    if not storage.exists(url):
        raise FileNotFoundError(f"no such file: {url}")
    with np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False) as f:
        return {key: f[key] for key in f.files}


def write_json(url: str, data: dict) -> None:
    storage.write_bytes(url, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_json(url: str) -> dict:
    return json.loads(storage.read_bytes(url))
