"""The encode job: plan, skip finished shards, encode the rest (Ray or in-process), manifest last.

The output folder holds one data set: ``dataset.json`` (written before the first shard) records
the settings that make it (:func:`dataset_settings`). A rerun with the same settings resumes; with
other ones it is refused naming them, unless ``replace=true``, which removes the old manifest
first, then the old shards, so no manifest ever describes shards it did not list. Failed shards
are retried (:class:`Retries`): storage outages with backoff under one job-wide time budget,
other errors ``ray.max_retries`` times.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import yaml
from tqdm import tqdm

from data_pipeline.config import EncodeConfig
from data_pipeline.manifest import MANIFEST_NAME, build_manifest, read_marker, write_manifest
from data_pipeline.shard_plan import PlannedShard, plan_shards
from data_pipeline.sources import list_source
from data_pipeline.writer import cached_autoencoder, encode_shard
from lamamba import storage
from lamamba.config import ConfigError, config_hash, redacted, to_dict
from lamamba.ray_runtime import ray_session
from lamamba.run_identity import changed_keys, identity

log = logging.getLogger("lamamba.encode")


class EncodeError(RuntimeError):
    """Some shards could not be written; the message names them. Rerun to finish."""


class StorageOutage(EncodeError):
    """The storage stayed unreachable for longer than the job's retry budget."""


DATASET_NAME = "dataset.json"
_SHARD_FILE = re.compile(r"^shard-\d{6,}\.(tar|done\.json)$")


def dataset_settings(cfg: EncodeConfig) -> dict[str, Any]:
    """What makes the data set in ``cfg.output``: the job's identity (lamamba.run_identity) without
    the output's own location."""
    return {k: v for k, v in identity(cfg).items() if k != "output"}


def _claim_output(cfg: EncodeConfig, output: str) -> None:
    """Refuse an output holding a data set of other settings, or (``replace``) remove it: the
    manifest first, so no manifest ever points at shards being rewritten; then record ours."""
    url = storage.join(output, DATASET_NAME)
    settings = dataset_settings(cfg)
    names = storage.listdir(output, cfg.storage_options)
    if DATASET_NAME in names:
        existing = json.loads(storage.read_bytes(url, cfg.storage_options)).get("settings", {})
        differ = changed_keys(existing, settings)
    elif MANIFEST_NAME in names or any(_SHARD_FILE.match(n) and n.endswith(".tar") for n in names):
        differ = ["(settings not recorded: written before dataset.json existed)"]
    else:
        differ = []
    if differ and not cfg.replace:
        raise ConfigError(f"output: {output} holds a data set made with other {', '.join(differ)}; "
                          f"encoding into it would destroy that data set: choose another output, or "
                          f"replace=true to delete it and encode this one")
    if differ:
        log.warning("replace=true: deleting the data set in %s (other %s)", output, ", ".join(differ))
        if MANIFEST_NAME in names:
            storage.remove(storage.join(output, MANIFEST_NAME), storage_options=cfg.storage_options)
        for name in names:
            if _SHARD_FILE.match(name) or name == DATASET_NAME:
                storage.remove(storage.join(output, name), storage_options=cfg.storage_options)
    if differ or DATASET_NAME not in names:
        storage.write_bytes(url, json.dumps({"settings": settings}, indent=1, sort_keys=True).encode(),
                            cfg.storage_options)


@dataclass
class Retries:
    """Whether and when a failed shard is tried again.

    A storage outage (:func:`lamamba.storage.is_transient_error`) is retried with a doubling
    backoff (1 s to 30 s) while the storage has been failing for less than ``budget_s``: the
    outage is counted over the whole job (every shard's failures extend it, any success ends it),
    so a dead endpoint stops the job after about ``budget_s``, not after a timeout per remaining
    shard. Other errors get ``max_retries`` more attempts per shard.
    """

    max_retries: int
    budget_s: float
    outage_since: float | None = None
    backoffs: int = 0
    attempts: dict[str, int] = field(default_factory=dict)

    def succeeded(self) -> None:
        self.outage_since, self.backoffs = None, 0

    def failed(self, name: str, err: BaseException) -> float | None:
        """Seconds to wait before trying shard ``name`` again, or None to give it up; raises
        :class:`StorageOutage` once an outage has outlasted the budget."""
        if storage.is_transient_error(err):
            now = time.monotonic()
            self.outage_since = self.outage_since if self.outage_since is not None else now
            spent = now - self.outage_since
            if spent >= self.budget_s:
                raise StorageOutage(f"the storage has been unreachable for {spent:.0f} s (retry_budget_s="
                                    f"{self.budget_s:g}); last error: {type(err).__name__}: {err}")
            self.backoffs += 1
            return min(30.0, 2.0 ** (self.backoffs - 1), self.budget_s - spent)
        self.attempts[name] = self.attempts.get(name, 0) + 1
        return 0.0 if self.attempts[name] <= self.max_retries else None


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


def _retry_delay(retries: Retries, shard: PlannedShard, err: BaseException, failures: dict[str, str]) -> float | None:
    """Ask ``retries`` about a failed shard; record it in ``failures`` when it is given up."""
    delay = retries.failed(shard.tar_name, err)
    what = f"{type(err).__name__}: {err}"
    if delay is None:
        failures[shard.tar_name] = what
        log.warning("shard %s: %s; giving it up", shard.tar_name, what)
    else:
        log.warning("shard %s: %s; retry in %.0f s", shard.tar_name, what, delay)
    return delay


def _run_local(todo: list[PlannedShard], cfg: EncodeConfig, on_done, retries: Retries) -> dict[str, str]:
    """The plain loop: each shard tried until it succeeds or ``retries`` gives it up."""
    failures: dict[str, str] = {}
    for shard in todo:
        while True:
            try:
                record = _encode_task(shard, cfg)
            except Exception as err:  # noqa: BLE001 - reported per shard; the other shards go on
                delay = _retry_delay(retries, shard, err, failures)
                if delay is None:
                    break
                time.sleep(delay)
                continue
            retries.succeeded()
            on_done(record)
            break
    return failures


def _run_ray(todo: list[PlannedShard], cfg: EncodeConfig, on_done, retries: Retries) -> dict[str, str]:
    """Keep ``num_workers`` shard tasks in flight. Ray restarts tasks whose worker died; a task
    that raised is retried here, when ``retries`` says so (after its backoff)."""
    import ray

    task = ray.remote(_encode_task).options(
        num_cpus=cfg.ray.cpus_per_worker, num_gpus=cfg.ray.gpus_per_worker,
        max_retries=cfg.ray.max_retries, retry_exceptions=False)
    cfg_ref = ray.put(cfg)
    pending: dict[Any, PlannedShard] = {}
    queue = list(reversed(todo))
    waiting: list[tuple[float, PlannedShard]] = []  # (monotonic time it may run again, shard)
    failures: dict[str, str] = {}
    try:
        while queue or pending or waiting:
            now = time.monotonic()
            queue += [s for t, s in waiting if t <= now]
            waiting = [(t, s) for t, s in waiting if t > now]
            while queue and len(pending) < cfg.ray.num_workers:
                shard = queue.pop()
                pending[task.remote(shard, cfg_ref)] = shard
            timeout = max(0.0, min(t for t, _ in waiting) - now) if waiting else None
            if not pending:
                time.sleep(timeout)
                continue
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
            if not ready:
                continue
            shard = pending.pop(ready[0])
            try:
                record = ray.get(ready[0])
            except Exception as err:  # noqa: BLE001 - reported per shard; the other shards go on
                delay = _retry_delay(retries, shard, err, failures)
                if delay is not None:
                    waiting.append((time.monotonic() + delay, shard))
                continue
            retries.succeeded()
            on_done(record)
    except StorageOutage:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
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
    _claim_output(cfg, output)
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

    retries = Retries(cfg.ray.max_retries, cfg.retry_budget_s)
    try:
        if not todo:
            failures = {}
        elif cfg.ray.num_workers == 0:
            failures = _run_local(todo, cfg, on_done, retries)
        else:
            with ray_session(cfg.ray.address, cfg.ray.num_cpus):
                failures = _run_ray(todo, cfg, on_done, retries)
    except StorageOutage as err:
        raise StorageOutage(f"{err}. Stopping with {len(written)} of {len(todo)} shards of this run written; "
                            f"rerun the same command when {output} is reachable to resume") from None
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
