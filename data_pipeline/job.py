"""The encode job: plan, skip finished shards, encode the rest (Ray or in-process), manifest last."""

from __future__ import annotations

import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import yaml
from tqdm import tqdm

from data_pipeline.config import EncodeConfig
from data_pipeline.manifest import build_manifest, read_marker, write_manifest
from data_pipeline.shard_plan import PlannedShard, plan_shards
from data_pipeline.sources import list_source
from data_pipeline.writer import cached_autoencoder, encode_shard
from lamamba import storage
from lamamba.config import config_hash, redacted, to_dict
from lamamba.ray_runtime import ray_session

log = logging.getLogger("lamamba.encode")


class EncodeError(RuntimeError):
    """Some shards could not be written; the message names them. Rerun to finish."""


@dataclass
class EncodeSummary:
    manifest_url: str
    manifest_id: str
    images: int  # images encoded by this run
    shards_written: list[str]
    shards_already_done: int
    skipped_images: int  # corrupt or unreadable, over the whole dataset
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        return [
            f"images encoded: {self.images} ({self.images_per_second:.1f} images/s over {self.seconds:.1f} s)",
            f"shards written: {len(self.shards_written)}, already done: {self.shards_already_done}",
            f"skipped images: {self.skipped_images}",
            f"manifest: {self.manifest_url} (id {self.manifest_id})",
        ]


def _record_run(cfg: EncodeConfig) -> None:
    """Write the resolved config (credentials redacted) and its hash into the run directory."""
    data = redacted(to_dict(cfg))
    storage.makedirs(cfg.run_dir)
    storage.write_bytes(storage.join(cfg.run_dir, "config.yaml"), yaml.safe_dump(data, sort_keys=False).encode())
    storage.write_bytes(storage.join(cfg.run_dir, "config_hash"), (config_hash(cfg) + "\n").encode())


def _attach_log_file(cfg: EncodeConfig) -> logging.Handler | None:
    if not storage.is_local(cfg.run_dir):
        return None
    handler = logging.FileHandler(os.path.join(cfg.run_dir.removeprefix("file://"), "encode.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _encode_task(shard: PlannedShard, cfg: EncodeConfig) -> dict[str, Any]:
    """Encode one shard in this process (a Ray worker or the driver)."""
    from lamamba.devices import bind_device, select_device

    # A worker given a GPU that finds CUDA unusable stops with the reason instead of encoding on CPU.
    device = select_device("cuda" if cfg.ray.gpus_per_worker > 0 else "cpu").device
    bind_device(device)
    encoder = cached_autoencoder(cfg.autoencoder, device)
    return encode_shard(shard, encoder, output=cfg.output_url, resolution=cfg.resolution,
                        batch_size=cfg.batch_size, source_options=cfg.source.storage_options,
                        storage_options=cfg.storage_options, flip=cfg.flip)


def _run_local(todo: list[PlannedShard], cfg: EncodeConfig, on_done) -> dict[str, str]:
    """The plain loop: each shard tried up to 1 + ``ray.max_retries`` times, failures reported."""
    failures = {}
    for shard in todo:
        for attempt in range(cfg.ray.max_retries + 1):
            try:
                record = _encode_task(shard, cfg)
            except Exception as err:  # noqa: BLE001 - reported per shard; the other shards go on
                failures[shard.tar_name] = f"{type(err).__name__}: {err}"
                log.warning("shard %s, attempt %d: %s", shard.tar_name, attempt + 1, err)
                continue
            failures.pop(shard.tar_name, None)
            on_done(record)
            break
    return failures


def _run_ray(todo: list[PlannedShard], cfg: EncodeConfig, on_done) -> dict[str, str]:
    """Keep ``num_workers`` shard tasks in flight; a failed task is retried by Ray, then reported."""
    import ray

    task = ray.remote(_encode_task).options(
        num_cpus=cfg.ray.cpus_per_worker, num_gpus=cfg.ray.gpus_per_worker,
        max_retries=cfg.ray.max_retries, retry_exceptions=True)
    cfg_ref = ray.put(cfg)
    pending: dict[Any, PlannedShard] = {}
    queue = list(reversed(todo))
    failures = {}
    while queue or pending:
        while queue and len(pending) < cfg.ray.num_workers:
            shard = queue.pop()
            pending[task.remote(shard, cfg_ref)] = shard
        ready, _ = ray.wait(list(pending), num_returns=1)
        shard = pending.pop(ready[0])
        try:
            on_done(ray.get(ready[0]))
        except Exception as err:  # noqa: BLE001 - reported per shard; the other shards go on
            failures[shard.tar_name] = f"{type(err).__name__}: {err}"
    return failures


def run_encode(cfg: EncodeConfig) -> EncodeSummary:
    """Run the encode job ``cfg`` to completion; raises :class:`EncodeError` if shards failed."""
    started = time.perf_counter()
    _record_run(cfg)
    handler = _attach_log_file(cfg)
    try:
        return _run(cfg, started)
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def _run(cfg: EncodeConfig, started: float) -> EncodeSummary:
    output = cfg.output_url
    listing = list_source(cfg.source)
    shards = plan_shards(listing.items, cfg.shard_size, cfg.resolution, cfg.autoencoder.name)
    log.info("source %s: %d images, %d classes -> %d shards of up to %d at %d px into %s",
             cfg.source.kind, len(listing.items), listing.num_classes, len(shards), cfg.shard_size,
             cfg.resolution, output)
    storage.makedirs(output, cfg.storage_options)
    with ThreadPoolExecutor(max_workers=16) as pool:
        markers = list(pool.map(lambda s: read_marker(output, s, cfg.storage_options, cfg.verify_checksums), shards))
    records: dict[int, dict[str, Any]] = {s.index: m for s, m in zip(shards, markers) if m is not None}
    todo = [s for s in shards if s.index not in records]
    log.info("%d shards already done, %d to encode", len(records), len(todo))

    by_name = {s.tar_name: s for s in todo}
    written: list[str] = []
    encoded = 0
    bar = tqdm(total=sum(len(s.items) for s in todo), unit="img", desc="encode", dynamic_ncols=True,
               file=sys.stderr, disable=not todo)

    def on_done(record: dict[str, Any]) -> None:
        nonlocal encoded
        records[by_name[record["name"]].index] = record
        written.append(record["name"])
        encoded += record["num_items"]
        bar.update(len(by_name[record["name"]].items))
        bar.set_postfix(shards=f"{len(written)}/{len(todo)}",
                        skipped=sum(len(r["skipped"]) for r in records.values()))

    try:
        if not todo:
            failures = {}
        elif cfg.ray.num_workers == 0:
            failures = _run_local(todo, cfg, on_done)
        else:
            with ray_session(cfg.ray.address, cfg.ray.num_cpus):
                failures = _run_ray(todo, cfg, on_done)
    finally:
        bar.close()
    if failures:
        for name, err in sorted(failures.items()):
            log.error("shard %s failed: %s", name, err)
        raise EncodeError(f"{len(failures)} of {len(shards)} shards failed after retries "
                          f"({', '.join(sorted(failures)[:5])}{' ...' if len(failures) > 5 else ''}); "
                          f"first error: {next(iter(failures.values()))}. Rerun to redo only those.")

    ordered = [records[s.index] for s in shards]
    manifest = build_manifest(
        ordered, autoencoder=cfg.autoencoder.name, resolution=cfg.resolution, num_classes=listing.num_classes,
        class_names=listing.class_names, image_channels=cfg.autoencoder.image_channels,
        source=f"{cfg.source.kind}:{cfg.source.path or cfg.source.split}", flip=cfg.flip)
    url = write_manifest(output, manifest, cfg.storage_options)
    summary = EncodeSummary(url, manifest["id"], encoded, written, len(shards) - len(todo),
                            len(manifest["skipped"]), time.perf_counter() - started)
    for line in summary.lines():
        log.info(line)
    for item in manifest["skipped"]:
        log.warning("skipped %s: %s", item["key"], item["error"])
    return summary
