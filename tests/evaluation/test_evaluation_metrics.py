"""Metric definitions: Frechet distance, mergeable statistics, IS, precision/recall."""

import itertools

import numpy as np
import pytest
import torch

from lamamba.evaluation.metrics import (PairwiseDistances, frechet_distance, inception_score, manifold_radii,
                                        precision_recall)
from lamamba.evaluation.statistics import FeatureStats, GaussianStats


def test_frechet_zero_for_identical_statistics():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16))
    stats = FeatureStats.of(feats).gaussian()
    assert abs(frechet_distance(stats, stats)) < 1e-8


def test_frechet_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    v1, v2 = rng.uniform(0.5, 2.0, size=8), rng.uniform(0.5, 2.0, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    got = frechet_distance(GaussianStats(mu1, np.diag(v1)), GaussianStats(mu2, np.diag(v2)))
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_frechet_singular_covariances_fall_back_to_the_diagonal_offset():
    # rank-deficient covariances (fewer samples than dimensions) still give a finite distance
    rng = np.random.default_rng(2)
    a = FeatureStats.of(rng.normal(size=(4, 10))).gaussian()
    b = FeatureStats.of(rng.normal(size=(4, 10))).gaussian()
    assert np.isfinite(frechet_distance(a, b))


def test_frechet_rejects_mismatched_dimensions():
    with pytest.raises(ValueError, match="dimension"):
        frechet_distance(GaussianStats(np.zeros(3), np.eye(3)), GaussianStats(np.zeros(4), np.eye(4)))


def test_stats_merged_from_three_workers_in_any_order_equal_one_pass():
    rng = np.random.default_rng(3)
    feats = rng.normal(loc=2.0, size=(3000, 32))
    one_pass = FeatureStats.of(feats).gaussian()
    parts = [FeatureStats.of(chunk) for chunk in np.split(feats, [700, 1900])]
    for order in itertools.permutations(parts):
        merged = FeatureStats.from_bytes((order[0] + order[1] + order[2]).to_bytes()).gaussian()
        np.testing.assert_allclose(merged.mu, one_pass.mu, rtol=0, atol=1e-10)
        np.testing.assert_allclose(merged.sigma, one_pass.sigma, rtol=0, atol=1e-10)
    # the covariance is the unbiased one, as np.cov in ADM's evaluator
    np.testing.assert_allclose(one_pass.sigma, np.cov(feats, rowvar=False), atol=1e-10)


def test_inception_score_of_uniform_logits_is_one():
    assert inception_score(np.zeros((10000, 1008))) == pytest.approx(1.0, abs=1e-12)


def test_inception_score_of_a_perfect_split_equals_the_class_count():
    k = 7
    logits = np.full((k * 1000, 1008), -60.0)
    logits[np.arange(k * 1000), np.arange(k * 1000) % k] = 60.0
    assert inception_score(logits, split_size=5000) == pytest.approx(k, rel=1e-6)


def test_inception_score_splits_in_order():
    # first split all class 0 (IS 1), second split balanced over 2 classes (IS 2): mean 1.5
    logits = np.full((10000, 4), -60.0)
    logits[:5000, 0] = 60.0
    logits[5000:, :2][np.arange(5000), np.arange(5000) % 2] = 60.0
    assert inception_score(logits, split_size=5000) == pytest.approx(1.5, rel=1e-6)


def test_manifold_radius_is_the_kth_neighbour_without_self():
    points = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])
    # squared distances from 0: 1, 9, 36, 100 -> 3rd neighbour at 36
    radii = manifold_radii(points, k=3, batch_size=2)  # blocks smaller than the set
    assert radii[0] == pytest.approx(36.0)
    assert radii[2] == pytest.approx(9.0)  # from 3: 4, 9, 9, 49


def test_precision_recall_identical_sets_are_one_and_a_shifted_cluster_lowers_both():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(400, 8)).astype(np.float32)
    assert precision_recall(ref, ref.copy(), k=3, batch_size=128) == (1.0, 1.0)
    shifted = ref.copy()
    shifted[:200] += 6.0  # half of the samples move to a cluster the reference does not cover
    precision, recall = precision_recall(ref, shifted, k=3, batch_size=128)
    assert 0.4 < precision < 0.65
    assert recall < 0.95
    far = ref + 50.0
    assert precision_recall(ref, far, k=3, batch_size=128) == (0.0, 0.0)


def test_precision_recall_does_not_depend_on_the_block_size():
    rng = np.random.default_rng(5)
    ref, smp = rng.normal(size=(300, 6)), rng.normal(0.3, 1.1, size=(250, 6))
    assert precision_recall(ref, smp, batch_size=64) == precision_recall(ref, smp, batch_size=10000)


def adm_float16_block(u, v):
    """ADM's float16 distance block written out in numpy: float16 inputs and squares, float32 sums
    and matmul rounded to float16, max(|u|^2 - 2 u.v + |v|^2, 0) evaluated in float16."""
    u16, v16 = u.astype(np.float16), v.astype(np.float16)
    norm_u = (u16 * u16).astype(np.float32).sum(1, keepdims=True).astype(np.float16)
    norm_v = (v16 * v16).astype(np.float32).sum(1)[None].astype(np.float16)
    dots = (u16.astype(np.float32) @ v16.astype(np.float32).T).astype(np.float16)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.maximum(norm_u - np.float16(2) * dots + norm_v, np.float16(0))


def test_distance_blocks_float16_as_adm_and_float32():
    rng = np.random.default_rng(6)
    # pool_3-like, float32 as the extractor gives them
    u, v = (rng.gamma(1.0, 0.3, size=(n, 64)).astype(np.float32) for n in (50, 40))
    adm = PairwiseDistances("adm_float16")
    got = adm(torch.from_numpy(u), torch.from_numpy(v))
    assert got.dtype == torch.float32
    want = adm_float16_block(u, v)
    # equal up to the float32 summation order of the matmul (rarely, by one float16 step of 2 u.v)
    off = got.numpy() != want.astype(np.float32)
    assert off.mean() < 0.01
    step = 2 * np.spacing(((u * u).sum(1)[:, None] + (v * v).sum(1)[None]).astype(np.float16)).astype(np.float32)
    assert (np.abs(got.numpy() - want.astype(np.float32)) <= step).all()
    exact = ((u[:, None].astype(np.float64) - v[None]) ** 2).sum(-1)
    f32 = PairwiseDistances("float32")(torch.from_numpy(u), torch.from_numpy(v))
    np.testing.assert_allclose(f32.numpy(), exact, rtol=1e-4, atol=1e-4)
    assert (got.numpy() != f32.numpy()).mean() > 0.5  # float16 rounding shows
    assert adm.summary() == {"mode": "adm_float16", "blocks": 1, "float32_fallback_blocks": 0}
    with pytest.raises(ValueError, match="'float64'"):
        PairwiseDistances("float64")


def test_precision_follows_adm_float16_on_a_ball_border_by_default():
    # 1-D: the reference point 0 has radius^2 96^2 = 9216 (its 3rd neighbour is 96). The sample at
    # -96.02 is outside in float32 (9219.8), but rounds to -96 in float16, so ADM counts it inside.
    ref = np.array([[0.0], [32.0], [64.0], [96.0]])
    smp = np.array([[-96.02], [-120.0], [-115.0], [-110.0]])
    assert precision_recall(ref, smp, distances=PairwiseDistances("float32"))[0] == 0.0
    adm = PairwiseDistances()
    assert adm.mode == "adm_float16"
    assert precision_recall(ref, smp, distances=adm)[0] == 0.25
    assert precision_recall(ref, smp)[0] == 0.25  # the default
    assert adm.float32_fallbacks == 0


def test_float16_overflow_falls_back_to_float32_per_block():
    ref = np.array([[0.0], [100.0], [600.0], [900.0], [1200.0]])  # squared norms from 600 on overflow float16
    smp = ref + 10.0
    adm = PairwiseDistances()
    assert precision_recall(ref, smp, batch_size=2, distances=adm) == \
        precision_recall(ref, smp, batch_size=2, distances=PairwiseDistances("float32"))
    assert 0 < adm.float32_fallbacks < adm.blocks  # blocks near the origin stay in float16
