"""The latent pre-encoding job: image sources -> ADM crop -> VAE posterior moments -> tar shards.

``run_encode(EncodeConfig)`` plans shards deterministically from the source listing, encodes the
missing ones on Ray workers (or in-process), writes each shard in one upload followed by its
done-marker, and writes the manifest last. ``lamamba encode CONFIG`` is the command around it;
:class:`lamamba.data.LatentLoader` reads the result.
"""

from data_pipeline.config import EncodeConfig, RayConfig, SourceConfig
from data_pipeline.job import EncodeError, EncodeSummary, run_encode

__all__ = ["EncodeConfig", "EncodeError", "EncodeSummary", "RayConfig", "SourceConfig", "run_encode"]
