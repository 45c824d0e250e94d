"""Reading latent shards: the deterministic, resumable, rank-sliced loader the trainer streams from,
through a bounded per-node shard cache."""

from lamamba.data.cache import CacheFullError, ShardCache
from lamamba.data.loader import LatentLoader
from lamamba.data.manifest import ManifestError, read_manifest
from lamamba.data.order import epoch_order
from lamamba.data.shard_format import ShardError

__all__ = ["CacheFullError", "LatentLoader", "ManifestError", "ShardCache", "ShardError", "epoch_order",
           "read_manifest"]
