"""The encode job's configuration (loaded with :func:`lamamba.config.load_config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lamamba.autoencoders import AutoencoderConfig
from lamamba.config import check_at_least

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


@dataclass
class SourceConfig:
    """Where the images come from.

    kind: "imagenet" (train layout: one nXXXXXXXX synset folder per class, class index = position
        of the synset in sorted order), "folder" (any class-folder tree, same indexing), "list" (a
        text file of ``path label`` lines; relative paths are relative to the file), or "digits"
        (scikit-learn's bundled 8x8 handwritten digits, offline).
    path: the root folder or list file, a local path or an fsspec URL (unused for digits).
    split: digits only: "train" (75 %), "test" (25 %) or "all"; a stratified split with seed 0.
    extensions: file endings counted as images in folder trees (case-insensitive).
    storage_options: fsspec options for reading ``path`` (never logged).
    """

    kind: Literal["imagenet", "folder", "list", "digits"] = "folder"
    path: str = ""
    split: Literal["train", "test", "all"] = "all"
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    storage_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RayConfig:
    """How the encoding fans out.

    address: "" starts a local Ray (with ``num_cpus``); "auto" or "ray://host:port" joins a cluster.
        If Ray is already initialised in this process it is used as is.
    num_workers: encode tasks in flight at once; 0 runs a plain loop in this process (no Ray).
    cpus_per_worker, gpus_per_worker: resources each task asks for (a GPU task encodes on cuda).
    max_retries: times a failed task (crashed worker or raised error) is retried.
    """

    address: str = ""
    num_cpus: int = 0
    num_workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_retries: int = 2

    def __post_init__(self) -> None:
        check_at_least(self, dict.fromkeys(("num_cpus", "num_workers", "max_retries", "cpus_per_worker",
                                            "gpus_per_worker"), 0))


@dataclass
class EncodeConfig:
    """A latent pre-encoding job.

    run_dir: where the job writes its log, resolved config.yaml and config_hash.
    output: URL of the shard folder (local path, file:// or s3://); "" = <run_dir>/latents.
    resolution: image side after ADM's centre crop (256, 512, 1024; small values for tests).
    shard_size: images per shard (the last shard may be smaller).
    batch_size: images per VAE forward pass (each is encoded with its flip, so 2x this).
    verify_checksums: on a rerun, re-read finished shards and check their sha256, so a damaged shard
        is redone (false: trust a recorded size, for very large outputs on remote storage).
    flip: store each image's horizontal flip for the reader's per-epoch flips (ADM); false stores
        the image itself in the flip slot, for data where mirroring changes the class (digits).
    storage_options: fsspec options for ``output`` (endpoint, credentials; never logged).
    retry_budget_s: how long the storage may stay unreachable (counted over the whole job, from the
        first failure of an outage to the latest) while failed shards are retried with backoff;
        then the job stops with one message. 0 = stop at the first such failure.
    replace: encode into an output that holds a data set made with other settings, deleting it
        (its manifest first); without it that is refused.
    """

    # How the job fans out and checks may change between runs into the same output (lamamba.run_identity).
    CONTINUATION_KEYS = ("ray", "verify_checksums", "retry_budget_s", "replace")

    run_dir: str = "runs/encode"
    output: str = ""
    resolution: int = 256
    shard_size: int = 1024
    batch_size: int = 32
    verify_checksums: bool = True
    flip: bool = True
    source: SourceConfig = field(default_factory=SourceConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    storage_options: dict[str, Any] = field(default_factory=dict)
    retry_budget_s: float = 600.0
    replace: bool = False

    def __post_init__(self) -> None:
        check_at_least(self, {"retry_budget_s": 0})
        for name in ("resolution", "shard_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.autoencoder.kind != "identity" and self.resolution % 8:
            raise ValueError(f"resolution: {self.resolution} is not a multiple of the VAE's downsampling (8)")

    @property
    def output_url(self) -> str:
        from lamamba import storage

        return self.output or storage.join(self.run_dir, "latents")
