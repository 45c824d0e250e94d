"""The manifest (written last) and the validation of done-markers on a rerun.

``manifest.json`` beside the shards lists, in order, every shard with its item count, size and
sha256, plus what a reader and a trainer need to interpret the latents: the autoencoder's name
and scale factor, the resolution, latent size and channels, the number of classes, the crop
method, the code version and the images that were skipped. Its ``id`` is a hash of the shard
checksums and that metadata; checkpoints record it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from data_pipeline.shard_plan import PlannedShard
from lamamba import storage
from lamamba.center_crop import CROP_METHOD

MANIFEST_NAME = "manifest.json"
FORMAT = "lamamba-latents-v1"


def code_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("lamamba")
    except metadata.PackageNotFoundError:
        import lamamba

        return getattr(lamamba, "__version__", "unknown")


def read_marker(output: str, shard: PlannedShard, storage_options: dict | None,
                verify_checksum: bool) -> dict[str, Any] | None:
    """The marker record of a finished shard, or None if the shard must be (re)encoded.

    Valid means: the marker parses, belongs to this plan (same digest), and the tar exists with the
    recorded size (and, if asked, the recorded sha256).
    """
    marker = storage.join(output, shard.marker_name)
    tar = storage.join(output, shard.tar_name)
    try:
        record = json.loads(storage.read_bytes(marker, storage_options))
    except (FileNotFoundError, IsADirectoryError):
        return None
    except (ValueError, UnicodeDecodeError):
        return None  # a damaged marker: redo the shard
    if not isinstance(record, dict) or record.get("digest") != shard.digest:
        return None
    fs, path = storage.filesystem(tar, storage_options)
    try:
        size = fs.info(path)["size"]
    except FileNotFoundError:
        return None
    if size != record.get("size"):
        return None
    if verify_checksum and storage.sha256(tar, storage_options) != record.get("sha256"):
        return None
    return record


def build_manifest(records: list[dict[str, Any]], *, autoencoder: str, resolution: int, num_classes: int,
                   class_names: list[str], image_channels: int, source: str, flip: bool = True) -> dict[str, Any]:
    """Assemble the manifest from the shards' marker records (in shard order)."""
    shaped = [r for r in records if r["num_items"]]
    if not shaped:
        raise ValueError("no image could be encoded: every source image was skipped")
    first = shaped[0]
    shards = [{"name": r["name"], "num_items": r["num_items"], "size": r["size"], "sha256": r["sha256"]}
              for r in records]
    manifest = {
        "format": FORMAT,
        "num_items": sum(r["num_items"] for r in records),
        "num_shards": len(shards),
        "shards": shards,
        "autoencoder": autoencoder,
        "scale_factor": first["scale_factor"],
        "resolution": resolution,
        "latent_size": first["latent_size"],
        "channels": first["latent_channels"],
        "image_channels": image_channels,
        "num_classes": num_classes,
        "class_names": class_names,
        "crop": CROP_METHOD,
        "flip": "both" if flip else "none (the flip slot repeats the image)",
        "moments": "float16 (2, 2, C, h, w): [image, hflip] x [mean, std]",
        "source": source,
        "code_version": code_version(),
        "skipped": [s for r in records for s in r["skipped"]],
    }
    blob = json.dumps({k: manifest[k] for k in ("shards", "autoencoder", "scale_factor", "resolution",
                                                "latent_size", "channels", "num_classes", "crop")},
                      sort_keys=True).encode()
    manifest["id"] = hashlib.sha256(blob).hexdigest()[:16]
    return manifest


def write_manifest(output: str, manifest: dict[str, Any], storage_options: dict | None) -> str:
    url = storage.join(output, MANIFEST_NAME)
    storage.write_bytes(url, json.dumps(manifest, indent=1).encode(), storage_options)
    return url
