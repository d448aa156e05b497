"""Free-form inpainting masks: brush strokes plus rectangles, in hole-ratio bins.

Inpainting papers evaluate per *hole ratio*, the fraction of the image that is missing,
in bins such as 10-20%, ..., 50-60% (the NVIDIA irregular mask set of Liu et al. 2018 is
sorted that way). This generator draws such masks procedurally, so smoke runs and tests
need no download: each mask is a union of

- **strokes**: polylines of 3-6 segments with a random start, random turns and lengths,
  drawn with a round brush of radius 1 to ``size / 12`` pixels;
- **rectangles**: axis-aligned boxes of ``size / 8`` to ``size / 3`` per side,

added until the hole ratio reaches a target drawn uniformly inside the requested bin.
The last stroke is cut at the brush stamp that reaches the target, and a rectangle that
would leave the bin is skipped, so **every mask's ratio lies in** ``[lo, hi)`` (tested).

Convention (as in the official RN code): **1 = hole (missing pixel)**, 0 = valid.
Deterministic given ``seed`` (a private ``numpy.random.default_rng``; the global random
state is never touched).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch

__all__ = ["free_form", "free_form_bins", "hole_ratio", "bin_label", "RATIO_BINS"]

RATIO_BINS: tuple[tuple[float, float], ...] = ((0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5))


def bin_label(ratio_bin: Sequence[float]) -> str:
    """``(0.1, 0.2) -> "10-20%"``."""
    lo, hi = ratio_bin
    return f"{round(100 * lo)}-{round(100 * hi)}%"


def hole_ratio(masks: torch.Tensor) -> torch.Tensor:
    """Fraction of hole pixels per mask: ``(N, 1, H, W) -> (N,)``."""
    return masks.flatten(1).float().mean(1)


def _check_bin(ratio_bin: Sequence[float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in ratio_bin)
    if not 0.0 <= lo < hi <= 0.9:
        raise ValueError(f"ratio_bin must satisfy 0 <= lo < hi <= 0.9, got {ratio_bin}")
    return lo, hi


def _stroke_centres(rng: np.random.Generator, size: int) -> np.ndarray:
    """Brush-stamp centres (K, 2) along a random polyline, about one pixel apart."""
    n_seg = int(rng.integers(3, 7))
    start = rng.uniform(0, size, 2)
    angles = rng.uniform(0, 2 * math.pi) + np.cumsum(rng.normal(0.0, 1.0, n_seg))   # random turns
    lengths = rng.uniform(size / 8, size / 3, n_seg)
    centres, point = [start[None]], start
    for angle, length in zip(angles, lengths):
        end = np.clip(point + length * np.array([math.sin(angle), math.cos(angle)]), 0, size - 1)
        steps = max(int(np.ceil(np.abs(end - point).max())), 1)
        centres.append(point + (np.arange(1, steps + 1)[:, None] / steps) * (end - point))
        point = end
    return np.concatenate(centres)


@functools.lru_cache(maxsize=None)
def _disk_offsets(radius: int) -> np.ndarray:
    """Integer offsets (D, 2) of the pixels within ``radius`` of a centre pixel."""
    r = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(r, r, indexing="ij")
    keep = dy ** 2 + dx ** 2 <= radius ** 2
    return np.stack([dy[keep], dx[keep]], axis=1)


def _one_mask(rng: np.random.Generator, size: int, lo: float, hi: float,
              rect_prob: float) -> np.ndarray:
    total = size * size
    max_radius = max(1, size // 12)
    # one brush stamp adds at most pi r^2 pixels; keep the target that far below hi
    slack = (len(_disk_offsets(max_radius)) + 1) / total
    target_hi = max(lo, hi - slack)
    goal = math.ceil(rng.uniform(lo, target_hi) * total)
    hi_count = math.ceil(hi * total) - 1                     # largest count with ratio < hi
    hole = np.zeros((size, size), dtype=bool)
    count, skipped = 0, 0
    while count < goal:
        # a rectangle, unless 20 in a row overshot the bin (then a stroke, which is cut to fit)
        if rng.random() < rect_prob and skipped < 20:
            h, w = (int(v) for v in rng.integers(max(1, size // 8), size // 3 + 1, 2))
            top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            candidate = hole.copy()
            candidate[top:top + h, left:left + w] = True
            new_count = int(candidate.sum())
            if new_count <= hi_count:                        # a box that overshoots is skipped
                hole, count, skipped = candidate, new_count, 0
            else:
                skipped += 1
            continue
        radius = int(rng.integers(1, max_radius + 1))
        offsets = _disk_offsets(radius)                       # (D, 2) pixels of one brush stamp
        centres = np.rint(_stroke_centres(rng, size)).astype(np.int64)   # (K, 2), in drawing order
        py = centres[:, 0, None] + offsets[None, :, 0]        # (K, D)
        px = centres[:, 1, None] + offsets[None, :, 1]
        inside = (py >= 0) & (py < size) & (px >= 0) & (px < size)
        stamp = np.broadcast_to(np.arange(len(centres))[:, None], py.shape)[inside]
        flat = (py * size + px)[inside]                       # ordered by stamp index
        pixels, first_pos = np.unique(flat, return_index=True)
        first = stamp[first_pos]                              # first stamp covering each pixel
        fresh = ~hole.ravel()[pixels]
        # new hole pixels gained up to stamp k; cut the stroke where the goal is reached
        gained = np.cumsum(np.bincount(first[fresh], minlength=len(centres)))
        reach = np.flatnonzero(count + gained >= goal)
        last = int(reach[0]) if reach.size else len(centres) - 1
        hole.ravel()[pixels[first <= last]] = True
        count = int(hole.sum())
    return hole


def free_form(n: int, ratio_bin: Sequence[float] = (0.1, 0.2), size: int = 32, seed: int = 0,
              rect_prob: float = 0.3, device=None) -> torch.Tensor:
    """``n`` free-form masks whose hole ratio lies in ``ratio_bin = (lo, hi)``.

    Args:
        ratio_bin: ``lo <= hole ratio < hi`` for every mask, e.g. ``(0.2, 0.3)``.
        size: masks are ``size`` x ``size``.
        rect_prob: probability that the next shape is a rectangle rather than a stroke.
    Returns:
        ``(n, 1, size, size)`` float32 with 1 on hole pixels, 0 elsewhere.
    """
    lo, hi = _check_bin(ratio_bin)
    if size < 8:
        raise ValueError(f"free_form: size must be at least 8 px, got {size}")
    # the bin's bounds enter the seed, so two bins drawn with one seed are independent
    rng = np.random.default_rng([int(seed), round(lo * 1000), round(hi * 1000), int(size)])
    masks = np.stack([_one_mask(rng, size, lo, hi, rect_prob) for _ in range(n)]) if n else \
        np.zeros((0, size, size), dtype=bool)
    out = torch.from_numpy(masks.astype(np.float32))[:, None]
    return out.to(device) if device is not None else out


def free_form_bins(n_per_bin: int, bins: Sequence[Sequence[float]] = RATIO_BINS, size: int = 32,
                   seed: int = 0, device=None) -> dict[str, torch.Tensor]:
    """``{bin_label: (n_per_bin, 1, size, size) masks}`` for each ratio bin (a fixed test set)."""
    return {bin_label(b): free_form(n_per_bin, b, size=size, seed=seed, device=device)
            for b in bins}
