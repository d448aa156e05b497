"""Regression metrics, including the shot regions of deep imbalanced regression (components.md, section 7).

The DIR benchmarks (Yang et al. 2021) report MAE and the geometric mean of absolute
errors (GM) over all test samples and over three label regions defined by the training
set: bins with more than 100 training samples (*many-shot*), fewer than 20 (*few-shot*)
and the rest (*medium-shot*).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["mae", "mse", "gmean_error", "shot_regions", "shot_region_mae"]


def _np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=float).ravel()


def _pair(pred, y) -> tuple[np.ndarray, np.ndarray]:
    p, t = _np(pred), _np(y)
    if p.shape != t.shape:
        raise ValueError(f"{len(p)} predictions for {len(t)} targets")
    return p, t


def mae(pred, y) -> float:
    """Mean absolute error."""
    p, t = _pair(pred, y)
    return float(np.abs(p - t).mean())


def mse(pred, y) -> float:
    """Mean squared error."""
    p, t = _pair(pred, y)
    return float(((p - t) ** 2).mean())


def gmean_error(pred, y, eps: float = 1e-8) -> float:
    """Geometric mean of the absolute errors, ``exp(mean(log(|e| + eps)))`` (the DIR papers' GM)."""
    p, t = _pair(pred, y)
    return float(np.exp(np.log(np.abs(p - t) + eps).mean()))


def shot_regions(y, y_train, bin_edges: Sequence[float] | np.ndarray, many: int = 100,
                 few: int = 20) -> dict[str, np.ndarray]:
    """Boolean masks over the samples ``y``: their label bin has > ``many`` / ``few..many`` / < ``few`` training samples.

    ``bin_edges`` (B+1,) define the label bins; labels outside are clipped into the end bins.
    """
    edges = np.asarray(bin_edges, dtype=float)
    counts, _ = np.histogram(np.clip(_np(y_train), edges[0], edges[-1]), bins=edges)
    idx = np.clip(np.searchsorted(edges, _np(y), side="right") - 1, 0, len(edges) - 2)
    c = counts[idx]
    return {"many": c > many, "medium": (c <= many) & (c >= few), "few": c < few}


def shot_region_mae(pred, y, y_train, bin_edges: Sequence[float] | np.ndarray, many: int = 100,
                    few: int = 20) -> dict[str, float]:
    """MAE over all test samples and over the many-, medium- and few-shot label regions (NaN if a region is empty)."""
    p, t = _pair(pred, y)
    out = {"all": float(np.abs(p - t).mean())}
    for name, sel in shot_regions(t, y_train, bin_edges, many, few).items():
        out[name] = float(np.abs(p[sel] - t[sel]).mean()) if sel.any() else float("nan")
    return out
