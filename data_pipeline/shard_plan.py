"""The shard plan: shard i always holds the same items (docs/protocols.md, *Latent shards*).

It is a pure function of the source listing, the shard size, the resolution and the autoencoder,
and each planned shard carries a digest of exactly those inputs; a done-marker whose digest
differs belongs to another plan and does not count as done.

Shards are strided, not consecutive: with n shards, shard i holds the items at listing positions
i, i + n, i + 2n, ... Listings come sorted by class (ImageNet's synset folders), so a consecutive
cut would give shards of one or two classes, and the reader's two-level order (shuffled blocks of
shards, samples shuffled within a block) would then feed whole global batches from a few dozen
classes. A strided shard is a cross-section of the listing: every block's class mix is close to
the data set's (docs/data.md measures it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from data_pipeline.sources import SourceItem


@dataclass(frozen=True)
class PlannedShard:
    index: int
    name: str  # "shard-000012" (the tar is <name>.tar, its marker <name>.done.json)
    positions: tuple[int, ...]  # listing positions of the items; sample keys are these positions
    items: tuple[SourceItem, ...]
    digest: str

    @property
    def tar_name(self) -> str:
        return f"{self.name}.tar"

    @property
    def marker_name(self) -> str:
        return f"{self.name}.done.json"


def plan_shards(items: list[SourceItem], shard_size: int, resolution: int, autoencoder: str) -> list[PlannedShard]:
    """Deal ``items`` (in listing order) into ceil(N / ``shard_size``) strided shards of at most
    ``shard_size`` items (sizes differ by at most one)."""
    count = -(-len(items) // shard_size)
    shards = []
    for index in range(count):
        positions = tuple(range(index, len(items), count))
        chunk = tuple(items[p] for p in positions)
        blob = json.dumps([resolution, autoencoder, positions, [(i.key, i.label) for i in chunk]]).encode()
        digest = hashlib.sha256(blob).hexdigest()[:16]
        shards.append(PlannedShard(index, f"shard-{index:06d}", positions, chunk, digest))
    return shards


def sample_key(plan_position: int) -> str:
    """The webdataset key of the item at ``plan_position``."""
    return f"{plan_position:09d}"
