"""FID, sFID, IS, precision and recall with the definitions of ADM's evaluator
(docs/protocols.md, *Metrics*).

- Frechet distance: ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2)); if the square root of
  the product is not finite, 1e-6 is added to both diagonals; an imaginary part is dropped when the
  diagonal's is below 1e-3 and is an error otherwise. FID uses pool_3, sFID the spatial features.
- IS: softmax of the bias-free logits, split in order into chunks of 5,000 (10 for 50K samples),
  exp(mean KL(p(y|x) || p(y))) per split, averaged over splits.
- Precision / recall (Kynkaanniemi et al. 2019): each set's manifold is the union of balls around
  its points whose squared radius is the squared distance to the k-th nearest neighbour (k = 3,
  the point itself not counted); precision = share of samples inside the reference manifold,
  recall = share of reference points inside the sample manifold. Distances are computed in blocks
  so 50K x 50K never sits in memory. By default (``distances="adm_float16"``) a block of squared
  distances is computed as ADM's evaluator does: in float16, and the whole block again in float32
  only if a float16 value overflowed; ``distances="float32"`` computes every block in float32.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import linalg

from lamamba.evaluation.statistics import GaussianStats


def frechet_distance(a: GaussianStats, b: GaussianStats, eps: float = 1e-6) -> float:
    """Frechet distance between two Gaussians given as (mu (D,), sigma (D, D))."""
    mu1, mu2 = np.atleast_1d(a.mu).astype(np.float64), np.atleast_1d(b.mu).astype(np.float64)
    s1, s2 = np.atleast_2d(a.sigma).astype(np.float64), np.atleast_2d(b.sigma).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"statistics differ in dimension: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"Frechet distance: singular covariance product, adding {eps} to the diagonals")
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Frechet distance: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    """IS of (N, K) bias-free logits: splits of ``split_size`` taken in order (the last may be
    shorter, as in ADM), exp(mean_x KL(p(y|x) || mean_x p(y|x))) per split, averaged."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"expected logits of shape (N, K) with N > 0, got {logits.shape}")
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    scores = []
    for start in range(0, len(log_p), split_size):
        part_log = log_p[start:start + split_size]
        part = np.exp(part_log)
        log_marginal = np.log(part.mean(axis=0, keepdims=True))
        kl = np.sum(part * (part_log - log_marginal), axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores))


DISTANCE_MODES = ("adm_float16", "float32")


def _squared_distances_float32(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return ((u * u).sum(1, keepdim=True) - 2.0 * (u @ v.T) + (v * v).sum(1)[None]).clamp_(min=0.0)


def _squared_distances_float16(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """ADM's float16 block, max(|u|^2 - 2 u.v + |v|^2, 0), as a GPU computes it in float16:
    inputs and squares rounded to float16, sums and the matmul accumulated in float32 and rounded
    to float16, the expression evaluated in float16. The float32 arithmetic on float16-rounded values
    gives the same result on any device (CPU float16 matmuls are slow and round differently)."""
    u16, v16 = u.half(), v.half()
    norm_u = (u16 * u16).float().sum(1, keepdim=True).half()
    norm_v = (v16 * v16).float().sum(1)[None].half()
    dots = (u16.float() @ v16.float().T).half()
    return (norm_u - 2 * dots + norm_v).clamp_(min=0)


class PairwiseDistances:
    """Blocks of squared Euclidean distances for precision/recall; counts the float32 fallbacks.

    ``mode``: "adm_float16" (ADM's evaluator: float16, a block recomputed in float32 when any of
    its float16 values is not finite) or "float32". Blocks are returned as float32 (Nu, Nv).
    """

    def __init__(self, mode: str = "adm_float16"):
        if mode not in DISTANCE_MODES:
            raise ValueError(f"precision/recall distances {mode!r}: expected one of {DISTANCE_MODES}")
        self.mode = mode
        self.blocks = 0
        self.float32_fallbacks = 0

    def __call__(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.blocks += 1
        if self.mode == "adm_float16":
            block = _squared_distances_float16(u, v)
            if torch.isfinite(block).all():
                return block.float()
            self.float32_fallbacks += 1
        return _squared_distances_float32(u, v)

    def summary(self) -> dict:
        """What the protocol card records about the distances."""
        return {"mode": self.mode, "blocks": self.blocks, "float32_fallback_blocks": self.float32_fallbacks}


def _on(features: np.ndarray, device: str | torch.device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32), device=device)


def _radii(feats: torch.Tensor, k: int, batch_size: int, distances: PairwiseDistances) -> torch.Tensor:
    n = len(feats)
    if n <= k:
        raise ValueError(f"need more than k={k} feature vectors for manifold radii, have {n}")
    radii = torch.empty(n, device=feats.device)
    keep = k + 1  # the point itself is its own nearest neighbour (distance 0)
    for r0 in range(0, n, batch_size):
        rows = feats[r0:r0 + batch_size]
        best = rows.new_empty((len(rows), 0))
        for c0 in range(0, n, batch_size):
            cand = torch.cat([best, distances(rows, feats[c0:c0 + batch_size])], dim=1)
            best = cand.topk(min(keep, cand.shape[1]), dim=1, largest=False).values  # ascending
        radii[r0:r0 + batch_size] = best[:, k]
    return radii


def manifold_radii(features: np.ndarray, k: int = 3, batch_size: int = 10000,
                   device: str | torch.device = "cpu", distances: PairwiseDistances | None = None) -> np.ndarray:
    """(N, D) -> (N,) squared distance of each point to its k-th nearest neighbour (itself excluded)."""
    return _radii(_on(features, device), k, batch_size, distances or PairwiseDistances()).cpu().numpy()


def precision_recall(reference: np.ndarray, samples: np.ndarray, k: int = 3, batch_size: int = 10000,
                     device: str | torch.device = "cpu",
                     distances: PairwiseDistances | None = None) -> tuple[float, float]:
    """Improved precision and recall of ``samples`` (N2, D) against ``reference`` (N1, D); the
    blocked distance computations (``batch_size`` rows and columns, 10,000 as in ADM) run on
    ``device`` with ``distances`` (default: ADM's float16 blocks)."""
    distances = distances or PairwiseDistances()
    ref, smp = _on(reference, device), _on(samples, device)
    ref_radii, smp_radii = _radii(ref, k, batch_size, distances), _radii(smp, k, batch_size, distances)
    ref_covered = torch.zeros(len(ref), dtype=torch.bool, device=ref.device)  # inside the sample manifold
    smp_covered = torch.zeros(len(smp), dtype=torch.bool, device=ref.device)  # inside the reference manifold
    for r0 in range(0, len(ref), batch_size):
        for s0 in range(0, len(smp), batch_size):
            d = distances(ref[r0:r0 + batch_size], smp[s0:s0 + batch_size])
            ref_covered[r0:r0 + batch_size] |= (d <= smp_radii[None, s0:s0 + batch_size]).any(dim=1)
            smp_covered[s0:s0 + batch_size] |= (d <= ref_radii[r0:r0 + batch_size, None]).any(dim=0)
    return float(smp_covered.float().mean()), float(ref_covered.float().mean())
