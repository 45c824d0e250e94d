"""Metric definitions: Frechet distance, mergeable statistics, IS, precision/recall."""

import itertools

import numpy as np
import pytest

from lamamba.evaluation.metrics import frechet_distance, inception_score, manifold_radii, precision_recall
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
