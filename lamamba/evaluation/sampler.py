"""The sample job: N class-balanced images from a checkpoint's EMA weights
(docs/protocols.md, *Sample sets*).

Sample i has label ``i mod num_classes`` and draws its initial noise and every step's noise from
its own generator keyed by (seed, "sample", i), so the image set does not depend on how many
workers run or how they batch. The index range is cut into fixed shards (``shards.ShardPlan``);
each shard is written (images as ADM-compatible ``arr_0`` NHWC uint8, and/or extractor features)
with a done-marker last (each file's size and sha256), and a rerun only computes shards without
a marker that its files match: a damaged shard is redone, not counted as finished.

Fan-out: ``launcher="local"`` (one process), ``"ray"`` (one actor per worker, shards handed out
as they finish, GPUs per worker configurable) or ``"torchrun"`` (rank r owns shards r, r + W, ...).
Within a shard the batches are the same whatever the fan-out, so the bytes are too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from lamamba import storage
from lamamba.autoencoders import build_autoencoder, check_finite
from lamamba.config import ConfigError, config_hash, redacted, to_dict
from lamamba.devices import set_tf32
from lamamba.diffusion import create_diffusion, guided_forward
from lamamba.evaluation.config import SampleConfig
from lamamba.evaluation.features import build_extractor, resolve_device
from lamamba.evaluation.shards import (METADATA, SampleSetError, ShardPlan, done_name, done_shards, features_name,
                                       images_name, read_json, verified_files, write_json, write_npz)
from lamamba.models.io import load_model, read_model_file
from lamamba.ray_runtime import in_ray_job, ray_session
from lamamba.rng import PerSampleGenerators

log = logging.getLogger(__name__)


def weights_url(checkpoint: str) -> str:
    """The EMA weights file of a training checkpoint directory, or an exported .safetensors as is."""
    if not checkpoint:
        raise ConfigError("checkpoint: give a training checkpoint directory or an exported .safetensors")
    fs, path = storage.filesystem(checkpoint)
    if fs.isdir(path):
        url = storage.join(checkpoint, "ema.safetensors")
        if not storage.exists(url):
            raise ConfigError(f"checkpoint: {checkpoint} is a directory without ema.safetensors")
        return url
    if not fs.exists(path):
        raise ConfigError(f"checkpoint: {checkpoint} does not exist")
    return checkpoint


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8, as DiT's sampler: clamp(127.5 x + 128) truncated."""
    return torch.clamp(127.5 * images + 128.0, 0, 255).permute(0, 2, 3, 1).to("cpu", torch.uint8).numpy()


@contextlib.contextmanager
def _intra_op_threads(n: int | None):
    """Run with ``n`` torch intra-op threads (CPU float results depend on it), then restore."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ShardSampler:
    """Loads the model, diffusion, autoencoder (and extractor) once; samples shards on request."""

    def __init__(self, cfg: SampleConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        set_tf32(cfg.tf32)
        if self.device.type == "cuda":  # same kernels for the same batch on every worker
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        self.model, self.model_cfg, _ = load_model(weights_url(cfg.checkpoint), device=self.device)
        self.model.eval()
        self.num_classes = cfg.num_classes or self.model_cfg.num_classes
        respacing = f"ddim{cfg.steps}" if cfg.sampler == "ddim" else str(cfg.steps)
        self.diffusion = create_diffusion(timestep_respacing=respacing, noise_schedule=cfg.noise_schedule,
                                          learn_sigma=self.model_cfg.learn_sigma, diffusion_steps=cfg.diffusion_steps)
        self.autoencoder = build_autoencoder(cfg.autoencoder, self.device)
        if self.autoencoder.latent_channels != self.model_cfg.in_channels:
            raise ConfigError(f"autoencoder: {self.autoencoder.name} has {self.autoencoder.latent_channels} latent "
                              f"channels, the model takes {self.model_cfg.in_channels}")
        self.extractor = None
        if cfg.outputs in ("features", "both"):
            self.extractor = build_extractor(cfg.extractor)
        self.plan = ShardPlan(cfg.num_samples, cfg.shard_size)

    def _model_fn(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        autocast = self.cfg.precision != "fp32" and self.device.type == "cuda"
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        with torch.autocast(self.device.type, dtype=dtype, enabled=autocast):
            out = guided_forward(self.model, x, t, y, scale=self.cfg.cfg_scale, null_label=self.model_cfg.num_classes,
                                 eps_channels=self.model_cfg.in_channels, guided_channels=self.cfg.guided_channels)
        return out.float()

    @torch.no_grad()
    def sample(self, indices: list[int]) -> np.ndarray:
        """Images (B, H, W, C) uint8 for sample indices (labels i mod K, noise keyed by (seed, i))."""
        y = torch.tensor([i % self.num_classes for i in indices], dtype=torch.long, device=self.device)
        gens = PerSampleGenerators(self.cfg.seed, "sample", [(i,) for i in indices])
        r = self.model_cfg.input_size
        shape = (len(indices), self.model_cfg.in_channels, r, r)
        loop = self.diffusion.ddim_sample_loop if self.cfg.sampler == "ddim" else self.diffusion.p_sample_loop
        kwargs = {"eta": self.cfg.eta} if self.cfg.sampler == "ddim" else {}
        latents = loop(self._model_fn, shape, model_kwargs={"y": y}, generators=gens, device=self.device, **kwargs)
        names = [f"sample {i}" for i in indices]
        check_finite(latents, "sampled latents", names)  # a NaN would become a black image and move FID
        images = self.autoencoder.decode(latents / self.autoencoder.scale_factor)
        check_finite(images, "decoded images", names)
        return to_uint8(images)

    def run_shard(self, shard: int, bar: tqdm | None = None) -> int:
        """Sample shard ``shard`` and write it (done-marker last); returns the number of samples."""
        indices = list(self.plan.indices(shard))
        batches = []
        with _intra_op_threads(self.cfg.cpu_threads if self.device.type == "cpu" else None):
            for start in range(0, len(indices), self.cfg.batch_size):
                batch = indices[start:start + self.cfg.batch_size]
                batches.append(self.sample(batch))
                if bar is not None:
                    bar.update(len(batch))
        images = np.concatenate(batches)
        out = self.cfg.out_url
        files = {}
        if self.cfg.outputs in ("images", "both"):
            labels = np.array([i % self.num_classes for i in indices], dtype=np.int64)
            files["images"] = {"name": images_name(shard), **write_npz(
                storage.join(out, images_name(shard)), arr_0=images, labels=labels,
                indices=np.array(indices, dtype=np.int64))}
        if self.extractor is not None:
            feats = self.extractor(images)
            files["features"] = {"name": features_name(shard), **write_npz(
                storage.join(out, features_name(shard)), extractor=np.array(self.extractor.name), **feats)}
        # The host that computed the shard: where to look when one shard of a fanned-out set is off.
        write_json(storage.join(out, done_name(shard)), {"shard": shard, "start": indices[0], "stop": indices[-1] + 1,
                                                         "host": socket.gethostname(), "files": files})
        return len(indices)


def protocol(cfg: SampleConfig) -> dict:
    """Everything that decides the images, recorded in metadata.json and checked on reruns."""
    url = weights_url(cfg.checkpoint)
    _, model_cfg, _ = read_model_file(url)
    num_classes = cfg.num_classes or model_cfg.num_classes
    if not 0 < num_classes <= model_cfg.num_classes:
        raise ConfigError(f"num_classes: {num_classes} is not in 1..{model_cfg.num_classes} (the model's classes)")
    guided = model_cfg.in_channels if cfg.guided_channels is None else cfg.guided_channels
    if not 0 < guided <= model_cfg.in_channels:
        raise ConfigError(f"guided_channels: {guided} is not in 1..{model_cfg.in_channels} (the model's eps channels)")
    plan = ShardPlan(cfg.num_samples, cfg.shard_size)
    return {
        "checkpoint": cfg.checkpoint,
        "checkpoint_sha256": storage.sha256(url),
        "model": to_dict(model_cfg),
        "num_samples": cfg.num_samples,
        "shard_size": cfg.shard_size,
        "num_shards": plan.num_shards,
        "label_scheme": f"label = index mod {num_classes}",
        "num_classes": num_classes,
        "seed": cfg.seed,
        "noise": "per-sample generators keyed by (seed, 'sample', index), for x_T and every step",
        "sampler": cfg.sampler,
        "steps": cfg.steps,
        "eta": cfg.eta if cfg.sampler == "ddim" else None,
        "diffusion": {"noise_schedule": cfg.noise_schedule, "diffusion_steps": cfg.diffusion_steps,
                      "learn_sigma": model_cfg.learn_sigma},
        "cfg_scale": cfg.cfg_scale,
        "guided_channels": guided if cfg.cfg_scale != 1.0 else None,
        "autoencoder": to_dict(cfg.autoencoder),
        "uint8": "clamp(127.5 * x + 128, 0, 255) truncated (DiT)",
        "precision": cfg.precision,
        "tf32": cfg.tf32,
        "cpu_threads": cfg.cpu_threads,
        "outputs": cfg.outputs,
        "extractor": ({"kind": cfg.extractor.kind, "weights": cfg.extractor.weights}
                      if cfg.outputs != "images" else None),
    }


def write_or_check_metadata(cfg: SampleConfig, proto: dict) -> None:
    """Write metadata.json, or refuse to add shards to a sample set made with another protocol."""
    url = storage.join(cfg.out_url, METADATA)
    if storage.exists(url):
        existing = read_json(url).get("protocol", {})
        # the weights are identified by their hash; the same file under another path is fine
        differing = sorted(k for k in set(existing) | set(proto)
                           if k != "checkpoint" and existing.get(k) != proto.get(k))
        if differing:
            raise ConfigError(f"out: {cfg.out_url} holds samples made with a different {', '.join(differing)} "
                              f"(see its {METADATA}); use another out")
        return
    write_json(url, {"protocol": proto, "config": redacted(to_dict(cfg)), "config_hash": config_hash(cfg)})


def pending_shards(cfg: SampleConfig) -> list[int]:
    """Shards without a done-marker, or whose files no longer match it (those are redone, said once)."""
    marked = set(done_shards(cfg.out_url))

    def pending(shard: int) -> bool:
        if shard not in marked:
            return True
        try:
            verified_files(cfg.out_url, shard)
        except SampleSetError as err:
            log.warning("%s; redoing it", err)
            return True
        return False

    shards = range(ShardPlan(cfg.num_samples, cfg.shard_size).num_shards)
    with ThreadPoolExecutor(max_workers=16) as pool:
        return [s for s, todo in zip(shards, pool.map(pending, shards)) if todo]


def _run_local(cfg: SampleConfig, shards: list[int], position: int = 0, desc: str = "sampling") -> list[int]:
    if not shards:
        return []
    worker = ShardSampler(cfg)
    total = sum(len(worker.plan.indices(s)) for s in shards)
    with tqdm(total=total, desc=desc, unit="img", disable=not cfg.progress, position=position,
              dynamic_ncols=True) as bar:
        for shard in shards:
            worker.run_shard(shard, bar)
    return shards


def _run_ray(cfg: SampleConfig, shards: list[int]) -> list[int]:
    import ray

    if not shards:
        return []
    with ray_session(cfg.ray.address):
        return _run_actors(ray, cfg, shards)


def actor_plan(cfg: SampleConfig) -> tuple[SampleConfig, dict[str, float]]:
    """The config each Ray actor samples with and the resources it reserves: an actor computes on
    a GPU only if it reserved one (``ray.gpus_per_worker``), never on one Ray gave to another."""
    gpus = cfg.ray.gpus_per_worker
    if gpus <= 0 and cfg.device.startswith("cuda"):
        raise ConfigError(f"device={cfg.device} with launcher=ray needs ray.gpus_per_worker > 0: "
                          f"each Ray worker reserves the GPU it samples on")
    if gpus <= 0 and cfg.device == "auto":
        log.warning("ray.gpus_per_worker=0: the Ray workers reserve no GPU, so they sample on CPU "
                    "(set ray.gpus_per_worker=1 to sample on GPUs)")
        cfg = dataclasses.replace(cfg, device="cpu")
    return cfg, {"num_gpus": gpus, "num_cpus": cfg.ray.cpus_per_worker}


def _run_actors(ray, cfg: SampleConfig, shards: list[int]) -> list[int]:
    from ray.util import ActorPool

    cfg, resources = actor_plan(cfg)
    actor_cls = ray.remote(_RayShardWorker).options(**resources)
    actors = [actor_cls.remote(cfg) for _ in range(min(cfg.ray.num_workers, len(shards)))]
    plan = ShardPlan(cfg.num_samples, cfg.shard_size)
    finished = []
    with tqdm(total=sum(len(plan.indices(s)) for s in shards), desc=f"sampling ({len(actors)} Ray workers)",
              unit="img", disable=not cfg.progress, dynamic_ncols=True) as bar:
        for shard, count in ActorPool(actors).map_unordered(lambda a, s: a.run_shard.remote(s), shards):
            finished.append(shard)
            bar.update(count)
    for actor in actors:
        ray.kill(actor)
    return sorted(finished)


class _RayShardWorker:
    """A Ray actor holding one ShardSampler (the model is loaded once per worker)."""

    def __init__(self, cfg: SampleConfig):
        self.sampler = ShardSampler(cfg)

    def run_shard(self, shard: int) -> tuple[int, int]:
        return shard, self.sampler.run_shard(shard)


def _torchrun_rank() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def resolve_launcher(launcher: str) -> str:
    """The fan-out for ``launcher="auto"``: torchrun ranks, a Ray job, or one local process."""
    if launcher != "auto":
        return launcher
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "torchrun"
    # A shell's RAY_ADDRESS (the job server `lamamba submit` uses) does not make a local run a Ray one.
    return "ray" if in_ray_job() else "local"


def run_sampling(cfg: SampleConfig) -> list[int]:
    """Sample every shard of ``cfg`` that is not finished yet; returns the shards this process
    (or, for Ray, its workers) computed."""
    write_or_check_metadata(cfg, protocol(cfg))
    pending = pending_shards(cfg)
    launcher = resolve_launcher(cfg.launcher)
    if launcher == "ray":
        return _run_ray(cfg, pending)
    if launcher == "torchrun":
        # Static ownership (shard s belongs to rank s mod W), so ranks never race on the done list.
        rank, world = _torchrun_rank()
        return _run_local(cfg, [s for s in pending if s % world == rank], position=rank,
                          desc=f"sampling (rank {rank}/{world})")
    return _run_local(cfg, pending)
