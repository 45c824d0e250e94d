"""The evaluate job: a sample set + a reference batch -> FID, sFID, IS, precision, recall.

Samples are read shard by shard (``lamamba.evaluation.shards``): features stored beside a shard by
the sampler are used when they come from the same extractor, otherwise the shard's images are run
through it. FID/sFID statistics are merged per shard in float64, so memory holds only the pool_3
features (for precision/recall) and the logits (for IS). A single ADM-style .npz (``arr_0``) is
accepted as the sample set too.
"""

from __future__ import annotations

import datetime
import json
import zipfile
import logging
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from lamamba import storage
from lamamba.config import ConfigError
from lamamba.evaluation import metrics
from lamamba.evaluation.config import EvalConfig
from lamamba.evaluation.features import FeatureExtractor, build_extractor, resolve_device
from lamamba.evaluation.reference import Reference, build_reference, load_reference
from lamamba.evaluation.shards import (METADATA, SampleSetError, done_shards, iter_npz_array, npz_array_length,
                                       npz_keys, read_json, read_npz, verified_files)
from lamamba.evaluation.statistics import FeatureStats, accumulate

log = logging.getLogger(__name__)


@dataclass
class SampleFeatures:
    """Everything the metrics need from the samples."""

    pool: FeatureStats
    spatial: FeatureStats | None
    pool_features: np.ndarray
    logits: np.ndarray | None
    metadata: dict


def collect_sample_features(samples: str, extractor: FeatureExtractor, batch_size: int = 500) -> SampleFeatures:
    """Features of every shard of ``samples`` (in index order; all must be finished), or of one
    .npz file. Statistics are merged part by part; only pool_3 features and logits are kept."""
    if samples.endswith(".npz"):
        if "arr_0" not in npz_keys(samples):
            raise ValueError(f"{samples}: no arr_0 in the sample file (keys: {npz_keys(samples)})")
        parts = (extractor(batch) for batch in iter_npz_array(samples, "arr_0", batch_size))
        total, unit, metadata = -(-npz_array_length(samples, "arr_0") // batch_size), "batch", {}
    else:
        shards = done_shards(samples)
        if not shards:
            raise SampleSetError(f"no finished shards (shard_*.done) under {samples}")
        meta_url = storage.join(samples, METADATA)
        metadata = read_json(meta_url) if storage.exists(meta_url) else {}
        expected = metadata.get("protocol", {}).get("num_shards")
        if expected is not None and len(shards) != expected:
            missing = sorted(set(range(expected)) - set(shards))
            raise SampleSetError(f"{samples}: {len(missing)} of {expected} shards are not finished "
                             f"(first: {missing[:5]}); rerun `lamamba sample` to complete them")
        parts = (_shard_features(samples, shard, extractor, batch_size) for shard in shards)
        total, unit = len(shards), "shard"
    pool = spatial = None
    pool_features, logits = [], []
    for part in tqdm(parts, total=total, desc="sample features", unit=unit, dynamic_ncols=True):
        pool = accumulate(pool, part["pool"])
        spatial = accumulate(spatial, part.get("spatial"))
        pool_features.append(part["pool"].astype(np.float32))
        logits.append(part.get("logits"))
    has_logits = all(x is not None for x in logits)
    return SampleFeatures(pool, spatial, np.concatenate(pool_features),
                          np.concatenate(logits) if has_logits else None, metadata)


def _shard_features(samples: str, shard: int, extractor: FeatureExtractor, batch_size: int) -> dict[str, np.ndarray]:
    files = verified_files(samples, shard)  # the bytes are the ones the marker describes
    try:
        if "features" in files:
            stored = read_npz(files["features"])
            if str(stored.get("extractor", "")) == extractor.name:
                return {k: v for k, v in stored.items() if k != "extractor"}
        if "images" not in files:
            raise SampleSetError(f"shard {shard} of {samples} has neither images nor features from extractor "
                                 f"{extractor.name!r}")
        arr = read_npz(files["images"])["arr_0"]
    except SampleSetError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:  # the marker's bytes, but not a shard
        raise SampleSetError(f"shard {shard} of {samples} cannot be read: {type(err).__name__}: {err}") from None
    out: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(arr), batch_size):
        for key, value in extractor(arr[start:start + batch_size]).items():
            out.setdefault(key, []).append(value)
    return {key: np.concatenate(v) for key, v in out.items()}


def compute_metrics(samples: SampleFeatures, reference: Reference, is_split_size: int = 5000, pr_k: int = 3,
                    pr_batch_size: int = 10000, pr_device: str = "cpu",
                    pr_distances: metrics.PairwiseDistances | None = None) -> dict[str, float | None]:
    """FID, sFID, IS, precision, recall; a metric whose features are unavailable is None.
    ``pr_distances`` (default: ADM's float16 blocks) also counts its float32 fallbacks."""
    result: dict[str, float | None] = {
        "fid": metrics.frechet_distance(samples.pool.gaussian(), reference.pool),
        "sfid": None, "inception_score": None, "precision": None, "recall": None,
    }
    if samples.spatial is not None and reference.spatial is not None:
        result["sfid"] = metrics.frechet_distance(samples.spatial.gaussian(), reference.spatial)
    if samples.logits is not None:
        result["inception_score"] = metrics.inception_score(samples.logits, is_split_size)
    if reference.pool_features is not None:
        result["precision"], result["recall"] = metrics.precision_recall(
            reference.pool_features, samples.pool_features, k=pr_k, batch_size=pr_batch_size,
            device=resolve_device(pr_device), distances=pr_distances)
    return result


_PR_DISTANCES = {
    "adm_float16": "squared Euclidean distances in float16 blocks of pr_batch_size, a block recomputed in "
                   "float32 only where float16 overflows (ADM)",
    "float32": "squared Euclidean distances in float32 (ADM: float16)",
}


def protocol_card(cfg: EvalConfig, samples: SampleFeatures, reference: Reference,
                  extractor: FeatureExtractor, pr_distances: metrics.PairwiseDistances | None = None) -> dict:
    """How the numbers were produced, stored beside them (``pr_distances``: the distance blocks that
    computed precision/recall, whose mode and float32 fallbacks are recorded)."""
    return {
        "samples": cfg.samples,
        "num_samples": samples.pool.n,
        "sample_metadata": samples.metadata,
        "reference": reference.source,
        "reference_num_images": reference.num_images,
        "feature_extractor": extractor.name,
        "definitions": {
            "fid": "pool_3 (2048-d) mean and covariance in float64; Frechet distance with scipy sqrtm, "
                   "1e-6 added to the diagonals if singular, imaginary part < 1e-3 dropped (ADM)",
            "sfid": "first 7 channels of mixed_6/conv (Mixed_6d 1x1 branch), 17x17x7 NHWC, Frechet distance",
            "inception_score": f"softmax of the bias-free 1008-way logits, splits of {cfg.is_split_size} in order",
            "precision_recall": f"k={cfg.pr_k} nearest-neighbour manifolds on pool_3 (Kynkaanniemi et al. 2019), "
                                + _PR_DISTANCES[cfg.pr_distances],
            "reference_statistics": "stored mu/sigma of the reference file when present (as ADM)",
        },
        "precision_recall_distances": pr_distances.summary() if pr_distances is not None else None,
        "evaluated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def evaluate(cfg: EvalConfig, extractor: FeatureExtractor | None = None, reference: Reference | None = None) -> dict:
    """Run the evaluation; writes ``{"metrics": ..., "protocol": ...}`` as JSON and returns it.
    ``extractor`` and ``reference`` (already loaded from ``cfg.reference``) may be passed in by a
    caller that evaluates many sample sets (the evaluation sweep)."""
    if not cfg.reference:
        raise ConfigError("reference: give the reference batch (--reference FILE)")
    extractor = extractor or build_extractor(cfg.extractor)
    if cfg.build_reference.source and not storage.exists(cfg.reference):
        build = cfg.build_reference
        build_reference(build.source, cfg.reference, extractor, build.resolution, build.include_images,
                        cfg.batch_size, build.max_images, build.pr_images)
    if not cfg.samples:  # building the reference was the whole job
        return {"reference": cfg.reference}
    sample_features = collect_sample_features(cfg.samples, extractor, cfg.batch_size)
    reference = reference or load_reference(cfg.reference, extractor, cfg.batch_size)
    distances = metrics.PairwiseDistances(cfg.pr_distances)
    result = {
        "metrics": compute_metrics(sample_features, reference, cfg.is_split_size, cfg.pr_k, cfg.pr_batch_size,
                                   cfg.pr_device, distances),
        "protocol": protocol_card(cfg, sample_features, reference, extractor, distances),
    }
    if distances.float32_fallbacks:
        log.warning("precision/recall: %d of %d distance blocks overflowed float16 and were computed in "
                    "float32 (as ADM does; recorded in the protocol card)", distances.float32_fallbacks,
                    distances.blocks)
    out = cfg.out or storage.join(cfg.run_dir, "metrics.json")
    storage.write_bytes(out, (json.dumps(result, indent=2) + "\n").encode())
    result["written_to"] = out
    return result
