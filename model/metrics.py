"""Evaluation metrics of the paper (section IV-B), in NumPy float64.

* classification: accuracy of the high/low call, where an image is *high*
  when its mean score is strictly above the threshold (AVA: ``mean > 5``); a
  mean exactly at the threshold counts as low;
* regression on the mean score ``mu = sum_i s_i p_i``: SRCC (Spearman, average
  ranks for ties), LCC (Pearson), MAE, RMSE;
* distribution: EMD with ``r = 1`` (paper Eq. 1), averaged over images.

Inputs may be NumPy arrays, torch tensors or nested lists; results are Python
floats. Correlations of a constant vector are undefined and come back as NaN.
"""
from __future__ import annotations

import numpy as np

from ..errors import GPFError, OptionError

__all__ = ["normalize", "mean_score", "std_score", "emd", "evaluate", "METRIC_KEYS", "DistributionError"]

#: Keys of :func:`evaluate`'s result, in report order.
METRIC_KEYS = ("accuracy", "srcc", "lcc", "mae", "rmse", "emd")


class DistributionError(GPFError, ValueError):
    """Score distributions (or bucket scores) that are not usable: not numeric, mis-shaped, empty,
    negative, non-finite or without votes; the message names the argument and the first bad row."""


def _as_array(values, what: str) -> np.ndarray:
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch
        values = values.detach().cpu().double().numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DistributionError(f"{what} must be numeric, got {type(values).__name__}: {exc}") from None
    return arr


def normalize(dist, what: str = "distribution") -> np.ndarray:
    """Rows of ``dist`` (``[..., N]`` counts or probabilities) divided by their sums.

    Raises :class:`DistributionError` (a ``ValueError``) naming the first bad row when a
    value is negative or non-finite or a row sums to 0.
    """
    arr = _as_array(dist, what)
    if arr.ndim == 0 or arr.shape[-1] == 0:
        raise DistributionError(f"{what} must have shape [..., N] with N >= 1 score buckets, got {arr.shape}")
    rows = arr.reshape(-1, arr.shape[-1])
    totals = rows.sum(axis=1)
    for bad, problem in ((~np.isfinite(rows).all(axis=1), "holds NaN or inf"),
                         ((rows < 0).any(axis=1), "holds negative values"),
                         (totals <= 0, "sums to 0 (no votes)")):
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DistributionError(f"{what} row {row} {problem}: {rows[row].tolist()}")
    return arr / arr.sum(axis=-1, keepdims=True)


def _scores(scores, n_buckets: int) -> np.ndarray:
    if scores is None:
        return np.arange(1, n_buckets + 1, dtype=np.float64)
    values = _as_array(scores, "scores")
    if values.shape != (n_buckets,) or not np.isfinite(values).all():
        raise DistributionError(f"scores must be {n_buckets} finite values, one per score bucket "
                                f"(AVA: 1..10), got {values.tolist()}")
    return values


def _per_image(values: np.ndarray):
    return float(values) if values.ndim == 0 else values


def mean_score(dist, scores=None):
    """Mean score ``sum_i s_i p_i`` of each distribution (paper section IV-B).

    ``dist`` is ``[N]`` or ``[..., N]`` (counts are normalised); ``scores``
    defaults to ``1..N``. Returns a float for one distribution, else an array
    of shape ``dist.shape[:-1]``.
    """
    p = normalize(dist)
    return _per_image(p @ _scores(scores, p.shape[-1]))


def std_score(dist, scores=None):
    """Standard deviation ``sqrt(sum_i p_i (s_i - mu)^2)`` of each distribution."""
    p = normalize(dist)
    s = _scores(scores, p.shape[-1])
    mu = p @ s
    return _per_image(np.sqrt((p * (s - mu[..., None]) ** 2).sum(axis=-1)))


def emd(pred_dist, true_dist, r: float = 1) -> float:
    """Paper Eq. 1 averaged over images (``r = 1`` is the paper's evaluation metric)."""
    p, q = _paired(pred_dist, true_dist)
    if not r >= 1:
        raise OptionError(f"r must be >= 1, got {r!r}", param="r")
    gap = np.abs(np.cumsum(p, axis=-1) - np.cumsum(q, axis=-1))
    return float(np.mean(np.mean(gap ** r, axis=-1) ** (1.0 / r)))


def _paired(pred_dist, true_dist) -> tuple[np.ndarray, np.ndarray]:
    p = normalize(pred_dist, "pred_dist")
    q = normalize(true_dist, "true_dist")
    if p.ndim != 2 or p.shape != q.shape:
        raise DistributionError(f"pred_dist and true_dist must both be [images, N] with the same shape, "
                                f"got {p.shape} and {q.shape}")
    if p.shape[0] == 0:
        raise DistributionError("no images to evaluate (pred_dist and true_dist are empty)")
    return p, q


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    ordered = x[order]
    starts_group = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], x.size]  # exclusive
    ranks = np.empty(x.size)
    ranks[order] = ((starts + ends - 1) / 2.0 + 1.0)[group]
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either vector is constant (no warning)."""
    dx = x - x.mean()
    dy = y - y.mean()
    nx, ny = np.linalg.norm(dx), np.linalg.norm(dy)
    if nx == 0 or ny == 0:
        return float("nan")
    return float(np.clip(np.dot(dx / nx, dy / ny), -1.0, 1.0))


def evaluate(pred_dist, true_dist, threshold: float, scores=None) -> dict:
    """All paper metrics (section IV-B) for ``[images, N]`` distributions.

    Args:
        pred_dist: predicted distributions (softmax output), ``[images, N]``.
        true_dist: ground-truth vote counts or distributions, same shape.
        threshold: high/low cut on the mean score (AVA: 5); high means
            ``mean > threshold``, so a mean exactly at it is low.
        scores: score of each bucket, default ``1..N``.

    Returns:
        ``{'accuracy', 'srcc', 'lcc', 'mae', 'rmse', 'emd'}`` as Python floats.
        ``accuracy`` is a fraction in [0, 1] (the CLI prints it as %); SRCC
        and LCC are NaN when either mean-score vector is constant (e.g. a
        single image); ``emd`` uses r = 1.
    """
    p, q = _paired(pred_dist, true_dist)
    try:
        cut = float(threshold)
    except (TypeError, ValueError):
        cut = float("nan")
    if not np.isfinite(cut):
        raise OptionError(f"threshold must be a finite number (AVA: 5), got {threshold!r}", param="threshold")
    s = _scores(scores, p.shape[-1])
    mu_pred, mu_true = p @ s, q @ s
    error = mu_pred - mu_true
    result = {
        "accuracy": float(np.mean((mu_pred > cut) == (mu_true > cut))),
        "srcc": _pearson(_average_ranks(mu_pred), _average_ranks(mu_true)),
        "lcc": _pearson(mu_pred, mu_true),
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error ** 2))),
        "emd": emd(p, q, r=1),
    }
    return result
