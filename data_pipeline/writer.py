"""Encode one planned shard and write it: one upload of the tar, then its done-marker.

Runs inside a Ray task (or the in-process loop). The marker holds everything the manifest needs
about the shard (checksum, size, item count, skipped images, latent shape), so a rerun can build
the manifest from markers without reading finished shards again.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch
from PIL import Image

from data_pipeline.preprocess import hflip, to_model_input
from data_pipeline.shard_plan import PlannedShard, sample_key
from data_pipeline.sources import load_image
from lamamba import storage
from lamamba.autoencoders import Autoencoder, AutoencoderConfig, build_autoencoder, check_finite
from lamamba.data.shard_format import ShardSample, pack_shard

# What a corrupt or unreadable image raises while being read and decoded.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


_AUTOENCODERS: dict[str, Autoencoder] = {}


def cached_autoencoder(cfg: AutoencoderConfig, device: str) -> Autoencoder:
    """One autoencoder per worker process and config (Ray reuses processes across tasks)."""
    key = f"{cfg!r}@{device}"
    if key not in _AUTOENCODERS:
        _AUTOENCODERS[key] = build_autoencoder(cfg, device)
    return _AUTOENCODERS[key]


def encode_images(encoder: Autoencoder, images: torch.Tensor, batch_size: int, flip: bool = True) -> np.ndarray:
    """images (N, C, H, W) in [-1, 1] -> float16 moments (N, 2, 2, c, h, w): [image, flip] x [mean, std].

    With ``flip=False`` the flip slot repeats the image's own moments (the reader never mirrors it).
    """
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        mean, logvar = encoder.encode_moments(torch.cat([batch, hflip(batch)]) if flip else batch)
        if not flip:
            mean, logvar = torch.cat([mean, mean]), torch.cat([logvar, logvar])
        std = torch.exp(0.5 * logvar)
        n = len(batch)
        moments = torch.stack([torch.stack([mean[:n], std[:n]], 1), torch.stack([mean[n:], std[n:]], 1)], 1)
        out.append(moments.cpu().to(torch.float16).numpy())
    return np.concatenate(out)


def write_shard(output: str, tar_name: str, samples: list[ShardSample], storage_options: dict | None = None
                ) -> dict[str, Any]:
    """Pack ``samples`` (webdataset's TarWriter) and upload the tar in one write; returns the
    manifest's entry for it (name, num_items, sha256, size)."""
    data = pack_shard(samples)
    storage.write_bytes(storage.join(output, tar_name), data, storage_options)
    return {"name": tar_name, "num_items": len(samples), "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def marker_url(output: str, shard: PlannedShard) -> str:
    return storage.join(output, shard.marker_name)


def encode_shard(shard: PlannedShard, encoder: Autoencoder, *, output: str, resolution: int,
                 batch_size: int, source_options: dict | None = None,
                 storage_options: dict | None = None, flip: bool = True) -> dict[str, Any]:
    """Encode ``shard``'s images, upload the tar, then write the marker; returns the marker record."""
    kept, tensors, skipped = [], [], []
    for offset, item in enumerate(shard.items):
        try:
            tensors.append(to_model_input(load_image(item, source_options), resolution, encoder.image_channels))
            kept.append((shard.positions[offset], item))
        except IMAGE_ERRORS as err:
            skipped.append({"key": item.key, "error": f"{type(err).__name__}: {err}"})
    samples = []
    if kept:
        moments = encode_images(encoder, torch.stack(tensors), batch_size, flip)
        # what would be stored (float16): a NaN/inf latent fails the shard, naming the image
        check_finite(moments, f"shard {shard.tar_name}: latents", [f"item {item.key!r}" for _, item in kept])
        samples = [ShardSample(sample_key(pos), moments[i], item.label, item.key)
                   for i, (pos, item) in enumerate(kept)]
    record = {
        **write_shard(output, shard.tar_name, samples, storage_options),
        "digest": shard.digest,
        "skipped": skipped,
        "latent_channels": encoder.latent_channels,
        "latent_size": resolution // encoder.downsample,
        "scale_factor": encoder.scale_factor,
    }
    storage.write_bytes(marker_url(output, shard), json.dumps(record).encode(), storage_options)
    return record
