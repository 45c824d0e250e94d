"""Encode throughput with the tiny VAE: the Ray job with 2 workers vs a plain in-process loop.

Generates a class-folder tree of random JPEGs (varied sizes), then runs the same encode job twice
into fresh outputs: ``ray.num_workers=0`` (a plain loop in this process, no Ray) and
``ray.num_workers=2`` on a local Ray with 2 CPUs. Ray start-up and the workers' first imports
(torch, diffusers: seconds each) are excluded: a warm-up job on a few images runs first.
The plain loop runs twice: with torch's default intra-op threads and with one thread (what each
Ray worker uses). All runs must produce the same manifest id (byte-identical shards).

  PYTHONPATH=. python benchmarks/bench_encode.py [--images 1024] [--resolution 64] [--dir runs/bench_encode]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil

import numpy as np
import torch
from PIL import Image

from data_pipeline import EncodeConfig, run_encode
from lamamba.config import load_config
from lamamba.ray_runtime import ray_session


def make_images(root: str, images: int, classes: int = 8) -> None:
    rng = np.random.default_rng(0)
    sizes = [(300, 400), (375, 500), (500, 333), (256, 256)]
    for i in range(images):
        folder = os.path.join(root, f"class_{i % classes:02d}")
        os.makedirs(folder, exist_ok=True)
        h, w = sizes[i % len(sizes)]
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i}.jpg"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--dir", default="runs/bench_encode")
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    source = os.path.join(args.dir, "images")
    make_images(source, args.images)
    make_images(os.path.join(args.dir, "warm_images"), 4, classes=1)
    common = [f"source.path={source}", "autoencoder.kind=tiny-vae", f"resolution={args.resolution}",
              "shard_size=32", "batch_size=16"]
    default_threads = torch.get_num_threads()
    runs = [(f"plain loop, {default_threads} torch threads", 0, default_threads),
            ("plain loop, 1 torch thread", 0, 1), ("Ray, 2 workers (1 CPU each)", 2, default_threads)]
    ids = set()
    ray = contextlib.ExitStack()  # Ray starts for the Ray run only, not beside the plain loops
    for name, workers, threads in runs:
        torch.set_num_threads(threads)
        if workers:
            ray.enter_context(ray_session(num_cpus=2))
            warm = load_config(EncodeConfig, None, [*common, f"run_dir={args.dir}/warmup", "shard_size=1",
                                                    f"source.path={args.dir}/warm_images"])
            run_encode(warm)
        cfg = load_config(EncodeConfig, None, [*common, f"run_dir={args.dir}/{len(ids)}{name[:5]}",
                                               f"ray.num_workers={workers}"])
        summary = run_encode(cfg)
        ids.add(summary.manifest_id)
        print(f"{name:<30}: {summary.images} images in {summary.seconds:5.1f} s = "
              f"{summary.images_per_second:6.1f} images/s")
    ray.close()
    print("identical shards in every run:", len(ids) == 1)


if __name__ == "__main__":
    main()
