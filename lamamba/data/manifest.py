"""Reading and checking a latent data set's manifest (written last by ``lamamba encode``).

A manifest is data, not trusted code or paths: before anything is fetched its shard names are
checked to stay inside the manifest's folder (``storage.safe_join``), the item counts to add up,
and the fields a reader relies on to exist with the right types. Every problem is a one-line
:class:`ManifestError` naming the manifest and the key.
"""

from __future__ import annotations

import json
from typing import Any

from lamamba import storage

MANIFEST_NAME = "manifest.json"
REQUIRED_KEYS = ("id", "num_items", "shards", "resolution", "latent_size", "channels", "scale_factor", "num_classes")
SHARD_KEYS = ("name", "num_items", "size", "sha256")


class ManifestError(ValueError):
    """A manifest is missing a key, inconsistent, or names a path outside its folder."""


def manifest_url_of(url: str) -> str:
    """Accept the manifest file's URL or the shard folder's."""
    return url if url.endswith(".json") else storage.join(url, MANIFEST_NAME)


def shard_root(manifest_url: str) -> str:
    """The folder the manifest's shard names are relative to."""
    return manifest_url.rsplit("/", 1)[0] if "/" in manifest_url else "."


def shard_url(manifest_url: str, shard: dict[str, Any]) -> str:
    """The URL of a manifest entry's tar, refused unless it stays inside the manifest's folder."""
    return storage.safe_join(shard_root(manifest_url), shard["name"], what=f"shard name in {manifest_url}")


def _check(manifest: Any, url: str) -> None:
    if not isinstance(manifest, dict):
        raise ManifestError(f"manifest {url} is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ManifestError(f"manifest {url} lacks {missing}")
    for key in ("num_items", "latent_size", "channels", "num_classes"):
        if not isinstance(manifest[key], int) or manifest[key] < 0:
            raise ManifestError(f"manifest {url}: {key} must be a non-negative integer, got {manifest[key]!r}")
    if not isinstance(manifest["shards"], list) or not manifest["shards"]:
        raise ManifestError(f"manifest {url}: shards must be a non-empty list")
    for i, shard in enumerate(manifest["shards"]):
        if not isinstance(shard, dict) or any(k not in shard for k in SHARD_KEYS):
            raise ManifestError(f"manifest {url}: shards[{i}] lacks one of {list(SHARD_KEYS)}")
        if not isinstance(shard["name"], str):
            raise ManifestError(f"manifest {url}: shards[{i}].name must be a string")
        for key in ("num_items", "size"):
            if not isinstance(shard[key], int) or shard[key] < 0:
                raise ManifestError(f"manifest {url}: shards[{i}].{key} must be a non-negative integer, "
                                    f"got {shard[key]!r}")
        if not isinstance(shard["sha256"], str) or len(shard["sha256"]) != 64 \
                or any(c not in "0123456789abcdef" for c in shard["sha256"]):
            raise ManifestError(f"manifest {url}: shards[{i}].sha256 is not a hex sha256: {shard['sha256']!r}")
        shard_url(url, shard)  # names are checked before anything is read
    total = sum(s["num_items"] for s in manifest["shards"])
    if total != manifest["num_items"]:
        raise ManifestError(f"manifest {url}: num_items is {manifest['num_items']} but its shards hold {total}")
    if total == 0:
        raise ManifestError(f"manifest {url} describes no samples")


def read_manifest(url: str, storage_options: dict | None = None) -> dict[str, Any]:
    """Read and check a manifest (``url`` = the file or its folder)."""
    url = manifest_url_of(url)
    try:
        manifest = json.loads(storage.read_bytes(url, storage_options))
    except FileNotFoundError:
        raise FileNotFoundError(f"no manifest at {url} (has the encode job finished?)") from None
    except ValueError as err:
        raise ManifestError(f"manifest {url} is not valid JSON: {err}") from None
    _check(manifest, url)
    return manifest
