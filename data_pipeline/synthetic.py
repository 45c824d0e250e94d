"""A synthetic latent data set: random moments in the real shard format, with a real manifest.

For the reader's benchmarks and tests, which need data sets of a given size and shape (1024 px
latents, many times the cache limit) that no image encoding could produce cheaply. Labels follow
ImageNet's layout: the listing is sorted by class, and the strided shard plan deals it into shards.
"""

from __future__ import annotations

import numpy as np

from data_pipeline.manifest import build_manifest, write_manifest
from data_pipeline.shard_plan import sample_key
from data_pipeline.writer import write_shard
from lamamba.data.shard_format import ShardSample


def write_synthetic(output: str, num_items: int, shard_size: int, channels: int = 4, latent_size: int = 4,
                    num_classes: int = 10, seed: int = 0, storage_options: dict | None = None) -> str:
    """Write ``num_items`` random samples of (2, 2, channels, latent_size, latent_size) float16
    moments into strided shards of at most ``shard_size`` under ``output``; returns the manifest URL."""
    rng = np.random.default_rng(seed)
    labels = np.sort(rng.integers(num_classes, size=num_items))  # a class-sorted listing
    count = -(-num_items // shard_size)
    records = []
    for index in range(count):
        samples = []
        for position in range(index, num_items, count):
            moments = rng.standard_normal((2, 2, channels, latent_size, latent_size), dtype=np.float32)
            moments[:, 1] = np.abs(moments[:, 1]) * 0.1 + 0.01
            samples.append(ShardSample(sample_key(position), moments.astype(np.float16), int(labels[position]),
                                       f"synthetic/{position}"))
        record = write_shard(output, f"shard-{index:06d}.tar", samples, storage_options)
        records.append({**record, "skipped": [], "latent_channels": channels, "latent_size": latent_size,
                        "scale_factor": 0.18215})
    manifest = build_manifest(records, autoencoder="synthetic", resolution=latent_size * 8, num_classes=num_classes,
                              class_names=[], image_channels=3, source="synthetic")
    return write_manifest(output, manifest, storage_options)
