"""The latent shard format (docs/protocols.md, *Latent shards and the
manifest*): webdataset tar files, one sample per key.

Each sample ``<key>`` (the 9-digit position of the image in the shard plan) has three members:

- ``<key>.moments.npy``: float16 array (2, 2, C, h, w): axis 0 = (image, horizontally flipped
  image), axis 1 = (posterior mean, posterior std), unscaled VAE latents;
- ``<key>.cls``: the class index as ASCII digits;
- ``<key>.src.txt``: the source key (the image's path relative to the source root, or its id).

Members are written in key order with fixed metadata (mtime 0, no owner), so the same samples
always give the same bytes and the same checksum. Any tar reader (``webdataset.WebDataset``,
``tarfile``) reads them.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass

import numpy as np

MOMENTS = "moments.npy"
LABEL = "cls"
SOURCE = "src.txt"


class ShardError(RuntimeError):
    """A shard is missing, truncated or corrupt; the message names it."""


@dataclass
class ShardSample:
    key: str
    moments: np.ndarray  # (2, 2, C, h, w) float16
    label: int
    source: str


@dataclass
class ShardArrays:
    """A decoded shard: ``moments`` (n, 2, 2, C, h, w) float16, ``labels`` (n,) int64, keys, sources."""

    moments: np.ndarray
    labels: np.ndarray
    keys: list[str]
    sources: list[str]


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def pack_shard(samples: list[ShardSample]) -> bytes:
    """Serialise samples (in the given order) into the bytes of one tar shard."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            if s.moments.dtype != np.float16 or s.moments.ndim != 5 or s.moments.shape[:2] != (2, 2):
                raise ValueError(f"sample {s.key}: moments must be float16 (2, 2, C, h, w), "
                                 f"got {s.moments.dtype} {s.moments.shape}")
            npy = io.BytesIO()
            np.save(npy, np.ascontiguousarray(s.moments), allow_pickle=False)
            _add_member(tar, f"{s.key}.{MOMENTS}", npy.getvalue())
            _add_member(tar, f"{s.key}.{LABEL}", str(int(s.label)).encode())
            _add_member(tar, f"{s.key}.{SOURCE}", s.source.encode())
    return buf.getvalue()


def unpack_shard(data: bytes, name: str) -> ShardArrays:
    """Decode the bytes of shard ``name``; any damage raises :class:`ShardError` naming it."""
    fields: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, field = member.name.partition(".")
                fields.setdefault(key, {})[field] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ShardError(f"shard {name} is corrupt or truncated: {err}") from None
    moments, labels, keys, sources = [], [], [], []
    for key in sorted(fields):
        sample = fields[key]
        missing = {MOMENTS, LABEL, SOURCE} - set(sample)
        if missing:
            raise ShardError(f"shard {name}: sample {key} lacks {sorted(missing)} (truncated shard?)")
        try:
            arr = np.load(io.BytesIO(sample[MOMENTS]), allow_pickle=False)
            label = int(sample[LABEL])
        except (ValueError, OSError, EOFError) as err:
            raise ShardError(f"shard {name}: sample {key} cannot be decoded: {err}") from None
        if arr.dtype != np.float16 or arr.ndim != 5 or arr.shape[:2] != (2, 2):
            raise ShardError(f"shard {name}: sample {key} has moments {arr.dtype} {arr.shape}, "
                             "expected float16 (2, 2, C, h, w)")
        if moments and arr.shape != moments[0].shape:
            raise ShardError(f"shard {name}: sample {key} has shape {arr.shape}, others {moments[0].shape}")
        moments.append(arr)
        labels.append(label)
        keys.append(key)
        sources.append(sample[SOURCE].decode())
    if not moments:
        raise ShardError(f"shard {name} holds no samples")
    return ShardArrays(np.stack(moments), np.asarray(labels, dtype=np.int64), keys, sources)
