r"""Generic measurements of a representation: how strongly it carries known directions,
how unequal those strengths are, how large and how high-dimensional it is.

*Feature weights.* For a map :math:`f` that is linear on the input (a layer, or a product
of layers :math:`W_L \cdots W_1`) and known unit input directions :math:`u_1, \dots, u_K`
(the generative features of a synthetic input), the weight of feature :math:`k` is

.. math:: w_k = \lVert f(u_k) \rVert_2 ,

i.e. how much the representation moves when feature :math:`k` moves by one unit
(Xue et al., ICLR 2024, Sec. 3: :math:`\lVert W_1 u_k\rVert` before the projection head,
:math:`\lVert W_2 W_1 u_k\rVert` after it).

*Spread.* How unequal a vector of non-negative weights is, as one minus the normalised
entropy of the weights read as a distribution,

.. math:: \mathrm{spread}(w) = 1 - \frac{H(w / \textstyle\sum_k w_k)}{\log K}\in[0, 1],

0 for equal weights, 1 when all the weight is on one feature. Unlike the ratio
:math:`\max w / \min w` it stays finite when a feature's weight is 0.

*Effective rank* (Roy & Vetterli, 2007): :math:`\exp H(\sigma / \sum \sigma)` of the
singular values of the centred feature matrix, between 1 and ``min(N, D)``.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["feature_weights", "weight_spread", "max_min_ratio", "feature_norms", "effective_rank"]


def _as_tensor(a: Any) -> torch.Tensor:
    return a.detach() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))


def feature_weights(layers: torch.Tensor | Sequence[torch.Tensor], directions: torch.Tensor) -> torch.Tensor:
    """Weights :math:`\\lVert W_L \\cdots W_1 u_k\\rVert` of K input directions.

    Args:
        layers: one weight matrix ``(d_out, d_in)`` or a sequence ``[W_1, ..., W_L]`` in the
            order they act (``W_1`` first); the product ``W_L ... W_1`` is used.
        directions: ``(d_in, K)``, one input direction per column (usually orthonormal).

    Returns: ``(K,)`` non-negative weights (float64).
    """
    mats = [layers] if isinstance(layers, torch.Tensor) else list(layers)
    if not mats:
        raise ValueError("feature_weights: need at least one layer")
    out = _as_tensor(directions).double()
    if out.ndim != 2:
        raise ValueError(f"directions must be (d_in, K), got {tuple(out.shape)}")
    for W in mats:
        W = _as_tensor(W).double()
        if W.ndim != 2 or W.shape[1] != out.shape[0]:
            raise ValueError(f"layer of shape {tuple(W.shape)} cannot act on {out.shape[0]}-d inputs")
        out = W @ out
    return out.norm(dim=0)


def weight_spread(weights: Any) -> float:
    """``1 - H(w / sum w) / log K``: 0 for equal weights, 1 for a single non-zero weight.

    ``weights``: ``(K,)`` non-negative, ``K >= 2``, not all zero.
    """
    w = _as_tensor(weights).double().flatten()
    if w.numel() < 2:
        raise ValueError("weight_spread needs at least two weights")
    if bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError("weights must be non-negative and not all zero")
    p = w / w.sum()
    nz = p[p > 0]
    entropy = float(-(nz * nz.log()).sum())
    return float(1.0 - entropy / math.log(w.numel()))


def max_min_ratio(weights: Any) -> float:
    """``max w / min w`` (inf when the smallest weight is 0); reported, never used for a verdict."""
    w = _as_tensor(weights).double().flatten()
    lo = float(w.min())
    return float("inf") if lo <= 0 else float(w.max()) / lo


def feature_norms(features: Any) -> torch.Tensor:
    """Per-sample L2 norms of a feature matrix ``(N, D)`` (or ``(N, *)``, flattened) -> ``(N,)``."""
    f = _as_tensor(features).float()
    if f.ndim < 2:
        raise ValueError(f"features must be (N, D), got {tuple(f.shape)}")
    return f.flatten(1).norm(dim=1)


def effective_rank(features: Any, eps: float = 1e-12) -> float:
    """Roy & Vetterli's effective rank of the centred ``(N, D)`` features, in ``[1, min(N, D)]``."""
    f = _as_tensor(features).double()
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features must be (N >= 2, D), got {tuple(f.shape)}")
    s = torch.linalg.svdvals(f - f.mean(0))
    if float(s.sum()) <= eps:
        return 1.0
    p = s / s.sum()
    p = p[p > eps]
    return float(torch.exp(-(p * p.log()).sum()))
