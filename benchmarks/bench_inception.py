"""Inception-v3 (TF-FID variant) throughput: images/s through resize + network, on CPU or GPU.

  PYTHONPATH=. python benchmarks/bench_inception.py [--images 64 --batch 32 --size 256 --device cpu]

Random weights (the speed does not depend on them); uint8 NHWC input of --size px, resized to 299
inside, all three outputs (pool_3, spatial, logits). The first batch is a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from lamamba.evaluation.inception import FIDInceptionV3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    model = FIDInceptionV3().eval().to(device)
    images = np.random.default_rng(0).integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    batch = torch.from_numpy(images).to(device).permute(0, 3, 1, 2)
    with torch.no_grad():
        model(batch)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu = time.perf_counter(), time.process_time()
        done = 0
        while done < args.images:
            model(batch)
            done += args.batch
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"device": str(device), "threads": torch.get_num_threads(), "batch": args.batch,
                      "input_px": args.size, "images": done, "seconds": round(elapsed, 2),
                      "images_per_s": round(done / elapsed, 2),
                      "images_per_cpu_s": round(done / cpu, 2), "load_avg_1m": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
