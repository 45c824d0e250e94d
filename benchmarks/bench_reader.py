"""Reader throughput: LatentLoader vs a one-.npy-per-sample loader (fast-DiT's layout), same run.

Writes N synthetic 32x32x4 latent samples as tar shards + manifest (the reader's input; encoding
speed is measured by bench_encode.py) and the same samples as fast-DiT's features/<i>.npy +
labels/<i>.npy, then times batches of both with 0 and 2 DataLoader workers.

  PYTHONPATH=. python benchmarks/bench_reader.py [--samples 20000] [--batch 256] [--dir runs/bench_reader] [--reuse]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data_pipeline.manifest import build_manifest, write_manifest
from lamamba import storage
from lamamba.data import LatentLoader
from lamamba.data.shard_format import ShardSample, pack_shard

C, S = 4, 32


def write_dataset(root: str, samples: int, shard_size: int) -> str:
    """Random float16 moments in the shard format plus fast-DiT's per-sample .npy files."""
    rng = np.random.default_rng(0)
    out = os.path.join(root, "shards")
    os.makedirs(os.path.join(root, "features"))
    os.makedirs(os.path.join(root, "labels"))
    records = []
    for shard, start in enumerate(range(0, samples, shard_size)):
        batch = []
        for i in range(start, min(start + shard_size, samples)):
            moments = rng.standard_normal((2, 2, C, S, S), dtype=np.float32).astype(np.float16)
            moments[:, 1] = np.abs(moments[:, 1]) * 0.1
            label = int(rng.integers(1000))
            batch.append(ShardSample(f"{i:09d}", moments, label, f"img/{i}.JPEG"))
            # fast-DiT stores one already-sampled, already-flipped latent (1, C, S, S) float32 per image
            np.save(os.path.join(root, "features", f"{i}.npy"), moments[0, 0][None].astype(np.float32))
            np.save(os.path.join(root, "labels", f"{i}.npy"), np.array([label]))
        data = pack_shard(batch)
        name = f"shard-{shard:06d}.tar"
        storage.write_bytes(os.path.join(out, name), data)
        records.append({"name": name, "num_items": len(batch), "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(), "skipped": [], "latent_channels": C,
                        "latent_size": S, "scale_factor": 0.18215})
    manifest = build_manifest(records, autoencoder="synthetic", resolution=S * 8, num_classes=1000,
                              class_names=[], image_channels=3, source="synthetic")
    write_manifest(out, manifest, None)
    return out


class NpyPerSample(Dataset):
    """fast-DiT's CustomDataset: np.load of features/<i>.npy and labels/<i>.npy per item."""

    def __init__(self, root: str, n: int):
        self.root, self.n = root, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        x = np.load(os.path.join(self.root, "features", f"{i}.npy"))
        y = np.load(os.path.join(self.root, "labels", f"{i}.npy"))
        return torch.from_numpy(x), torch.from_numpy(y)


def rate(iterator, batch: int, steps: int, warmup: int = 3) -> tuple[float, float]:
    """(samples per wall second, samples per CPU second of this process)."""
    for _ in range(warmup):
        next(iterator)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        next(iterator)
    return steps * batch / (time.perf_counter() - wall), steps * batch / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--dir", default="runs/bench_reader")
    parser.add_argument("--reuse", action="store_true", help="keep a dataset already written in --dir")
    args = parser.parse_args()
    shards = os.path.join(args.dir, "shards")
    if args.reuse and os.path.exists(os.path.join(shards, "manifest.json")):
        print(f"reusing the dataset in {args.dir}")
    else:
        shutil.rmtree(args.dir, ignore_errors=True)
        t = time.perf_counter()
        write_dataset(args.dir, args.samples, shard_size=1000)
        print(f"wrote {args.samples} samples in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        LatentLoader(shards, args.batch, 0, 1, seed=0, cache_dir=os.path.join(args.dir, "cache"))
        print(f"first open (download, verify, decode into the cache): {time.perf_counter() - t:.1f} s")
    print(f"batch {args.batch}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("loader                     workers   samples/s   samples/CPU-s of the main process")
    for workers in (0, 2):
        loader = LatentLoader(shards, args.batch, 0, 1, seed=0, num_workers=workers,
                              cache_dir=os.path.join(args.dir, "cache"))
        wall, cpu = rate(iter(loader), args.batch, args.steps)
        print(f"LatentLoader (shards)      {workers:>7} {wall:11.0f} {cpu:11.0f}")
        npy = DataLoader(NpyPerSample(args.dir, args.samples), batch_size=args.batch, shuffle=True,
                         num_workers=workers, drop_last=True, persistent_workers=workers > 0)
        wall, cpu = rate(iter(npy), args.batch, min(args.steps, args.samples // args.batch - 4))
        print(f"one .npy per sample        {workers:>7} {wall:11.0f} {cpu:11.0f}")


if __name__ == "__main__":
    main()
