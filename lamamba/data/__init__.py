"""Reading latent shards: the deterministic, resumable, rank-sliced loader the trainer streams from."""

from lamamba.data.cache import LatentArrays, read_manifest
from lamamba.data.loader import LatentLoader, global_order
from lamamba.data.shard_format import ShardError

__all__ = ["LatentArrays", "LatentLoader", "ShardError", "global_order", "read_manifest"]
