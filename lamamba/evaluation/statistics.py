"""Mergeable feature statistics for FID and sFID.

Each worker accumulates (n, sum of features, sum of outer products) in float64; merging is plain
addition, so the order in which shards or workers are combined does not matter and no machine
ever needs all 50,000 feature vectors to get the mean and covariance.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np


@dataclass
class GaussianStats:
    """Mean (D,) and covariance (D, D) of a feature set, as ADM's reference files store them."""

    mu: np.ndarray
    sigma: np.ndarray


class FeatureStats:
    """Running (n, sum, sum of outer products) of D-dimensional features, in float64."""

    def __init__(self, dim: int):
        self.dim = dim
        self.n = 0
        self.total = np.zeros(dim, dtype=np.float64)
        self.outer = np.zeros((dim, dim), dtype=np.float64)

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureStats:
        """Statistics of one (N, D) array."""
        stats = cls(np.asarray(features).shape[1])
        stats.update(features)
        return stats

    def update(self, features: np.ndarray) -> None:
        """Add a batch of features (N, D)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features of shape (N, {self.dim}), got {x.shape}")
        self.n += x.shape[0]
        self.total += x.sum(axis=0)
        self.outer += x.T @ x

    def merge(self, other: FeatureStats) -> FeatureStats:
        """A new FeatureStats holding both sets (commutative and associative up to float rounding)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dimension {self.dim} and {other.dim}")
        out = FeatureStats(self.dim)
        out.n = self.n + other.n
        out.total = self.total + other.total
        out.outer = self.outer + other.outer
        return out

    __add__ = merge

    def gaussian(self) -> GaussianStats:
        """Mean and unbiased covariance (N - 1 denominator, as ``np.cov`` in ADM's evaluator)."""
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, have {self.n}")
        mu = self.total / self.n
        sigma = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return GaussianStats(mu, sigma)

    def to_bytes(self) -> bytes:
        """Serialise as an .npz (keys n, sum, outer) for shipping between workers."""
        buf = io.BytesIO()
        np.savez(buf, n=np.int64(self.n), sum=self.total, outer=self.outer)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> FeatureStats:
        with np.load(io.BytesIO(data)) as f:
            stats = cls(f["sum"].shape[0])
            stats.n = int(f["n"])
            stats.total = f["sum"].astype(np.float64)
            stats.outer = f["outer"].astype(np.float64)
        return stats


def accumulate(stats: FeatureStats | None, features: np.ndarray | None) -> FeatureStats | None:
    """``stats`` plus the statistics of a batch ``features`` (N, D); either may be None."""
    if features is None:
        return stats
    batch = FeatureStats.of(features)
    return batch if stats is None else stats + batch
