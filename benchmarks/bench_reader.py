"""The streaming latent reader: start-up, throughput, CPU cost, disk and memory, object-store
concurrency, and what the two-level order costs in mixing.

Synthetic data sets (random float16 moments in the real shard format, ImageNet-like class-sorted
labels dealt into strided shards) of a given latent size, each many times the cache limit.

  PYTHONPATH=. python benchmarks/bench_reader.py mixing
      class mix of global batches: full permutation vs two-level (strided and consecutive shards)
  PYTHONPATH=. python benchmarks/bench_reader.py local --latent 32 --samples 40000 --limit-mb 64
      (a) time to first batch for 1/4 and all of the data set, (b) samples/s and CPU-s/sample from
      local files through the bounded cache, (d) peak disk and RSS, and warm-cache samples/s
  PYTHONPATH=. python benchmarks/bench_reader.py s3 --latent 32 --latency 0.05
      (c) through a proxy adding --latency s per request in front of a moto S3 server: shard
      throughput for 1..16 fetches in flight
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from data_pipeline.synthetic import write_synthetic
from lamamba import storage
from lamamba.data import LatentLoader, ShardCache, epoch_order
from lamamba.data.cache import ShardRef
from lamamba.data.loader import keyed_latents


def _dir_bytes(folder: str) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def mixing(args) -> None:
    """Class histograms of global batches against the data set's (ImageNet: 1000 x 1281, sorted)."""
    classes, per_class, batch = 1000, 1281, args.batch
    labels = np.repeat(np.arange(classes), per_class)  # the listing, sorted by class
    n = len(labels)
    rng = np.random.default_rng(0)
    print(f"ImageNet-shaped listing: {n} samples, {classes} classes; global batch {batch}; 400 batches of epoch 0")
    print("order                                        distinct classes/batch   TV to uniform   classes/block")

    def report(name, order_index, shard_labels, blocks=None):
        starts = rng.integers(0, n - batch, 400)
        distinct = [len(np.unique(shard_labels[order_index[s:s + batch]])) for s in starts]
        tv = [0.5 * np.abs(np.bincount(shard_labels[order_index[s:s + batch]], minlength=classes) / batch
                           - 1 / classes).sum() for s in starts]
        per_block = "" if blocks is None else f"{np.mean(blocks):14.0f}"
        print(f"{name:44s} {np.mean(distinct):12.1f} {np.mean(tv):20.3f} {per_block}")

    report("full permutation", rng.permutation(n), labels)
    for shard_size, block_shards, px in ((2048, 64, 256), (256, 64, 1024), (256, 16, 1024)):
        count = -(-n // shard_size)
        for plan in ("strided", "consecutive"):
            if plan == "strided":  # shard i = listing positions i, i + count, ...
                shards = [np.arange(i, n, count) for i in range(count)]
            else:
                shards = [np.arange(i * shard_size, min((i + 1) * shard_size, n)) for i in range(count)]
            dataset_labels = labels[np.concatenate(shards)]
            sizes = tuple(len(s) for s in shards)
            order = epoch_order(0, 0, sizes, block_shards)
            block_classes = [len(np.unique(dataset_labels[order.index[a:b]]))
                             for a, b in zip(np.concatenate([[0], order.block_end[:-1]]), order.block_end)]
            report(f"{px} px: shards of {shard_size}, blocks of {block_shards} ({plan})", order.index,
                   dataset_labels, block_classes)


def _loader(url, cache, args, **kw):
    return LatentLoader(url, args.batch, 0, 1, seed=0, cache_dir=cache, cache_limit_gb=args.limit_mb / 1e3,
                        block_shards=args.block_shards, fetch_workers=args.fetch_workers, **kw)


def _rate(loader, steps):
    it = iter(loader)
    next(it)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        next(it)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return steps * loader.global_batch / wall, cpu / (steps * loader.global_batch)


def local(args) -> None:
    root = args.dir
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    for old in Path(root).glob("cache*"):
        shutil.rmtree(old)
    sample_bytes = 2 * 2 * 4 * args.latent * args.latent * 2
    print(f"latent {args.latent}x{args.latent}x4 ({sample_bytes / 1024:.0f} KiB/sample with both flips), "
          f"batch {args.batch}, shards of {args.shard_size}, blocks of {args.block_shards}, "
          f"cache limit {args.limit_mb} MB, cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    urls = {}
    for fraction in (4, 1):
        t = time.perf_counter()
        urls[fraction] = f"{root}/data{fraction}/manifest.json"
        if not os.path.exists(urls[fraction]):  # --keep reuses what an earlier run wrote
            write_synthetic(f"{root}/data{fraction}", args.samples // fraction, args.shard_size,
                            latent_size=args.latent, num_classes=1000)
        size = _dir_bytes(f"{root}/data{fraction}")
        print(f"data set 1/{fraction}: {args.samples // fraction} samples, {size / 1e6:.0f} MB "
              f"({size / (args.limit_mb * 1e6):.0f}x the limit), written in {time.perf_counter() - t:.0f} s")
    for fraction, url in urls.items():
        cache = f"{root}/cache-first{fraction}"
        t = time.perf_counter()
        next(iter(_loader(url, cache, args)))
        print(f"(a) time to first batch, data set 1/{fraction}: {time.perf_counter() - t:.2f} s")
    url, cache = urls[1], f"{root}/cache"
    loader = _loader(url, cache, args)
    n = loader.manifest["num_items"]
    steps = min(args.steps, n // args.batch - 2)
    rate, cpu = _rate(loader, steps)
    cache_obj = loader.reader.cache
    print(f"(b) streaming from local files, 0 workers: {rate:,.0f} samples/s, {cpu * 1e6:.0f} CPU-us/sample "
          f"({1 / cpu:,.0f} samples per CPU-second); {len(cache_obj.downloaded)} shards fetched")
    print(f"(d) peak cache on disk {cache_obj.peak_bytes() / 1e6:.0f} MB (limit {args.limit_mb} MB); "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    loader.close()
    warm = f"{root}/cache-warm"
    _loader(url, warm, args).close()
    big = LatentLoader(url, args.batch, 0, 1, seed=0, cache_dir=warm, cache_limit_gb=1e3,
                       block_shards=args.block_shards, fetch_workers=args.fetch_workers)
    list(zip(range(n // args.batch + 1), big))  # one epoch: every shard is now local
    rate, cpu = _rate(big, steps)
    print(f"warm local cache, one process: {rate:,.0f} samples/s, {cpu * 1e6:.0f} CPU-us/sample "
          f"({1 / cpu:,.0f} samples per CPU-second)")
    chosen = np.zeros((args.batch, 2, 4, args.latent, args.latent), dtype=np.float16)
    index, epochs = np.arange(args.batch), np.zeros(args.batch, dtype=np.int64)
    cpu = time.process_time()
    for _ in range(10):
        keyed_latents(chosen, index, epochs, 0, 0.18215)
    cpu = (time.process_time() - cpu) / (10 * args.batch)
    print(f"of which the keyed posterior draw alone (flip and eps keyed by (seed, index, epoch)): "
          f"{cpu * 1e6:.0f} CPU-us/sample")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


def s3(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conftest import FlakyProxy, S3Server  # the test suite's moto server and latency proxy

    root = args.dir
    shutil.rmtree(root, ignore_errors=True)
    url = write_synthetic(f"{root}/data", args.samples, args.shard_size, latent_size=args.latent, num_classes=1000)
    manifest = json.loads(Path(url).read_text())
    server = S3Server()
    try:
        options = server.bucket("bench")
        fs, _ = storage.filesystem("s3://bench", options)
        fs.put(str(Path(url).parent), "bench/data", recursive=True)
        shard_bytes = np.mean([s["size"] for s in manifest["shards"]])
        print(f"{len(manifest['shards'])} shards of {shard_bytes / 1e6:.1f} MB; proxy latency {args.latency * 1e3:.0f} ms "
              f"per request; cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
        print("fetches in flight   MB/s    samples/s   s per shard")
        refs = [ShardRef(f"s3://bench/data/{s['name']}", s["sha256"], s["size"]) for s in manifest["shards"]]
        for inflight in (1, 2, 4, 8, 16):
            proxy = FlakyProxy(server.address, latency_s=args.latency)
            cache = ShardCache(f"{root}/cache{inflight}", 10 ** 12, dict(options, endpoint_url=proxy.endpoint))
            t = time.perf_counter()
            with ThreadPoolExecutor(inflight) as pool:
                list(pool.map(cache.pin, refs))
            wall = time.perf_counter() - t
            got = sum(r.size for r in refs)
            print(f"{inflight:17d} {got / wall / 1e6:7.1f} {len(refs) * args.shard_size / wall:11,.0f} "
                  f"{wall * inflight / len(refs):10.2f}")
            proxy.stop()
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["mixing", "local", "s3"])
    parser.add_argument("--latent", type=int, default=32, help="latent side: 32 = 256 px, 128 = 1024 px")
    parser.add_argument("--samples", type=int, default=40000)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--block-shards", type=int, default=4)
    parser.add_argument("--fetch-workers", type=int, default=4)
    parser.add_argument("--limit-mb", type=float, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--dir", default="runs/bench_reader")
    parser.add_argument("--keep", action="store_true", help="keep the data sets in --dir (and reuse them)")
    args = parser.parse_args()
    {"mixing": mixing, "local": local, "s3": s3}[args.mode](args)


if __name__ == "__main__":
    main()
