"""The training job's config: one dataclass tree, loaded with :func:`lamamba.config.load_config`.

``lamamba train configs/train/s_256.yaml optim.lr=2e-4`` builds a :class:`TrainConfig` from the
YAML file and the dotted overrides. The defaults are the paper's recipe (AdamW, lr 1e-4 constant,
no weight decay, global batch 256, EMA 0.9999); the model, diffusion and autoencoder sections are
the configs of those components, nested as they are.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any, Literal

from lamamba.autoencoders import AutoencoderConfig
from lamamba.config import check_at_least
from lamamba.diffusion import DiffusionConfig
from lamamba.models import ModelConfig


@dataclass
class DataConfig:
    """Where the latent shards are (the manifest written by ``lamamba encode``) and how a node reads
    them: streamed through a bounded shard cache shared by every rank, worker and run on the node."""

    manifest: str = ""
    num_workers: int = 0
    storage_options: dict[str, Any] = field(default_factory=dict)
    # The node's shard cache; "" = $LAMAMBA_DATA_CACHE or ~/.cache/lamamba/latents.
    cache_dir: str = ""
    # Most GB of shards on the node's disk at any time. 50 lets ImageNet at 1024 px (672 GB) train
    # on a node with 100 GB of scratch; a limit above the data set's size keeps all of it (a full copy).
    cache_limit_gb: float = 50.0
    # Shards per block of the two-level sample order: part of the order (like the seed), not a
    # node resource. Larger mixes better and needs a larger cache (docs/data.md).
    block_shards: int = 64
    # Shards each process fetches at once (each fetch is one request stream).
    fetch_workers: int = 4

    def __post_init__(self):
        check_at_least(self, {"num_workers": 0, "block_shards": 1, "fetch_workers": 1})
        if self.cache_limit_gb <= 0:
            raise ValueError(f"cache_limit_gb: must be > 0, got {self.cache_limit_gb}")


@dataclass
class OptimConfig:
    """AdamW with a constant learning rate after an optional linear warm-up."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    grad_clip: float = 0.0  # clip the global grad norm to this; 0 = off, as in the paper (DiT)

    def __post_init__(self):
        for name in ("lr", "eps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        check_at_least(self, {"weight_decay": 0, "warmup_steps": 0, "grad_clip": 0})
        if any(not 0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas: both must be in [0, 1), got {list(self.betas)}")


@dataclass
class EngineConfig:
    """DeepSpeed: ZeRO stage, precision, micro-batching and activation checkpointing."""

    zero_stage: Literal[1, 2, 3] = 2
    # "bf16-autocast" (default, Mamba's own recipe): DeepSpeed's torch_autocast, fp32 module
    # parameters and bf16 matmuls/convs, so the scan reads the fp32 weights exactly (2 more bytes
    # per parameter, fp32 elementwise activations); "bf16": DeepSpeed bf16 (the module holds bf16
    # copies; the SSM's A_log, D, dt bias reach the scan bf16-rounded; for memory-bound runs).
    precision: Literal["bf16", "bf16-autocast", "fp32"] = "bf16-autocast"
    # Largest per-rank micro-batch: each rank's share of the global batch (global_batch /
    # world_size) is split into micro-batches of at most this size whose gradients are
    # accumulated. 0 = the whole share at once.
    micro_batch: int = 0
    # "none", "all" or a comma list of stage names ("enc0".."enc3", "mid", "dec0".."dec3").
    activation_checkpointing: str = "none"
    # A DeepSpeed JSON to start from instead of lamamba/training/ds_configs/zero{zero_stage}.json.
    ds_config: str = ""
    # torch.distributed backend; "" picks nccl on GPU, gloo on CPU.
    backend: Literal["", "nccl", "gloo"] = ""
    # "auto": GPU LOCAL_RANK when CUDA works, the CPU (said loudly) when nothing asks for a GPU;
    # "cuda": stop at once if CUDA is unavailable; "cpu": the CPU on purpose (lamamba.devices).
    device: str = "auto"
    # Seconds any rank waits in a collective before the job fails (NCCL's default is 600); long
    # enough for a rank-0 checkpoint upload at XL while the others wait in the next collective.
    collective_timeout_s: float = 1800.0
    # TF32 for the fp32 matmuls and convolutions left under bf16 (DiT trains with it on).
    tf32: bool = True

    def __post_init__(self):
        check_at_least(self, {"micro_batch": 0})
        if self.device not in ("auto", "cuda", "cpu") and not (self.device.startswith("cuda:")
                                                              and self.device[5:].isdigit()):
            raise ValueError(f"device: {self.device!r} is not one of auto, cuda, cuda:N, cpu")
        if self.collective_timeout_s <= 0:
            raise ValueError(f"collective_timeout_s: must be > 0, got {self.collective_timeout_s}")


@dataclass
class EMAConfig:
    """Exponential moving averages of the fp32 weights; the first decay is the one exported."""

    decays: tuple[float, ...] = (0.9999,)

    def __post_init__(self):
        if not self.decays or any(not 0.0 <= d < 1.0 for d in self.decays):
            raise ValueError(f"decays: need at least one decay in [0, 1), got {list(self.decays)}")


@dataclass
class CheckpointConfig:
    """Where and how often checkpoints are written (a local path or an s3:// URL)."""

    dir: str = ""  # default <run_dir>/checkpoints
    every_steps: int = 5000
    keep_last: int = 3
    resume: bool = True  # resume from the newest committed checkpoint in `dir`
    # Also write full (unsharded) fp32 weights and Adam moments, which lets a run resume on a
    # different number of ranks with the same global batch.
    consolidated: bool = True
    # Local scratch for remote (s3://) checkpoints: each run makes its own private directory
    # (random name, mode 0700) under it; default the system's temp dir.
    staging_dir: str = ""
    storage_options: dict[str, Any] = field(default_factory=dict)
    # How long checkpoint uploads may keep failing (an S3 outage) before the run stops: saves
    # that fail meanwhile are not committed and training goes on; the last save retries until then.
    upload_budget_s: float = 900.0
    # Object-store lease: a writer that stops renewing it (killed) loses it after this long.
    lease_ttl_s: float = 120.0

    def __post_init__(self):
        check_at_least(self, {"every_steps": 1, "keep_last": 1, "upload_budget_s": 0})
        if self.lease_ttl_s <= 0:
            raise ValueError(f"lease_ttl_s: must be > 0, got {self.lease_ttl_s}")


@dataclass
class PreemptionConfig:
    """Stop cleanly (checkpoint, exit 0) on a signal or when the wall-clock budget is spent."""

    signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")
    time_budget_s: float = 0.0  # 0 = no budget; leave room for one checkpoint save

    def __post_init__(self):
        catchable = sorted(set(signal.Signals.__members__) - {"SIGKILL", "SIGSTOP"})
        for name in self.signals:
            if name not in catchable:
                raise ValueError(f"signals: {name!r} is not a signal that can be caught here "
                                 f"(e.g. SIGTERM, SIGUSR1, SIGUSR2, SIGINT)")
        check_at_least(self, {"time_budget_s": 0})


@dataclass
class NumericsConfig:
    """Non-finite steps are skipped; this many in a row stop the run."""

    max_consecutive_skips: int = 10

    def __post_init__(self):
        check_at_least(self, {"max_consecutive_skips": 1})


@dataclass
class MonitorConfig:
    """Logging: text lines, metrics.jsonl and TensorBoard (rank 0), EMA sample grids."""

    log_every: int = 100
    tensorboard: bool = True
    sample_every: int = 10000  # steps between EMA sample grids; 0 = never
    sample_count: int = 16
    sample_steps: int = 25  # DDIM steps for the grid
    sample_cfg_scale: float = 4.0
    # Peak dense TFLOP/s of one device for MFU: None = the device's figure for the run's matmul
    # dtype from lamamba/training/peak_flops.py (unknown on the CPU); a number overrides it; 0 = no MFU.
    peak_tflops: float | None = None

    def __post_init__(self):
        check_at_least(self, {"log_every": 1, "sample_every": 0, "sample_count": 1, "sample_steps": 1,
                              "sample_cfg_scale": 1})
        if self.peak_tflops is not None:
            check_at_least(self, {"peak_tflops": 0})


@dataclass
class TrainConfig:
    """A training run: model, diffusion, data, optimiser, engine and the run's bookkeeping."""

    # What may change when the run continues (lamamba.run_identity): length, cadences, sample
    # grids, workers and memory/speed knobs with the same maths; everything else is the run.
    CONTINUATION_KEYS = ("max_steps", "monitor", "preemption", "numerics", "autoencoder", "data.num_workers",
                         "data.cache_dir", "data.cache_limit_gb", "data.fetch_workers",
                         "checkpoint.every_steps", "checkpoint.keep_last", "checkpoint.resume",
                         "checkpoint.consolidated", "checkpoint.staging_dir", "checkpoint.upload_budget_s",
                         "checkpoint.lease_ttl_s", "engine.micro_batch",
                         "engine.activation_checkpointing", "engine.backend", "model.scan_backend")

    run_dir: str = "runs/train"
    seed: int = 0
    global_batch: int = 256
    max_steps: int = 400_000
    model: ModelConfig = field(default_factory=ModelConfig)
    # Warm start when there is no checkpoint to resume: the EMA weights of a training run (its newest
    # committed checkpoint), a checkpoint dir or an exported .safetensors, trained at any resolution
    # (the positional embedding is interpolated). "" = a fresh initialisation.
    init_from: str = ""
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    # Decodes the EMA sample grids to images; None shows the latents' first channels.
    autoencoder: AutoencoderConfig | None = None
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    preemption: PreemptionConfig = field(default_factory=PreemptionConfig)
    numerics: NumericsConfig = field(default_factory=NumericsConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def __post_init__(self):
        check_at_least(self, {"global_batch": 1, "max_steps": 0})

    @property
    def checkpoint_dir(self) -> str:
        from lamamba import storage

        return self.checkpoint.dir or storage.join(self.run_dir, "checkpoints")
