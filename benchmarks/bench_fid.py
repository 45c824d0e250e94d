"""FID from features: how long the statistics and the matrix square root take for 50K x 2048.

  PYTHONPATH=. python benchmarks/bench_fid.py [--num 50000 --dim 2048 --shards 10]

Wall and process CPU seconds (the CPU figure is what the work costs on unshared cores) of (1) accumulating the mergeable float64 statistics shard by shard (as the evaluator does
with 10 sample shards), (2) one Frechet distance (scipy sqrtm of the 2048 x 2048 product) against
a second set's statistics. Features are synthetic (correlated Gaussians): the cost does not
depend on the values.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from lamamba.evaluation.metrics import frechet_distance
from lamamba.evaluation.statistics import accumulate


def synthetic_features(num: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low_rank = rng.standard_normal((num, 64), dtype=np.float32) @ rng.standard_normal((64, dim), dtype=np.float32)
    return np.abs(low_rank * 0.1 + rng.standard_normal((num, dim), dtype=np.float32))  # >= 0, like pool_3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=50000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--shards", type=int, default=10)
    args = parser.parse_args()

    samples = synthetic_features(args.num, args.dim, 0)
    reference = synthetic_features(args.num, args.dim, 1)
    start, cpu = time.perf_counter(), time.process_time()
    stats = None
    for chunk in np.array_split(samples, args.shards):
        stats = accumulate(stats, chunk)
    sample_gaussian = stats.gaussian()
    t_stats, c_stats = time.perf_counter() - start, time.process_time() - cpu
    ref_gaussian = accumulate(None, reference).gaussian()

    start, cpu = time.perf_counter(), time.process_time()
    fid = frechet_distance(sample_gaussian, ref_gaussian)
    t_frechet, c_frechet = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({
        "features": [args.num, args.dim], "shards": args.shards, "statistics_s": round(t_stats, 2),
        "frechet_sqrtm_s": round(t_frechet, 2), "total_s": round(t_stats + t_frechet, 2),
        "statistics_cpu_s": round(c_stats, 2), "frechet_cpu_s": round(c_frechet, 2), "fid": round(fid, 4),
        "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
