"""Clustering quality against ground-truth labels: accuracy under the best matching, NMI.

Deep-clustering and multi-view papers report two numbers for a partition
``y_pred`` of N samples with true classes ``y_true``:

- **ACC** (clustering accuracy): the fraction of samples whose cluster maps to their
  class under the best one-to-one map from clusters to classes,

  .. math:: \\mathrm{ACC} = \\max_{m} \\frac{1}{N} \\sum_i \\mathbb{1}[y_i = m(\\hat y_i)],

  found with the Hungarian algorithm on the contingency table
  (``scipy.optimize.linear_sum_assignment``). With more clusters than classes the
  unmatched clusters count as errors (the map is one-to-one).
- **NMI** (normalised mutual information), arithmetic-mean normalisation (the
  scikit-learn default):

  .. math:: \\mathrm{NMI} = \\frac{I(Y; \\hat Y)}{(H(Y) + H(\\hat Y)) / 2}.

`kmeans_acc_nmi` is the usual protocol: k-means on the features (k = number of
classes, several restarts), then ACC and NMI of its partition.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["contingency", "cluster_acc", "nmi", "kmeans_acc_nmi"]


def _labels(a: Any, name: str) -> np.ndarray:
    arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    arr = arr.ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name} must hold integer labels")
        arr = arr.astype(np.int64)
    return arr


def contingency(y_true, y_pred) -> np.ndarray:
    """Counts ``C[i, j]`` of samples in class ``i`` (row) and cluster ``j`` (column).

    Labels are relabelled to 0..K-1 in sorted order, so any integer ids work.
    """
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.size != p.size:
        raise ValueError(f"y_true has {t.size} labels, y_pred {p.size}")
    _, ti = np.unique(t, return_inverse=True)
    _, pi = np.unique(p, return_inverse=True)
    table = np.zeros((ti.max() + 1, pi.max() + 1), dtype=np.int64)
    np.add.at(table, (ti, pi), 1)
    return table


def cluster_acc(y_true, y_pred) -> float:
    """Clustering accuracy in [0, 1] under the best one-to-one cluster -> class map."""
    from scipy.optimize import linear_sum_assignment

    table = contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(y_true, y_pred) -> float:
    """Normalised mutual information in [0, 1] (arithmetic-mean normalisation, nats).

    Two constant labelings are identical partitions: NMI 1 (scikit-learn's convention);
    one constant labeling against a non-constant one gives 0.
    """
    table = contingency(y_true, y_pred).astype(np.float64)
    n = table.sum()
    h_true, h_pred = _entropy(table.sum(1)), _entropy(table.sum(0))
    if h_true == 0.0 and h_pred == 0.0:
        return 1.0
    pij = table / n
    outer = np.outer(table.sum(1), table.sum(0)) / n ** 2
    nz = pij > 0
    mi = float((pij[nz] * np.log(pij[nz] / outer[nz])).sum())
    denom = 0.5 * (h_true + h_pred)
    return float(np.clip(mi / denom, 0.0, 1.0)) if denom > 0 else 0.0


def kmeans_acc_nmi(features, y, k: int | None = None, seed: int = 0, n_init: int = 10,
                   standardize: bool = False) -> dict[str, Any]:
    """k-means on ``features`` (N, D), then ACC and NMI of its partition against ``y``.

    Args:
        k: number of clusters (default: the number of distinct labels).
        seed: k-means' ``random_state`` (deterministic given the seed).
        n_init: k-means restarts; the lowest-inertia run is kept (10, as in most papers).
        standardize: z-score every feature first (off by default: papers cluster the raw
            representation).
    Returns:
        ``{"acc", "nmi", "labels" (N,) int, "k", "n_init", "seed"}``.
    """
    from sklearn.cluster import KMeans

    f = features.detach().cpu().float().numpy() if isinstance(features, torch.Tensor) \
        else np.asarray(features, dtype=np.float32)
    f = f.reshape(len(f), -1).astype(np.float64)
    yy = _labels(y, "y")
    if len(f) != yy.size:
        raise ValueError(f"features have {len(f)} rows, y has {yy.size}")
    if not np.all(np.isfinite(f)):
        raise ValueError("features contain non-finite values")
    if standardize:
        f = (f - f.mean(0)) / np.maximum(f.std(0), 1e-12)
    k = int(k) if k is not None else int(np.unique(yy).size)
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(f)
    labels = km.labels_.astype(np.int64)
    return {"acc": cluster_acc(yy, labels), "nmi": nmi(yy, labels), "labels": labels,
            "k": k, "n_init": n_init, "seed": seed}
