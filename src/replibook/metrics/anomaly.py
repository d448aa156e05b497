"""Scores that rank positives above negatives: the area under the ROC curve.

``auroc`` is the probability that a randomly drawn positive scores higher than a randomly
drawn negative, ties counting one half. It equals the Mann-Whitney U statistic divided
by ``n_pos * n_neg``, which is how it is computed here: rank all scores (tied scores
share their average rank), sum the positives' ranks,

    U = sum_{i in pos} rank_i - n_pos (n_pos + 1) / 2,      AUROC = U / (n_pos n_neg).

One sort, O(N log N), exact for any number of ties (tested against scikit-learn's
trapezoidal ``roc_auc_score`` and against hand-computed cases).
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["auroc"]


def _flat(a: Any, name: str) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if arr.ndim != 1:
        arr = arr.ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return arr


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, ties sharing the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # boundaries of runs of equal values in the sorted array
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    mean_rank = (starts + ends + 1) / 2.0            # mean of (start+1 .. end), 1-based
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _scores_and_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 copies: equal length, no NaN score, binary 0/1 labels."""
    s = _flat(scores, "scores").astype(np.float64)
    y = _flat(labels, "labels")
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    y = y.astype(np.float64)
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be binary (0/1 or bool)")
    return s, y


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve of ``scores`` (higher = more positive) for binary ``labels``.

    Args:
        scores: (N,) real scores (array or tensor); NaNs are an error.
        labels: (N,) 0/1 or boolean (1 = positive, e.g. anomalous or diseased).

    Returns a float in [0, 1]: 1 if every positive outscores every negative, 0.5 for an
    uninformative score, ties counted one half. Raises if a class is missing.
    """
    s, y = _scores_and_labels(scores, labels)
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"auroc needs both classes, got {n_pos} positives and {n_neg} negatives")
    ranks = _average_ranks(s)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


# --------------------------------------------------------------------------- pixel level and working points
# (appended for chapter gaussian-ad-pretrained-features; shared with chapters 40, 69, 27)

__all__ += ["pixel_auroc", "fpr_at_threshold"]


def pixel_auroc(maps: Any, masks: Any) -> float:
    """Pixel-level AUROC of anomaly maps against ground-truth masks, all pixels pooled.

    The MVTec AD localisation metric: every pixel of every image is one sample, the map
    value its score and the mask value (1 = defective pixel) its label.

    Args:
        maps: (N, H, W) or (N, 1, H, W) real anomaly scores per pixel.
        masks: binary ground truth with the same number of elements (e.g. (N, 1, H, W)).
    """
    m = _flat(maps, "maps")
    g = _flat(masks, "masks")
    if m.size != g.size:
        raise ValueError(f"maps and masks differ in size: {np.shape(maps)} vs {np.shape(masks)}")
    return auroc(m, g)


def fpr_at_threshold(scores: Any, labels: Any, threshold: float) -> float:
    """False-positive rate of flagging ``score > threshold``: the share of negatives (label 0) above it.

    Used to check a working point set in advance (e.g. a chi-squared quantile for a
    target FPR) against the FPR it achieves on normal test data.
    """
    s, y = _scores_and_labels(scores, labels)
    neg = y == 0
    if not neg.any():
        raise ValueError("fpr_at_threshold needs at least one negative (label 0)")
    return float((s[neg] > float(threshold)).mean())
