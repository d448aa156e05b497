r"""dSprites-style 2-D shapes with exact factors: shape, scale, orientation, x and y.

Matthey et al.'s dSprites (2017) renders one white sprite on a black 64x64 canvas from
five independent factors -- shape (square, ellipse, heart), scale (6 values in
[0.5, 1]), orientation (40 values in [0, 2pi]), x and y (32 values each) -- and is the
standard testbed of the disentanglement literature. Its files are not shipped offline,
so this module draws the same kind of data procedurally, at any level count and at
16, 32 or 64 pixels.

Rendering is vectorised torch on a coordinate grid. Every shape is an *implicit*
region :math:`f(u, v) \le 0` in object coordinates whose circumradius is at most 1;
a pixel point :math:`p` maps to object coordinates by

.. math::  (u, v) = R(-\theta)\,(p - c) / (r_{\max}\, s),

with :math:`c` the position, :math:`s` the scale and :math:`\theta` the orientation
(counter-clockwise on screen, y pointing up). Images are rendered at twice the
resolution and average-pooled 2x2 (2x2 supersampling anti-aliasing), so pixel values
are coverage fractions in [0, 1].

Factor values (level ``i`` of ``k``):

- ``shape``: the names in ``shapes`` (default square, ellipse, heart; ``"arrow"`` is a
  shape with no rotational symmetry, for chapters that need a recoverable angle);
- ``scale``: ``linspace(0.5, 1, k)`` times :data:`R_MAX` (the half-canvas fraction of
  the largest sprite's circumradius);
- ``orientation``: ``2 pi i / k``, i.e. evenly spaced in :math:`[0, 2\pi)`, as dSprites.
  **Symmetry caveat** (as in dSprites): a square looks the same after a quarter turn and
  an ellipse after a half turn, so their orientation is only identifiable modulo
  :math:`\pi/2` and :math:`\pi`; for those shapes different orientation levels can give
  identical images. The heart and the arrow have no rotational symmetry;
- ``pos_x``, ``pos_y``: ``linspace`` over the range that keeps the largest sprite, at
  any orientation, fully inside the canvas with a one-pixel blank border (tested).

Deterministic given ``seed`` (factor combinations come from
:func:`~replibook.data.procedural.sample_factor_grid` with a private NumPy generator).

**Regression targets with a chosen label distribution** (``label_sampler=``): deep
imbalanced regression needs one continuous factor (the *label*) drawn from a long-tailed
density while the nuisances stay uniform. ``make(..., label_sampler=p, label_factor=
"orientation")`` draws the label factor's level indices from ``p`` (a probability vector
over its levels, e.g. :func:`exponential_density`, or a callable ``(n, rng) -> indices``),
every other factor independently and uniformly (with replacement), and returns the label's
continuous value as ``Bundle.y``. With ``levels[2] = 360`` the orientation level index is
the angle in whole degrees, e.g. ``p(y) ~ exp(-y / 15)`` on ``y in {0, ..., 89}``::

    p = dsprites.exponential_density(360, decay=15, support=90)
    b = dsprites.make(3000, seed=0, levels=(1, 6, 360, 8, 8), shapes=("arrow",), label_sampler=p)
    degrees = b.factors[:, 2]          # b.y holds the same angle in radians

Without ``label_sampler`` the generator behaves exactly as before (same draws, ``y=None``).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from . import Bundle, sample_factor_grid

__all__ = ["make", "render", "factor_values", "sample_factors", "exponential_density", "uniform_density",
           "SHAPES", "FACTOR_NAMES", "R_MAX", "DEFAULT_LEVELS"]

FACTOR_NAMES = ["shape", "scale", "orientation", "pos_x", "pos_y"]
DEFAULT_LEVELS = (3, 6, 10, 8, 8)
#: circumradius of a scale-1 sprite, as a fraction of the half-canvas
R_MAX = 0.42
SCALE_RANGE = (0.5, 1.0)
SIZES = (16, 32, 64)
_CHUNK_POINTS = 2 ** 22          # grid points per rendering chunk (bounds memory)


def _square(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    h = 1 / math.sqrt(2)                                   # half side: circumradius 1
    return torch.maximum(u.abs(), v.abs()) - h


def _ellipse(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u / 1.0) ** 2 + (v / 0.5) ** 2 - 1             # semi-axes 1 and 0.5


def _heart(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # the classic heart curve (x^2 + y^2 - 1)^3 - x^2 y^3 = 0 spans x in [-1.14, 1.14],
    # y in [-1, 1.24]; its smallest enclosing circle is centred at (0, 0.25) with radius 1.25
    x, y = 1.25 * u, 1.25 * v + 0.25
    return (x * x + y * y - 1) ** 3 - x * x * y ** 3


def _arrow(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # shaft |v| <= 0.2 for u in [-0.95, 0.15]; triangular head from u = 0.15 (half-width 0.55)
    # to the tip at u = 0.95: no rotational symmetry, so the angle is recoverable
    shaft = torch.maximum((u + 0.4).abs() - 0.55, v.abs() - 0.2)
    head = torch.maximum(0.15 - u, v.abs() - 0.55 * (0.95 - u) / 0.8)
    return torch.minimum(shaft, head)


#: implicit shapes ``f(u, v) <= 0`` inside, circumradius <= 1 in object coordinates
SHAPES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "square": _square, "ellipse": _ellipse, "heart": _heart, "arrow": _arrow,
}


def _check(size: int, levels: Sequence[int], shapes: Sequence[str]) -> tuple[int, ...]:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size}")
    levels = tuple(int(k) for k in levels)
    if len(levels) != 5 or any(k < 1 for k in levels):
        raise ValueError(f"levels must be 5 positive counts ({FACTOR_NAMES}), got {levels}")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise ValueError(f"unknown shapes {unknown}; known: {sorted(SHAPES)}")
    if levels[0] != len(shapes):
        raise ValueError(f"levels[0]={levels[0]} must equal the number of shapes ({len(shapes)})")
    return levels


def _spaced(lo: float, hi: float, k: int) -> np.ndarray:
    """``k`` evenly spaced values over [lo, hi] (the midpoint when k == 1)."""
    return np.array([(lo + hi) / 2]) if k == 1 else np.linspace(lo, hi, k)


def _position_range(size: int) -> tuple[float, float]:
    m = R_MAX + 2.0 / size                                 # one pixel of clearance
    return -1 + m, 1 - m


def factor_values(factors: torch.Tensor | np.ndarray, size: int = 32,
                  levels: Sequence[int] = DEFAULT_LEVELS) -> np.ndarray:
    """Continuous values (N, 5) of level indices: shape index, scale in [0.5, 1],
    orientation in radians, and x, y in canvas units ([-1, 1], y up)."""
    f = np.asarray(torch.as_tensor(factors).cpu(), dtype=np.int64)
    lo, hi = _position_range(size)
    tables = [np.arange(levels[0], dtype=float), _spaced(*SCALE_RANGE, levels[1]),
              2 * np.pi * np.arange(levels[2]) / levels[2], _spaced(lo, hi, levels[3]),
              _spaced(lo, hi, levels[4])]
    return np.stack([t[f[:, k]] for k, t in enumerate(tables)], axis=1)


def render(factors: torch.Tensor | np.ndarray, size: int = 32,
           levels: Sequence[int] = DEFAULT_LEVELS,
           shapes: Sequence[str] = ("square", "ellipse", "heart"),
           device: torch.device | str | None = None) -> torch.Tensor:
    """Images (N, 1, size, size) in [0, 1] of the factor level indices ``factors`` (N, 5).

    Each distinct combination is rendered once (2x supersampled, then 2x2 average-pooled).
    """
    levels = _check(size, levels, shapes)
    f = torch.as_tensor(np.asarray(torch.as_tensor(factors).cpu()), dtype=torch.long)
    if f.ndim != 2 or f.shape[1] != 5:
        raise ValueError(f"factors must be (N, 5), got {tuple(f.shape)}")
    if (f < 0).any() or (f >= torch.tensor(levels)).any():
        raise ValueError("factor index out of range of levels")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    flat = np.ravel_multi_index(f.numpy().T, levels)
    uniq, inverse = np.unique(flat, return_inverse=True)
    ufac = np.stack(np.unravel_index(uniq, levels), axis=1)
    vals = torch.as_tensor(factor_values(ufac, size, levels), dtype=torch.float32, device=dev)

    # Each sprite lies inside a disc of radius R_MAX * scale around its centre, so only a
    # window of `win` pixels around the centre is rendered (2x supersampled), then pasted
    # into the blank canvas; the window is aligned to the pixel grid, so this is exact.
    s2 = 2 * size                                          # supersampled grid
    win = min(size, int(math.ceil(R_MAX * size)) + 2)      # window side in pixels
    coords = (torch.arange(s2, device=dev, dtype=torch.float32) + 0.5) / s2 * 2 - 1
    col = ((vals[:, 3] + 1) / 2 * size - win / 2).round().long().clamp(0, size - win)
    row = ((1 - vals[:, 4]) / 2 * size - win / 2).round().long().clamp(0, size - win)
    offs = torch.arange(2 * win, device=dev)
    out = torch.zeros(len(uniq), size * size, device=dev)
    pix = torch.arange(win, device=dev)
    chunk = max(1, _CHUNK_POINTS // (4 * win * win))
    for start in range(0, len(uniq), chunk):
        sl = slice(start, start + chunk)
        v, r0, c0 = vals[sl], row[sl], col[sl]
        gx = coords[2 * c0[:, None] + offs].unsqueeze(1)            # (B, 1, 2win) x to the right
        gy = coords.flip(0)[2 * r0[:, None] + offs].unsqueeze(2)    # (B, 2win, 1) y up
        shape_id, radius = v[:, 0].long(), (R_MAX * v[:, 1]).view(-1, 1, 1)
        cos, sin = v[:, 2].cos().view(-1, 1, 1), v[:, 2].sin().view(-1, 1, 1)
        dx, dy = gx - v[:, 3].view(-1, 1, 1), gy - v[:, 4].view(-1, 1, 1)
        u = (cos * dx + sin * dy) / radius                 # (u, v) = R(-theta)(p - c) / r
        w = (-sin * dx + cos * dy) / radius
        inside = torch.zeros(len(v), 2 * win, 2 * win, device=dev)
        for k, name in enumerate(shapes):
            sel = shape_id == k
            if sel.any():
                inside[sel] = (SHAPES[name](u[sel], w[sel]) <= 0).float()
        patch = F.avg_pool2d(inside.unsqueeze(1), 2).flatten(1)    # (B, win*win)
        index = ((r0[:, None, None] + pix[None, :, None]) * size
                 + c0[:, None, None] + pix[None, None, :]).flatten(1)
        out[sl].scatter_(1, index, patch)
    out = out.view(-1, 1, size, size)
    return out[torch.as_tensor(inverse.reshape(-1), device=dev)]


#: a label sampler: probabilities over the label factor's levels, or ``(n, rng) -> level indices``
LabelSampler = Union[Sequence[float], np.ndarray, Callable[[int, np.random.Generator], np.ndarray]]


def exponential_density(k: int, decay: float, support: int | None = None) -> np.ndarray:
    """Probabilities ``p_i ~ exp(-i / decay)`` over level indices ``i < support`` (default all
    ``k`` levels), 0 beyond: a long-tailed label density for :func:`make`'s ``label_sampler``."""
    support = k if support is None else int(support)
    if not 0 < support <= k:
        raise ValueError(f"support must lie in [1, k={k}], got {support}")
    if decay <= 0:
        raise ValueError(f"decay must be > 0, got {decay}")
    p = np.zeros(k)
    p[:support] = np.exp(-np.arange(support) / decay)
    return p / p.sum()


def uniform_density(k: int, support: int | None = None) -> np.ndarray:
    """Uniform probabilities over level indices ``i < support`` (default all ``k``), 0 beyond."""
    support = k if support is None else int(support)
    if not 0 < support <= k:
        raise ValueError(f"support must lie in [1, k={k}], got {support}")
    p = np.zeros(k)
    p[:support] = 1.0 / support
    return p


def _label_column(name: str | int) -> int:
    if isinstance(name, str):
        if name not in FACTOR_NAMES:
            raise ValueError(f"unknown label_factor {name!r}; known: {FACTOR_NAMES}")
        return FACTOR_NAMES.index(name)
    if not 0 <= int(name) < len(FACTOR_NAMES):
        raise ValueError(f"label_factor index {name} out of range")
    return int(name)


def sample_factors(n: int, levels: Sequence[int], rng: np.random.Generator,
                   label_sampler: LabelSampler | None = None,
                   label_factor: str | int = "orientation") -> np.ndarray:
    """Factor level indices (n, 5): uniform over the grid when ``label_sampler`` is None
    (:func:`~replibook.data.procedural.sample_factor_grid`); otherwise the ``label_factor``
    column from ``label_sampler`` and every other column uniform, independent, with replacement."""
    levels = [int(k) for k in levels]
    if label_sampler is None:
        return sample_factor_grid(n, levels, rng)
    col = _label_column(label_factor)
    k = levels[col]
    if callable(label_sampler):
        lab = np.asarray(label_sampler(n, rng), dtype=np.int64).reshape(-1)
        if lab.shape != (n,):
            raise ValueError(f"label_sampler returned {lab.shape[0]} indices for n={n}")
        if (lab < 0).any() or (lab >= k).any():
            raise ValueError(f"label_sampler returned indices outside [0, {k})")
    else:
        p = np.asarray(label_sampler, dtype=float).reshape(-1)
        if p.shape != (k,):
            raise ValueError(f"label_sampler probabilities need {k} entries (levels of "
                             f"{FACTOR_NAMES[col]}), got {p.shape[0]}")
        if (p < 0).any() or p.sum() <= 0:
            raise ValueError("label_sampler probabilities must be >= 0 with a positive sum")
        lab = rng.choice(k, size=n, p=p / p.sum())
    fac = np.stack([rng.integers(0, m, size=n) for m in levels], axis=1).astype(np.int64)
    fac[:, col] = lab
    return fac


def make(n: int, seed: int = 0, size: int = 32, levels: Sequence[int] = DEFAULT_LEVELS,
         shapes: Sequence[str] = ("square", "ellipse", "heart"),
         device: torch.device | str | None = None,
         label_sampler: LabelSampler | None = None,
         label_factor: str | int = "orientation") -> Bundle:
    """``n`` sprites with factors drawn uniformly from the grid ``levels`` (see module doc).

    Returns a `Bundle` with ``x`` (n, 1, size, size) in [0, 1], ``factors`` (n, 5) level
    indices in the order :data:`FACTOR_NAMES`, and ``extra["values"]`` (n, 5) the continuous
    factor values of :func:`factor_values`.

    ``label_sampler`` (probabilities over the levels of ``label_factor``, or a callable
    ``(n, rng) -> level indices``) turns the set into a regression task with that label
    distribution: the other factors are then drawn independently and uniformly (with
    replacement) and ``Bundle.y`` is the label factor's continuous value (float32; radians
    for the orientation). Without it nothing changes (same draws as before, ``y=None``).
    """
    levels = _check(size, levels, shapes)
    rng = np.random.default_rng(seed)
    fac = sample_factors(n, levels, rng, label_sampler, label_factor)
    x = render(fac, size, levels, shapes, device)
    dev = x.device
    values = torch.as_tensor(factor_values(fac, size, levels), dtype=torch.float32, device=dev)
    info = {"size": size, "levels": list(levels), "shapes": list(shapes), "seed": seed}
    y = None
    if label_sampler is not None:
        col = _label_column(label_factor)
        y = values[:, col].clone()
        info.update(label_factor=FACTOR_NAMES[col],
                    label_sampler="callable" if callable(label_sampler) else "probabilities")
    return Bundle(x=x, factors=torch.as_tensor(fac, device=dev), factor_names=list(FACTOR_NAMES),
                  levels=list(levels), y=y, name="dsprites", info=info, extra={"values": values})
