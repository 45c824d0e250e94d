"""The on-disk layout of a sample set: fixed index shards, each with a done-marker.

    <out>/metadata.json                 the protocol (written before any shard)
    <out>/shard_00000.npz               arr_0 (n, H, W, C) uint8 NHWC (ADM's format), labels, indices
    <out>/shard_00000.features.npz      pool / spatial / logits float32 (optional, "features only")
    <out>/shard_00000.done              JSON marker, written last: the shard is complete, with
                                        each file's name, size and sha256 (and the host that
                                        computed it)

Shard i always holds sample indices [i * shard_size, min((i + 1) * shard_size, N)), whatever
the number of workers, so a rerun only computes shards without a valid marker. A marker is valid
when it parses and every file it lists exists with the recorded size and sha256
(:func:`verified_files`); evaluate checks the same before it reads a shard, and a damaged shard
is an error naming it (:class:`SampleSetError`). File names in a marker are data: they must
stay inside the sample set (:func:`lamamba.storage.safe_join`).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Iterator
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


class SampleSetError(ValueError):
    """A shard of a sample set is unfinished, damaged or not what its marker says; the message names it."""


def done_shards(out: str) -> list[int]:
    """Shard ids whose done-marker exists under ``out``, sorted (see :func:`verified_files`)."""
    return sorted(int(m.group(1)) for name in storage.listdir(out) if (m := _DONE.match(name)))


def write_npz(url: str, **arrays: np.ndarray) -> dict:
    """Write arrays as an uncompressed .npz in one atomic put (readable by ``np.load``); returns
    the ``{"size", "sha256"}`` of the bytes written, for a done-marker."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    storage.write_bytes(url, data)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def verified_files(out: str, shard: int) -> dict[str, str]:
    """``{kind: URL}`` of shard ``shard``'s files ("images", "features") after checking them against
    its done-marker: each exists with the recorded size and sha256. Raises :class:`SampleSetError`
    naming the shard and the reason (no marker, unreadable marker, missing or damaged file)."""
    marker_url = storage.join(out, done_name(shard))
    try:
        marker = json.loads(storage.read_bytes(marker_url))
        files = marker["files"]
        if not isinstance(files, dict) or not files:
            raise TypeError("no files listed")
    except FileNotFoundError:
        raise SampleSetError(f"shard {shard} of {out} is not finished (no {done_name(shard)})") from None
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise SampleSetError(f"shard {shard} of {out}: its marker {done_name(shard)} is unreadable ({err})") from None
    urls = {}
    for kind, entry in files.items():
        if not isinstance(entry, dict) or not {"name", "size", "sha256"} <= set(entry):
            raise SampleSetError(f"shard {shard} of {out}: its marker lists {kind} without a size and sha256 "
                                 f"(written by an older lamamba); rerun `lamamba sample` to redo it")
        try:
            url = storage.safe_join(out, str(entry["name"]), what=f"shard {shard}'s {kind} file")
        except storage.UnsafePathError as err:
            raise SampleSetError(str(err)) from None
        fs, path = storage.filesystem(url)
        try:
            size = fs.info(path)["size"]
        except FileNotFoundError:
            raise SampleSetError(f"shard {shard} of {out}: {entry['name']} is missing; rerun `lamamba sample` "
                                 f"to redo it") from None
        if size != entry["size"]:
            damage = f"{size} bytes, its marker says {entry['size']}"
        elif storage.sha256(url) != entry["sha256"]:
            damage = "its sha256 differs from its marker's"
        else:
            urls[kind] = url
            continue
        raise SampleSetError(f"shard {shard} of {out}: {entry['name']} is damaged ({damage}); rerun "
                             f"`lamamba sample` to redo it")
    return urls


def read_npz(url: str, skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The arrays of an .npz at a local path or URL, except the keys in ``skip`` (members are read
    one by one, so a skipped multi-GB ``arr_0`` is never loaded)."""
    if not storage.exists(url):
        raise FileNotFoundError(f"no such file: {url}")
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as handle, np.load(handle, allow_pickle=False) as f:
        return {key: f[key] for key in f.files if key not in skip}


def npz_keys(url: str) -> list[str]:
    """The array names in an .npz (its zip members without ".npy")."""
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as handle, zipfile.ZipFile(handle) as archive:
        return [name[:-4] for name in archive.namelist() if name.endswith(".npy")]


def iter_npz_array(url: str, key: str, batch_size: int) -> Iterator[np.ndarray]:
    """Stream array ``key`` of an uncompressed .npz in batches along its first axis (ADM's reference
    images at 512 px are 8 GB: they are never in memory at once)."""
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as handle, zipfile.ZipFile(handle) as archive:
        with archive.open(f"{key}.npy") as member:
            shape, fortran, dtype = _npy_header(member, url, key)
            if fortran or dtype.hasobject:
                raise ValueError(f"{url}: {key} is stored in an unsupported layout")
            row = int(np.prod(shape[1:])) * dtype.itemsize
            for start in range(0, shape[0], batch_size):
                n = min(batch_size, shape[0] - start)
                data = member.read(n * row)
                if len(data) != n * row:
                    raise ValueError(f"{url}: {key} is truncated")
                yield np.frombuffer(data, dtype=dtype).reshape(n, *shape[1:])


def npz_array_length(url: str, key: str) -> int:
    """The first dimension of array ``key`` without reading its data."""
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as handle, zipfile.ZipFile(handle) as archive:
        with archive.open(f"{key}.npy") as member:
            return int(_npy_header(member, url, key)[0][0])


def _npy_header(member, url: str, key: str):
    """(shape, fortran_order, dtype) of an .npy stream positioned at its start."""
    version = np.lib.format.read_magic(member)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"{url}: {key} has .npy format version {version}, expected 1.0 or 2.0")
    return readers[version](member)


def write_json(url: str, data: dict) -> None:
    storage.write_bytes(url, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_json(url: str) -> dict:
    return json.loads(storage.read_bytes(url))
