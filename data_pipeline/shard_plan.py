"""The shard plan: shard i always holds the same items (docs/protocols.md, *Latent shards*).

It is a pure function of the source listing, the shard size, the resolution and the autoencoder,
and each planned shard carries a digest of exactly those inputs; a done-marker whose digest
differs belongs to another plan and does not count as done.
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
    start: int  # plan position of the first item; sample keys are plan positions
    items: tuple[SourceItem, ...]
    digest: str

    @property
    def tar_name(self) -> str:
        return f"{self.name}.tar"

    @property
    def marker_name(self) -> str:
        return f"{self.name}.done.json"


def plan_shards(items: list[SourceItem], shard_size: int, resolution: int, autoencoder: str) -> list[PlannedShard]:
    """Cut ``items`` (in listing order) into consecutive shards of ``shard_size`` items."""
    shards = []
    for index, start in enumerate(range(0, len(items), shard_size)):
        chunk = tuple(items[start:start + shard_size])
        blob = json.dumps([resolution, autoencoder, start, [(i.key, i.label) for i in chunk]]).encode()
        digest = hashlib.sha256(blob).hexdigest()[:16]
        shards.append(PlannedShard(index, f"shard-{index:06d}", start, chunk, digest))
    return shards


def sample_key(plan_position: int) -> str:
    """The webdataset key of the item at ``plan_position``."""
    return f"{plan_position:09d}"
