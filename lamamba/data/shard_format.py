"""The latent shard format (docs/protocols.md, *Latent shards and the
manifest*): webdataset tar files, one sample per key.

Each sample ``<key>`` (the 9-digit position of the image in the source listing) has three members:

- ``<key>.moments.npy``: float16 array (2, 2, C, h, w): axis 0 = (image, horizontally flipped
  image), axis 1 = (posterior mean, posterior std), unscaled VAE latents;
- ``<key>.cls``: the class index as ASCII digits;
- ``<key>.src.txt``: the source key (the image's path relative to the source root, or its id).

Shards are written with webdataset's ``TarWriter`` (USTAR, fixed metadata: mtime 0, no owner),
so the same samples always give the same bytes and checksum, and ``webdataset.WebDataset`` or
``tarfile`` read them. The reader does not stream them: it indexes a shard's members once
(:func:`index_shard`, a scan of the 512-byte USTAR headers) and then reads any sample's moments
in place from a memory map, which a block-shuffled order needs (webdataset's iterator is
sequential and exposes no member offsets). The node cache keeps that index in a small file beside
the cached shard (:meth:`ShardIndex.to_bytes`), so the scan runs once per node, not per process.
"""

from __future__ import annotations

import io
import mmap
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lamamba import storage

MOMENTS = "moments.npy"
LABEL = "cls"
SOURCE = "src.txt"
FIELDS = (MOMENTS, LABEL, SOURCE)
_BLOCK = 512


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


def pack_shard(samples: list[ShardSample]) -> bytes:
    """Serialise samples (in the given order) into the bytes of one tar shard."""
    import webdataset  # the writer's dependency only: importing it costs seconds

    buf = io.BytesIO()
    with webdataset.TarWriter(buf, user="", group="", mode=0o644, mtime=0, encoder=False) as sink:
        for s in samples:
            if s.moments.dtype != np.float16 or s.moments.ndim != 5 or s.moments.shape[:2] != (2, 2):
                raise ValueError(f"sample {s.key}: moments must be float16 (2, 2, C, h, w), "
                                 f"got {s.moments.dtype} {s.moments.shape}")
            npy = io.BytesIO()
            np.save(npy, np.ascontiguousarray(s.moments), allow_pickle=False)
            sink.write({"__key__": s.key, MOMENTS: npy.getvalue(), LABEL: str(int(s.label)).encode(),
                        SOURCE: s.source.encode()})
    return buf.getvalue()


def _members(buf, name: str) -> Iterator[tuple[str, int, int]]:
    """(member name, data offset, size) of each regular file in a USTAR archive held in ``buf``."""
    pos, end = 0, len(buf)
    while pos + _BLOCK <= end:
        header = bytes(buf[pos:pos + _BLOCK])
        if not header.strip(b"\0"):
            return  # the end-of-archive marker
        if header[257:262] != b"ustar":
            raise ShardError(f"shard {name} is corrupt: no tar header at byte {pos}")
        member = header[:100].split(b"\0", 1)[0]
        prefix = header[345:500].split(b"\0", 1)[0]
        try:
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            member = (prefix + b"/" + member if prefix else member).decode()
        except (ValueError, UnicodeDecodeError):
            raise ShardError(f"shard {name} is corrupt: bad tar header at byte {pos}") from None
        data = pos + _BLOCK
        if data + size > end:
            raise ShardError(f"shard {name} is truncated: member {member!r} runs past its end")
        if header[156:157] in (b"0", b"\0"):
            yield member, data, size
        pos = data + -(-size // _BLOCK) * _BLOCK
    raise ShardError(f"shard {name} is truncated: no end-of-archive marker")


def _npy_header(buf, offset: int, size: int, name: str, key: str) -> tuple[int, tuple[int, ...]]:
    """(header length, shape) of a float16 C-order .npy member; anything else raises."""
    head = io.BytesIO(bytes(buf[offset:offset + min(size, 4096)]))
    try:
        version = np.lib.format.read_magic(head)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(head)
    except (ValueError, OSError, EOFError) as err:
        raise ShardError(f"shard {name}: sample {key} cannot be decoded: {err}") from None
    length = head.tell()
    if dtype != np.float16 or fortran or len(shape) != 5 or shape[:2] != (2, 2) \
            or length + 2 * int(np.prod(shape)) != size:
        raise ShardError(f"shard {name}: sample {key} has moments {dtype} {shape}, expected float16 (2, 2, C, h, w)")
    return length, tuple(int(d) for d in shape)


@dataclass
class ShardIndex:
    """Where each sample of one shard lies: ``offsets`` (n,) int64 byte offsets of the moments' data
    (even: float16 values), ``shape`` (2, 2, C, h, w), ``labels`` (n,) int64."""

    offsets: np.ndarray
    shape: tuple[int, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def count(self) -> int:
        """float16 values per sample."""
        return 4 * self.shape[2] * self.shape[3] * self.shape[4]

    def moments(self, buf, row: int) -> np.ndarray:
        """Sample ``row``'s moments (2, 2, C, h, w) float16, a read-only view into ``buf``."""
        return np.frombuffer(buf, np.float16, self.count, int(self.offsets[row])).reshape(self.shape)

    def to_bytes(self) -> bytes:
        """The index file kept beside a cached shard: little-endian int64 C, h, w, n, then the n
        offsets, then the n labels (:func:`index_file_bytes` of them)."""
        head = np.array([*self.shape[2:], len(self)], np.int64)
        return np.concatenate([head, self.offsets, self.labels]).astype("<i8").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, shard_size: int, name: str) -> ShardIndex:
        """Read :meth:`to_bytes` back, checked against the shard's size; damage raises :class:`ShardError`."""
        values = np.frombuffer(data, "<i8").astype(np.int64)
        if len(values) < 4 or values[3] < 0 or len(values) != 4 + 2 * values[3] or (values[:3] <= 0).any():
            raise ShardError(f"the index file of shard {name} is damaged")
        n, shape = int(values[3]), (2, 2, *(int(v) for v in values[:3]))
        index = cls(values[4:4 + n], shape, values[4 + n:])
        index.check(shard_size, name)
        return index

    def check(self, shard_size: int, name: str) -> None:
        """Every sample's moments lie inside the shard, at an even offset (float16 reads)."""
        if ((self.offsets < 0) | (self.offsets + 2 * self.count > shard_size) | (self.offsets % 2 != 0)).any():
            raise ShardError(f"shard {name}: its index points outside its {shard_size} bytes or at odd offsets")


def index_file_bytes(num_items: int) -> int:
    """Bytes of :meth:`ShardIndex.to_bytes` for a shard of ``num_items`` samples."""
    return 8 * (4 + 2 * num_items)


def _parse(buf, name: str) -> tuple[ShardIndex, list[str], list[tuple[int, int]]]:
    """(index, keys, the sources' (offset, size)) of the shard held in ``buf``; samples in key order.

    Member names are data: each is checked to stay inside the shard (``storage.safe_join``).
    Any damage raises :class:`ShardError` naming the shard.
    """
    fields: dict[str, dict[str, tuple[int, int]]] = {}
    for member, offset, size in _members(buf, name):
        storage.safe_join(name, member, what=f"tar member of shard {name}")
        key, _, field = member.partition(".")
        fields.setdefault(key, {})[field] = (offset, size)
    if not fields:
        raise ShardError(f"shard {name} holds no samples")
    keys = sorted(fields)
    offsets, labels, sources = np.empty(len(keys), np.int64), np.empty(len(keys), np.int64), []
    first_header, shape = b"", ()
    for row, key in enumerate(keys):
        sample = fields[key]
        missing = set(FIELDS) - set(sample)
        if missing:
            raise ShardError(f"shard {name}: sample {key} lacks {sorted(missing)} (truncated shard?)")
        offset, size = sample[MOMENTS]
        # Samples of one shard share one .npy header: parse it once, compare bytes for the rest.
        if not first_header or bytes(buf[offset:offset + len(first_header)]) != first_header:
            length, this_shape = _npy_header(buf, offset, size, name, key)
            if shape and this_shape != shape:
                raise ShardError(f"shard {name}: sample {key} has shape {this_shape}, others {shape}")
            first_header, shape = bytes(buf[offset:offset + length]), this_shape
            values = 4 * shape[2] * shape[3] * shape[4]
        if size != len(first_header) + 2 * values:
            raise ShardError(f"shard {name}: sample {key} has {size} bytes of moments, expected float16 {shape}")
        offsets[row] = offset + len(first_header)
        label_offset, label_size = sample[LABEL]
        try:
            labels[row] = int(bytes(buf[label_offset:label_offset + label_size]))
        except ValueError:
            raise ShardError(f"shard {name}: sample {key} has a label that is not an integer") from None
        sources.append(sample[SOURCE])
    index = ShardIndex(offsets, shape, labels)
    index.check(len(buf), name)
    return index, keys, sources


def index_shard(buf, name: str) -> ShardIndex:
    """Index the shard held in ``buf`` (bytes or a memory map): a scan of its tar headers (see
    :func:`_parse`); any damage raises :class:`ShardError` naming the shard."""
    return _parse(buf, name)[0]


def index_file(path: str, name: str) -> bytes:
    """The index file (:meth:`ShardIndex.to_bytes`) of the shard file at ``path``."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
        return index_shard(buffer, name).to_bytes()


def unpack_shard(data: bytes, name: str) -> ShardArrays:
    """Decode the bytes of shard ``name``; any damage raises :class:`ShardError` naming it."""
    index, keys, spans = _parse(data, name)
    moments = np.stack([index.moments(data, row) for row in range(len(index))])
    sources = [data[o:o + s].decode() for o, s in spans]
    return ShardArrays(moments, index.labels, keys, sources)
