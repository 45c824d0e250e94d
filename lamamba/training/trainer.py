"""The training loop, composing the pieces of this package:

config -> distributed world -> data (LatentLoader at the checkpoint's sample cursor) -> model ->
DeepSpeed engine -> EMA -> checkpointer / preemption watcher / numerics guard / monitors.

Every random draw that touches a sample (timestep, diffusion noise, label drop; the reader does
the flip and the posterior noise) is keyed by (seed, dataset index, epoch), so the per-sample
losses do not depend on the number of ranks and a resumed run repeats the straight run exactly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any

import torch
import yaml

from lamamba import storage
from lamamba.config import ConfigError, config_hash, redacted, to_dict
from lamamba.devices import set_tf32, tf32_enabled
from lamamba.ops import explain_backend
from lamamba.run_identity import identity_changes
from lamamba.training.checkpointer import Checkpointer, step_dir_name
from lamamba.training.config import TrainConfig
from lamamba.training.distributed import World, all_reduce_sum, broadcast_object, init_distributed, shutdown
from lamamba.training.ema import EMA
from lamamba.training.engine import build_engine, plan_batches
from lamamba.training.monitors import IntervalMeter, MetricsSinks, StepStats, format_line
from lamamba.training.numerics import NumericsGuard
from lamamba.training.peak_flops import matmul_dtype, resolve_peak
from lamamba.training.preemption import PreemptionWatcher
from lamamba.training.step import COUNT, LOSS, MSE, QCOUNT, QSUM, STOP, VB, VECTOR, DiffusionTrainStep

log = logging.getLogger("lamamba.train")


def setup_logging(run_dir: str, world: World) -> None:
    """Rank 0 logs INFO to stderr and <run_dir>/train.log; other ranks log warnings, prefixed."""
    log.handlers.clear()
    log.propagate = False
    fmt = logging.Formatter(f"%(asctime)s [rank {world.rank}] %(levelname)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    log.addHandler(stream)
    log.setLevel(logging.INFO if world.is_main else logging.WARNING)
    if world.is_main:
        os.makedirs(run_dir, exist_ok=True)
        handler = logging.FileHandler(os.path.join(run_dir, "train.log"))
        handler.setFormatter(fmt)
        log.addHandler(handler)


def record_device(run_dir: str, world: World) -> None:
    """Say once which device the ranks compute on (a CPU fallback as a warning) and record it in
    <run_dir>/device.json, so a run that fell back to the CPU shows it in its metadata."""
    choice = world.choice
    if choice is None or not world.is_main:
        return
    (log.warning if choice.fallback else log.info)("training on %s: %s", choice.device, choice.reason)
    record = {**choice.as_dict(), "world_size": world.world_size, "torch": torch.__version__,
              "torch_cuda": torch.version.cuda, "tf32": world.device.type == "cuda" and tf32_enabled()}
    with open(os.path.join(run_dir, "device.json"), "w") as f:
        json.dump(record, f, indent=2)


def record_scan_backend(run_dir: str, world: World, model_cfg) -> None:
    """Resolve the selective-scan backend on every rank before anything is built (one that cannot
    run here raises now, on every rank alike, with the fix); rank 0 logs the choice and its reason
    and records them in <run_dir>/scan_backend.json."""
    if model_cfg.backbone != "lamamba":
        return
    backend, reason = explain_backend(model_cfg.scan_backend, world.device, model_cfg.d_state)
    if world.is_main:
        log.info("selective scan: %s backend (scan_backend=%s: %s)", backend, model_cfg.scan_backend, reason)
        with open(os.path.join(run_dir, "scan_backend.json"), "w") as f:
            json.dump({"requested": model_cfg.scan_backend, "backend": backend, "reason": reason,
                       "device": str(world.device), "d_state": model_cfg.d_state}, f, indent=2)


def warm_start(model: torch.nn.Module, cfg_model, init_from: str) -> None:
    """Load the EMA weights named by ``init_from`` (a run, checkpoints or checkpoint dir, or a
    .safetensors) into ``model``; another resolution is fine, another architecture is refused."""
    from lamamba.models.io import read_model_file
    from lamamba.training.checkpointer import resolve_checkpoint

    url = init_from if init_from.endswith(".safetensors") else storage.join(resolve_checkpoint(init_from),
                                                                            "ema.safetensors")
    state_dict, source_cfg, _ = read_model_file(url)
    source, target = to_dict(source_cfg.replace(input_size=cfg_model.input_size)), to_dict(cfg_model)
    differing = sorted(k for k in source if source[k] != target[k] and k not in ("class_dropout_prob", "scan_backend"))
    if differing:
        raise ConfigError(f"init_from: {url} holds a different architecture ({', '.join(differing)} differ); "
                          "a warm start changes only the resolution")
    model.load_state_dict_resized(state_dict)
    log.info("warm start from %s (latent side %d -> %d)", url, source_cfg.input_size, cfg_model.input_size)


class Trainer:
    """One training run of ``cfg`` on this process's rank of ``world``."""

    def __init__(self, cfg: TrainConfig, world: World, watcher: PreemptionWatcher):
        self.cfg = cfg
        self.world = world
        self.watcher = watcher
        self.device = world.device
        self.plan = plan_batches(cfg.global_batch, world.world_size, cfg.engine.micro_batch)
        self.config_dict = redacted(to_dict(cfg))
        self.config_yaml = yaml.safe_dump(self.config_dict, sort_keys=False)
        self.config_hash = config_hash(cfg)
        # One writer per checkpoint directory, checked writable, before this run writes anything.
        self.checkpointer = Checkpointer(cfg.checkpoint_dir, world, cfg.checkpoint.keep_last,
                                         cfg.checkpoint.staging_dir, cfg.checkpoint.storage_options,
                                         cfg.checkpoint.consolidated, log=log.info, warn=log.warning,
                                         upload_budget_s=cfg.checkpoint.upload_budget_s,
                                         lease_ttl_s=cfg.checkpoint.lease_ttl_s)
        self.checkpointer.acquire()
        try:
            self._start(cfg, world)
        except BaseException:
            self.checkpointer.close()
            raise

    def _start(self, cfg: TrainConfig, world: World) -> None:
        from lamamba.data import CacheFullError, LatentLoader, ShardError
        from lamamba.diffusion import create_diffusion
        from lamamba.models import build_model
        from lamamba.models.flops import count_flops

        if world.is_main:
            os.makedirs(cfg.run_dir, exist_ok=True)
            with open(os.path.join(cfg.run_dir, "config.yaml"), "w") as f:
                f.write(self.config_yaml)
            with open(os.path.join(cfg.run_dir, "config_hash"), "w") as f:
                f.write(self.config_hash + "\n")

        if cfg.checkpoint.resume:
            self.resume_step = self.checkpointer.find_resume_step()
        else:
            self.resume_step = None
            latest = broadcast_object(self.checkpointer.scan().latest if world.is_main else None)
            if latest is not None:
                raise ConfigError(f"checkpoint.resume=false but {cfg.checkpoint_dir} holds committed checkpoints "
                                  f"(newest: step {latest}); use a new run_dir or checkpoint.dir")
        resume_state = self.checkpointer.read_state(self.resume_step) if self.resume_step is not None else {}

        if not cfg.data.manifest:
            raise ConfigError("data.manifest: no latent manifest given (the output of `lamamba encode`)")
        try:
            self.loader = LatentLoader(cfg.data.manifest, cfg.global_batch, world.rank, world.world_size, cfg.seed,
                                       start_sample=resume_state.get("samples_consumed", 0),
                                       num_workers=cfg.data.num_workers, storage_options=cfg.data.storage_options,
                                       cache_dir=cfg.data.cache_dir or None, cache_limit_gb=cfg.data.cache_limit_gb,
                                       block_shards=cfg.data.block_shards, fetch_workers=cfg.data.fetch_workers)
        except (FileNotFoundError, ValueError, ShardError, CacheFullError) as err:  # a missing, invalid or damaged data set
            raise ConfigError(f"data.manifest: {err}") from None
        self.manifest = self.loader.manifest
        self._check_compatible(resume_state)

        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        model = build_model(cfg.model)
        if cfg.init_from and self.resume_step is None:
            warm_start(model, cfg.model, cfg.init_from)
        model.set_activation_checkpointing(cfg.engine.activation_checkpointing)
        num_params = sum(p.numel() for p in model.parameters())  # before ZeRO-3 partitions them
        self.engine = build_engine(model, cfg, self.plan)
        dtype = torch.bfloat16 if cfg.engine.precision == "bf16" else torch.float32
        self.ema = EMA(self.engine, cfg.ema.decays)
        self.train_step = DiffusionTrainStep(self.engine, create_diffusion(**dataclasses.asdict(cfg.diffusion)),
                                             self.plan, cfg.seed, cfg.model.class_dropout_prob, dtype, self.device)

        self.step = 0
        skipped = 0
        if self.resume_step is not None:
            state = self.checkpointer.load(self.resume_step, self.engine, self.ema)
            self.step, skipped = state["step"], state["skipped_steps"]
            log.info("resumed from %s: step %d, %d samples consumed (checkpoint written by %d ranks, now %d)",
                     storage.join(cfg.checkpoint_dir, step_dir_name(self.resume_step)), self.step,
                     state["samples_consumed"], state["world_size"], world.world_size)
        self.guard = NumericsGuard(cfg.numerics.max_consecutive_skips, skipped)
        gflops = count_flops(cfg.model)["gflops"]
        peak = resolve_peak(cfg.monitor.peak_tflops, self.device,
                            matmul_dtype(cfg.engine.precision, self.device.type == "cuda" and tf32_enabled()))
        if world.is_main:
            log.info("MFU peak per device: %s", peak.source)
        self.meter = IntervalMeter(6 * gflops * 1e9, (peak.tflops or 0.0) * 1e12 * world.world_size, self.device)
        self.sinks = MetricsSinks(cfg.run_dir, cfg.monitor.tensorboard, self.step) if world.is_main else None
        self.sampler = None
        if world.is_main and cfg.monitor.sample_every > 0:
            from lamamba.training.sample_grid import EMASampleGrid

            m = cfg.monitor
            self.sampler = EMASampleGrid(cfg.model, cfg.diffusion, self.device, m.sample_count, m.sample_steps,
                                         m.sample_cfg_scale, cfg.seed, float(self.manifest["scale_factor"]),
                                         cfg.autoencoder)
        log.info("training %s at %d px: %.1fM params, %.2f GFLOPs/img; %d ranks, global batch %d = %d per rank "
                 "x %d accumulation; ZeRO-%d %s, activation checkpointing %r",
                 cfg.model.preset, int(self.manifest["resolution"]),
                 num_params / 1e6,
                 gflops, world.world_size, cfg.global_batch, self.plan.micro_batch, self.plan.accumulation,
                 cfg.engine.zero_stage, cfg.engine.precision, cfg.engine.activation_checkpointing)

    def _check_compatible(self, resume_state: dict[str, Any]) -> None:
        """The data must fit the model, and a resumed run must read the same data."""
        cfg, man = self.cfg.model, self.manifest
        for key, want in (("input_size", man["latent_size"]), ("in_channels", man["channels"])):
            if getattr(cfg, key) != int(want):
                raise ConfigError(f"model.{key}={getattr(cfg, key)} but the manifest {self.cfg.data.manifest} "
                                  f"has {want}")
        if int(man["num_classes"]) > cfg.num_classes:
            raise ConfigError(f"model.num_classes={cfg.num_classes} < the manifest's {man['num_classes']} classes")
        if resume_state:
            if resume_state["manifest_id"] != man["id"]:
                raise ConfigError(f"the checkpoint was trained on manifest {resume_state['manifest_id']} but "
                                  f"data.manifest is {man['id']}; use a new run_dir or checkpoint.resume=false")
            if resume_state["global_batch"] != self.cfg.global_batch:
                raise ConfigError(f"global_batch={self.cfg.global_batch} but the checkpoint used "
                                  f"{resume_state['global_batch']}; exact resume needs the same global batch")
            # The data is checked by its manifest id above and the checkpoint was found where
            # checkpoint.dir points, so their paths may move.
            differ, continued = identity_changes(resume_state.get("config", {}), self.config_dict, TrainConfig)
            differ = [k for k in differ if k not in ("data.manifest", "checkpoint.dir")]
            if differ:
                raise ConfigError(f"the checkpoint in {self.cfg.checkpoint_dir} belongs to a run with other "
                                  f"{', '.join(differ)}; these change the run, so it cannot continue: restore "
                                  f"them, or start a new run (another run_dir; `lamamba submit ... --new-run`)")
            if continued:
                log.info("continuing the run with changed %s", ", ".join(continued))
            drawn = resume_state.get("data_draws", 1)
            if drawn != self.loader.DRAW_VERSION:  # same order and distribution, other posterior draws
                log.warning("the checkpoint's data came with keyed draws of version %d, this code makes version %d: "
                            "from here on each sample's posterior draw differs from what the run drew before, so "
                            "the run is not bit-identical to one that never stopped", drawn, self.loader.DRAW_VERSION)

    # ---- the loop ------------------------------------------------------------------------------
    def _save(self, final: bool) -> str | None:
        state = {"step": self.step, "samples_consumed": self.loader.samples_consumed,
                 "skipped_steps": self.guard.skipped_total, "world_size": self.world.world_size,
                 "global_batch": self.cfg.global_batch, "config_hash": self.config_hash, "config": self.config_dict,
                 "manifest_id": self.manifest["id"], "data_draws": self.loader.DRAW_VERSION,
                 "lr_scheduler": self.engine.lr_scheduler.state_dict(),
                 "time": time.time()}
        url = self.checkpointer.save(self.step, self.engine, self.ema, state, self.config_yaml, self.cfg.model,
                                     final=final)
        if url is not None:
            log.info("checkpoint committed: %s", url)
        return url

    def _log_interval(self) -> None:
        figures = self.meter.flush(self.guard.skipped_total)
        if self.sinks is not None:
            self.sinks.scalars(figures)
        log.info(format_line(figures))

    def _record(self, result, data_time: float, clock: float) -> tuple[bool, float]:
        """All-reduce one step's figures, guard, update the EMA, log; returns (a rank asked to
        stop, the step's end time): the step's time runs from ``clock`` to the end of the EMA update.
        """
        result.sums[STOP] = float(self.watcher.stop_requested())
        total = all_reduce_sum(result.sums)
        self.step += 1
        loss = float(total[LOSS] / total[COUNT])
        skipped = self.guard.check(self.step, loss, result.grad_norm, result.applied)
        if skipped:
            log.warning("step %d skipped: non-finite loss %s or grad norm %s (%d in a row)",
                        self.step, loss, result.grad_norm, self.guard.consecutive)
        else:
            self.ema.update()
        ended = time.perf_counter()
        self.meter.add(StepStats(
            step=self.step, loss=loss, mse=float(total[MSE] / total[COUNT]), vb=float(total[VB] / total[COUNT]),
            quarter_loss_sum=total[QSUM:QCOUNT].tolist(), quarter_count=total[QCOUNT:VECTOR].tolist(),
            grad_norm=result.grad_norm, lr=result.lr, skipped=skipped, images=self.cfg.global_batch,
            step_time=ended - clock, data_time=data_time))
        if self.watcher.received:
            log.warning("%s received: stopping after step %d and a checkpoint", self.watcher.received, self.step)
        return bool(total[STOP] > 0), ended

    def run(self) -> int:
        cfg, mon = self.cfg, self.cfg.monitor
        if self.step >= cfg.max_steps:
            log.info("nothing to do: step %d >= max_steps %d", self.step, cfg.max_steps)
            return 0
        batches = iter(self.loader)
        self.engine.train()
        # Throughput clock: a step's time is the wall-clock from the end of the previous step to
        # the end of its EMA update (data wait, forward, backward, optimizer step, metric
        # all-reduce, EMA, the previous step's logging), minus checkpoint saves and sample grids.
        clock = time.perf_counter()
        try:
            while self.step < cfg.max_steps:
                fetch = time.perf_counter()
                batch = next(batches)
                data_time = time.perf_counter() - fetch
                result = self.train_step(batch)
                stop, clock = self._record(result, data_time, clock)
                last = stop or self.step == cfg.max_steps
                if self.step % mon.log_every == 0 or last:
                    self._log_interval()
                paused = time.perf_counter()
                if mon.sample_every > 0 and self.step % mon.sample_every == 0:
                    weights = self.ema.state_dict()  # collective: every rank joins the gather
                    if self.sampler is not None:
                        self.sinks.image("samples/ema", self.sampler(weights), self.step)
                if self.step % cfg.checkpoint.every_steps == 0 or last:
                    url = self._save(final=last)
                    if stop:
                        log.info("preempted (%s) at step %d: checkpoint %s committed; exiting 0 - "
                                 "relaunch the same command to continue", self.watcher.reason(), self.step, url)
                        return 0
                clock += time.perf_counter() - paused
            log.info("finished: %d steps", self.step)
            return 0
        finally:
            if self.sinks is not None:
                self.sinks.close()
            self.checkpointer.close()


def train(cfg: TrainConfig) -> int:
    """Run ``cfg`` on this process's rank (launched by torchrun, deepspeed, or plain python)."""
    # Signals are caught from the start, so a preemption during start-up still ends in a checkpoint.
    watcher = PreemptionWatcher(cfg.preemption.signals, cfg.preemption.time_budget_s)
    world = init_distributed(cfg.engine.backend, cfg.engine.device, cfg.engine.collective_timeout_s)
    set_tf32(cfg.engine.tf32)
    setup_logging(cfg.run_dir, world)
    record_device(cfg.run_dir, world)
    record_scan_backend(cfg.run_dir, world, cfg.model)
    try:
        return Trainer(cfg, world, watcher).run()
    finally:
        watcher.restore()
        shutdown()
