"""Configs of the sample and evaluate jobs (``lamamba sample``, ``lamamba evaluate``).

Loaded with ``lamamba.config.load_config`` from YAML (configs/sample/, configs/evaluate/) plus
dotted ``key=value`` overrides; the launcher passes ``run_dir=...``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import yaml

from lamamba import storage
from lamamba.autoencoders import AutoencoderConfig
from lamamba.config import check_at_least, config_hash, redacted, to_dict
from lamamba.diffusion.config import check_schedule


@dataclass
class ExtractorConfig:
    """Which network turns images into features."""

    kind: str = "inception"  # "inception" or "package.module:factory"
    weights: str = ""  # local path of pt_inception-2015-12-05-6726825d.pth (or the plug-in's weights)
    device: str = "auto"  # as SampleConfig.device
    batch_size: int = 64

    def __post_init__(self):
        check_at_least(self, {"batch_size": 1})


@dataclass
class RayConfig:
    """Ray fan-out: ``num_workers`` actors, each with these resources."""

    address: str = ""  # "" = the cluster this job runs in (or a local one)
    num_workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0

    def __post_init__(self):
        check_at_least(self, {"num_workers": 1, "gpus_per_worker": 0, "cpus_per_worker": 0})


@dataclass
class SampleConfig:
    """A sample set for evaluation; every field that changes the images is in its metadata."""

    CONTINUATION_KEYS = ("ray", "launcher", "progress")  # the fan-out (lamamba.run_identity)

    run_dir: str = "runs/sample"
    checkpoint: str = ""  # training checkpoint dir (its ema.safetensors) or an exported .safetensors
    out: str = ""  # sample-set directory or URL; default <run_dir>/samples
    num_samples: int = 50000
    num_classes: int | None = None  # labels are i mod num_classes; None = the model's class count
    seed: int = 0
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    steps: int = 250  # respaced steps (ADM space_timesteps)
    eta: float = 0.0  # DDIM only
    cfg_scale: float = 1.5  # classifier-free guidance scale (1 = no guidance)
    guided_channels: int | None = None  # None = all eps channels (LaMamba-Diff release); 3 = DiT
    noise_schedule: Literal["linear", "cosine"] = "linear"
    diffusion_steps: int = 1000
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype of the model on GPU
    # TF32 for fp32 matmuls/convolutions on GPU; off by default so "fp32" means IEEE fp32.
    tf32: bool = False
    # "auto": GPU LOCAL_RANK under torchrun (a Ray worker's own GPU), else the CPU, said loudly;
    # "cuda": stop if CUDA is unavailable; "cpu" on purpose (lamamba.devices).
    device: str = "auto"
    # CPU float results depend on the intra-op thread count, so every worker uses this many.
    cpu_threads: int = 1
    batch_size: int = 32
    shard_size: int = 1000
    outputs: Literal["images", "features", "both"] = "images"
    extractor: ExtractorConfig = field(default_factory=ExtractorConfig)  # for features
    # "auto": torchrun when started by torchrun (WORLD_SIZE > 1), Ray actors when running as a Ray job's
    # driver, else one local process
    launcher: Literal["auto", "local", "ray", "torchrun"] = "auto"
    ray: RayConfig = field(default_factory=RayConfig)
    progress: bool = True

    def __post_init__(self):
        for name in ("num_samples", "steps", "batch_size", "shard_size", "diffusion_steps", "cpu_threads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.cfg_scale < 1.0:
            raise ValueError(f"cfg_scale: must be >= 1 (1 = unguided), got {self.cfg_scale}")
        for name in ("num_classes", "guided_channels"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1 (or null), got {getattr(self, name)}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta: must be in [0, 1] (0 = deterministic DDIM), got {self.eta}")
        check_schedule(self.noise_schedule, self.diffusion_steps,
                       f"ddim{self.steps}" if self.sampler == "ddim" else str(self.steps),
                       steps_key="diffusion_steps", respacing_key="steps")

    @property
    def out_url(self) -> str:
        return self.out or storage.join(self.run_dir, "samples")


@dataclass
class BuildReferenceConfig:
    """Build the reference from real images when ``EvalConfig.reference`` does not exist yet
    (for 1024 px, where ADM publishes none)."""

    source: str = ""  # image folder, .npz shards (arr_0) or webdataset .tar shards; "" = do not build
    resolution: int = 256  # ADM centre crop to this side
    max_images: int = 0  # 0 = every image under source (FID statistics over all of them)
    pr_images: int = 10000  # pool_3 features kept for precision/recall (a fixed-seed uniform subset, as
    # ADM's reference batches hold 10,000 images)
    include_images: bool = False  # also store arr_0 of that subset (10K x 1024^2 x 3 is 31 GB)

    def __post_init__(self):
        check_at_least(self, {"resolution": 1, "max_images": 0, "pr_images": 1})


@dataclass
class EvalConfig:
    """What to evaluate against what; every metric follows ADM's evaluator (docs/protocols.md, *Metrics*)."""

    CONTINUATION_KEYS = ("batch_size", "pr_batch_size", "pr_device", "extractor.device", "extractor.batch_size")

    run_dir: str = "runs/evaluate"
    samples: str = ""  # a sample-set directory/URL written by `lamamba sample`, or one .npz with arr_0
    reference: str = ""  # ADM reference .npz (or one from `lamamba evaluate --build-reference`)
    out: str = ""  # metrics JSON; default <run_dir>/metrics.json
    extractor: ExtractorConfig = field(default_factory=ExtractorConfig)
    is_split_size: int = 5000  # IS: splits of this many samples, in order (10 splits for 50K)
    pr_k: int = 3  # precision/recall: k-th nearest neighbour radius
    pr_batch_size: int = 10000  # rows per block of pairwise distances
    pr_device: str = "auto"  # where the distances are computed ("auto" = cuda if available)
    # "adm_float16": ADM's evaluator (float16 blocks, float32 only for a block where float16 overflows),
    # so published precision/recall are reproduced exactly; "float32": every block in float32
    pr_distances: Literal["adm_float16", "float32"] = "adm_float16"
    batch_size: int = 500  # images read per extractor call
    build_reference: BuildReferenceConfig = field(default_factory=BuildReferenceConfig)

    def __post_init__(self):
        check_at_least(self, {"is_split_size": 1, "pr_k": 1, "pr_batch_size": 1, "batch_size": 1})


def write_run_files(cfg) -> None:
    """The resolved config (credentials redacted) and its hash in ``<run_dir>/`` (local or a URL)."""
    storage.write_bytes(storage.join(cfg.run_dir, "config.yaml"),
                        yaml.safe_dump(redacted(to_dict(cfg)), sort_keys=False).encode())
    storage.write_bytes(storage.join(cfg.run_dir, "config_hash"), (config_hash(cfg) + "\n").encode())
