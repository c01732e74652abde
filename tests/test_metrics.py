"""Paper metrics (section IV-B) against scipy, NumPy and hand-computed values."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from gpf.model.metrics import METRIC_KEYS, emd, evaluate, mean_score, normalize, std_score


def one_hot(indices, n=10):
    out = np.zeros((len(indices), n))
    out[np.arange(len(indices)), indices] = 1.0
    return out


def reference_metrics(pred, true, threshold, scores):
    """Independent reference: scipy correlations, scipy Wasserstein for EMD (r = 1)."""
    p = pred / pred.sum(1, keepdims=True)
    q = true / true.sum(1, keepdims=True)
    mu_p, mu_q = p @ scores, q @ scores
    n = p.shape[1]
    # Eq. 1 with r = 1 on unit-spaced buckets is the 1-D Wasserstein distance / N
    emd_values = [stats.wasserstein_distance(np.arange(n), np.arange(n), a, b) / n for a, b in zip(p, q)]
    return {
        "accuracy": np.mean((mu_p > threshold) == (mu_q > threshold)),
        "srcc": stats.spearmanr(mu_p, mu_q).statistic,
        "lcc": stats.pearsonr(mu_p, mu_q).statistic,
        "mae": np.mean(np.abs(mu_p - mu_q)),
        "rmse": np.sqrt(np.mean((mu_p - mu_q) ** 2)),
        "emd": np.mean(emd_values),
    }


@pytest.mark.parametrize("seed", range(5))
def test_evaluate_matches_scipy_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n_images, n_buckets = rng.integers(5, 300), rng.choice([7, 10])
    true = rng.integers(0, 40, size=(n_images, n_buckets)) + (rng.random((n_images, n_buckets)) < 0.5)
    true[:, 0] += 1  # no empty vote row
    pred = rng.dirichlet(np.ones(n_buckets), size=n_images)
    scores = np.arange(1, n_buckets + 1, dtype=float)
    got = evaluate(pred, true, 5.0)
    expected = reference_metrics(pred, true, 5.0, scores)
    assert tuple(got) == METRIC_KEYS
    for key in METRIC_KEYS:
        assert isinstance(got[key], float)
        assert got[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key


def test_spearman_with_ties_matches_scipy():
    rng = np.random.default_rng(10)
    # one-hot distributions give integer mean scores: many ties on both sides
    pred = one_hot(rng.integers(0, 10, size=200))
    true = one_hot(rng.integers(0, 10, size=200)) + 0.5 * one_hot(rng.integers(0, 10, size=200))
    got = evaluate(pred, true, 5)
    expected = reference_metrics(pred, true, 5, np.arange(1, 11.0))
    assert got["srcc"] == pytest.approx(expected["srcc"], rel=1e-12)
    assert got["lcc"] == pytest.approx(expected["lcc"], rel=1e-12)


def test_custom_scores():
    rng = np.random.default_rng(11)
    pred = rng.dirichlet(np.ones(7), size=50)
    true = rng.dirichlet(np.ones(7), size=50)
    scores = np.array([0.0, 1, 2, 4, 8, 16, 32])
    got = evaluate(pred, true, 6.0, scores=scores)
    expected = reference_metrics(pred, true, 6.0, scores)
    for key in ("accuracy", "srcc", "lcc", "mae", "rmse"):
        assert got[key] == pytest.approx(expected[key], rel=1e-12), key


def test_accuracy_threshold_edge_mean_exactly_at_threshold_is_low():
    # one-hot at bucket index 4 -> mean exactly 5.0 on scores 1..10
    at_five, above, below = 4, 5, 3
    assert evaluate(one_hot([at_five]), one_hot([above]), 5)["accuracy"] == 0.0
    assert evaluate(one_hot([at_five]), one_hot([below]), 5)["accuracy"] == 1.0
    assert evaluate(one_hot([above]), one_hot([at_five]), 5)["accuracy"] == 0.0
    # four images: agree, agree, disagree, agree
    pred = one_hot([9, 0, 6, 4])
    true = one_hot([6, 2, 2, 3])
    assert evaluate(pred, true, 5)["accuracy"] == 0.75


def test_hand_computed_regression_metrics():
    pred = one_hot([4, 6])  # means 5, 7
    true = one_hot([5, 4])  # means 6, 5
    got = evaluate(pred, true, 5)
    assert got["mae"] == pytest.approx(1.5)
    assert got["rmse"] == pytest.approx(np.sqrt((1 + 4) / 2))
    assert got["lcc"] == pytest.approx(-1.0)
    assert got["srcc"] == pytest.approx(-1.0)
    assert got["emd"] == pytest.approx((1 / 10 + 2 / 10) / 2)


def test_constant_predictions_give_nan_correlations_without_warnings():
    true = np.random.default_rng(12).integers(1, 20, size=(30, 10))
    pred = np.tile(np.full(10, 0.1), (30, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = evaluate(pred, true, 5)
        single = evaluate(pred[:1], true[:1], 5)
    assert np.isnan(got["srcc"]) and np.isnan(got["lcc"])
    assert np.isfinite([got[k] for k in ("accuracy", "mae", "rmse", "emd")]).all()
    assert np.isnan(single["srcc"]) and np.isnan(single["lcc"])


def test_accepts_torch_tensors():
    rng = np.random.default_rng(13)
    pred = rng.dirichlet(np.ones(10), size=40)
    true = rng.integers(1, 20, size=(40, 10))
    from_numpy = evaluate(pred, true, 5)
    from_torch = evaluate(torch.tensor(pred, dtype=torch.float64, requires_grad=True), torch.tensor(true), 5)
    assert from_torch == pytest.approx(from_numpy)


@pytest.mark.parametrize("pred, true, match", [
    (np.zeros((0, 10)), np.zeros((0, 10)), "no images"),
    (np.ones((3, 10)), np.ones((3, 7)), "same shape"),
    (np.ones(10), np.ones(10), r"\[images, N\]"),
    (np.ones((2, 10)), np.r_[np.ones((1, 10)), np.zeros((1, 10))], "true_dist row 1 sums to 0"),
    (np.r_[np.ones((1, 10)), -np.ones((1, 10))], np.ones((2, 10)), "pred_dist row 1 holds negative"),
    (np.full((1, 10), np.nan), np.ones((1, 10)), "pred_dist row 0 holds NaN"),
])
def test_evaluate_rejects_bad_input(pred, true, match):
    with pytest.raises(ValueError, match=match):
        evaluate(pred, true, 5)


def test_evaluate_rejects_bad_threshold_and_scores():
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        evaluate(np.ones((2, 10)), np.ones((2, 10)), "high")
    with pytest.raises(ValueError, match="scores must be 10 finite values"):
        evaluate(np.ones((2, 10)), np.ones((2, 10)), 5, scores=[1, 2, 3])


def test_normalize():
    rows = normalize([[1, 3], [2, 2]])
    assert rows.tolist() == [[0.25, 0.75], [0.5, 0.5]]
    assert normalize(torch.tensor([0.0, 4.0])).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="N >= 1"):
        normalize(np.zeros((3, 0)))
    with pytest.raises(ValueError, match="row 0 sums to 0"):
        normalize([0, 0])


def test_mean_and_std_score():
    assert mean_score([0, 0, 1]) == 3.0
    assert isinstance(mean_score([0, 0, 1]), float)
    assert mean_score([[1, 0, 1], [0, 4, 0]]).tolist() == [2.0, 2.0]  # vote counts
    assert mean_score([1, 1], scores=[10, 20]) == 15.0
    assert std_score([1, 0, 1]) == pytest.approx(1.0)
    assert std_score([[0, 5, 0]]).tolist() == [0.0]
    rng = np.random.default_rng(14)
    votes = rng.integers(0, 30, size=(20, 10)) + 1
    samples = [np.repeat(np.arange(1, 11), v) for v in votes]  # the votes as individual ratings
    assert mean_score(votes) == pytest.approx([s.mean() for s in samples])
    assert std_score(votes) == pytest.approx([s.std() for s in samples])
    with pytest.raises(ValueError, match="scores must be 3"):
        mean_score([1, 1, 1], scores=[1, 2])


def test_emd_r2_matches_hand_value():
    assert emd([[0.2, 0.3, 0.5]], [[0.5, 0.3, 0.2]], r=2) == pytest.approx(np.sqrt(0.18 / 3))
