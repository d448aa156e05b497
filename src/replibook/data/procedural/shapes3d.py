r"""Shapes3D-style scenes with exact factors: floor, wall and object hue, scale, shape, orientation.

Burgess & Kim's 3D Shapes (2018) renders one object in a room from six independent
factors: floor hue, wall hue and object hue (10 values each in [0, 1)), object scale
(8 values in [0.75, 1.25]), shape (cube, cylinder, sphere, capsule) and orientation
(15 camera angles in [-30, 30] degrees). Its 480,000 images are not shipped offline, so
this module draws the same kind of scene procedurally, with level counts set per call
(e.g. ``(6, 6, 6, 4, 4, 5)``) at 16, 32 or 64 pixels.

The scene (screen coordinates x right, y up, canvas :math:`[-1, 1]^2`):

- a wall (top) and a floor (bottom) meeting at a horizon line; the floor is lit more
  strongly near the camera, the wall darkens slightly towards the sides;
- an object standing on the floor, seen orthographically from slightly above (its top
  face, when it has one, is an ellipse or a parallelogram squashed by the elevation):
  **cube** (two side faces and the top, each with its own Lambert shade), **cylinder**
  (shaded side and flat top), **sphere** (Lambert-shaded disc), **capsule** (a narrower
  cylinder with a hemispherical cap);
- **orientation** :math:`\theta` is a camera turn: the whole view rolls by
  :math:`\theta / 2` (the horizon tilts), and the object and the light turn by
  :math:`\theta` about the vertical axis relative to the camera (the cube's two faces
  change width, the lit side of every shape moves).

Hues are evenly spaced in [0, 1) (``i / k``); colours are HSV with saturation 0.8 and
value 0.95, multiplied by the shading. The scale of level ``i`` is
``linspace(0.75, 1.25, k)[i]``, the orientation ``linspace(-30, 30, k)[i]`` degrees.

Rendering is exact and fast because the image is linear in the three colours: for each
geometry (scale, shape, orientation) the 2x supersampled coverage maps of the object,
floor and wall, times their shading, are average-pooled once (cached), and every image
is ``A_obj * rgb(object hue) + A_floor * rgb(floor hue) + A_wall * rgb(wall hue)``.
``masks`` are binary object masks (object coverage of the pixel >= 1/2).
Deterministic given ``seed``.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import Bundle, sample_factor_grid

__all__ = ["make", "render", "hsv_to_rgb", "factor_values", "FACTOR_NAMES", "SHAPES",
           "DEFAULT_LEVELS"]

FACTOR_NAMES = ["floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"]
SHAPES = ("cube", "cylinder", "sphere", "capsule")
DEFAULT_LEVELS = (10, 10, 10, 8, 4, 15)
SIZES = (16, 32, 64)
SATURATION, VALUE = 0.8, 0.95
SCALE_RANGE = (0.75, 1.25)
ORIENTATION_RANGE = (-30.0, 30.0)          # degrees

_HORIZON = 0.1          # scene y of the floor/wall boundary
_BASE_Y = -0.5          # scene y where the object touches the floor
_HALF_WIDTH = 0.26      # object half-width at scale 1 (canvas units)
_ELEVATION = 0.3        # vertical squash of horizontal surfaces (camera slightly above)
_LIGHT = np.array([-0.55, 0.65, -0.52])   # world light direction (x right, y up, z away)
_AMBIENT, _DIFFUSE = 0.35, 0.65


def hsv_to_rgb(h: torch.Tensor, s: float = SATURATION, v: float = VALUE) -> torch.Tensor:
    """RGB (..., 3) of hues ``h`` (...) in [0, 1) at saturation ``s`` and value ``v``."""
    k = (torch.tensor([5.0, 3.0, 1.0], device=h.device) + 6 * h.unsqueeze(-1)) % 6
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def _spaced(lo: float, hi: float, k: int) -> np.ndarray:
    return np.array([(lo + hi) / 2]) if k == 1 else np.linspace(lo, hi, k)


def _check(size: int, levels: Sequence[int]) -> tuple[int, ...]:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size}")
    levels = tuple(int(k) for k in levels)
    if len(levels) != 6 or any(k < 1 for k in levels):
        raise ValueError(f"levels must be 6 positive counts ({FACTOR_NAMES}), got {levels}")
    if levels[4] > len(SHAPES):
        raise ValueError(f"at most {len(SHAPES)} shapes, got levels[4]={levels[4]}")
    return levels


def factor_values(factors: torch.Tensor | np.ndarray,
                  levels: Sequence[int] = DEFAULT_LEVELS) -> np.ndarray:
    """Continuous values (N, 6): three hues in [0, 1), scale, shape index, orientation (degrees)."""
    f = np.asarray(torch.as_tensor(factors).cpu(), dtype=np.int64)
    tables = [np.arange(levels[0]) / levels[0], np.arange(levels[1]) / levels[1],
              np.arange(levels[2]) / levels[2], _spaced(*SCALE_RANGE, levels[3]),
              np.arange(levels[4], dtype=float), _spaced(*ORIENTATION_RANGE, levels[5])]
    return np.stack([t[f[:, k]] for k, t in enumerate(tables)], axis=1)


def _lambert(nx: torch.Tensor, ny: torch.Tensor, nz: torch.Tensor, light: np.ndarray) -> torch.Tensor:
    return _AMBIENT + _DIFFUSE * (nx * light[0] + ny * light[1] + nz * light[2]).clamp(min=0)


def _object(shape: str, scale: float, yaw: float, X: torch.Tensor, Y: torch.Tensor,
            light: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Object coverage (0/1) and shading at scene points (X, Y) (camera frame)."""
    w, k, yb = _HALF_WIDTH * scale, _ELEVATION, _BASE_Y
    zero = torch.zeros_like(X)
    top_shade = _AMBIENT + _DIFFUSE * max(light[1], 0.0)
    if shape == "cube":
        H = 2 * w
        psi = math.radians(45.0) + yaw
        c, s = math.cos(psi), math.sin(psi)
        # base corners (a, b) = (+-1, +-1) turned by psi about the vertical axis; screen
        # y of a floor point at depth z is yb + k z (farther is higher)
        corners = [(w * (a * c - b * s), w * (a * s + b * c)) for a, b in
                   [(1, 1), (-1, 1), (-1, -1), (1, -1)]]
        pts = [(x, yb + k * z) for x, z in corners]
        lo = torch.full_like(X, -math.inf)
        hi = torch.full_like(X, math.inf)
        for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1]):
            line = y1 + (X - x1) * (y2 - y1) / (x2 - x1)
            # counter-clockwise polygon: an edge going right (x2 > x1) bounds it from below
            lo, hi = (torch.maximum(lo, line), hi) if x2 > x1 else (lo, torch.minimum(hi, line))
        xs = [p[0] for p in pts]
        inside_x = (X >= min(xs)) & (X <= max(xs))
        side = inside_x & (Y >= lo) & (Y < lo + H)
        top = inside_x & (Y - H >= lo) & (Y - H <= hi)
        # the front corner (nearest the camera) splits the two visible side faces
        front = min(range(4), key=lambda i: corners[i][1])
        x_front = corners[front][0]
        normals = [(c, s), (-s, c), (-c, -s), (s, -c)]            # face normals (x, z)
        left_n = [n for n in normals if n[1] < 0 and n[0] < 0]
        right_n = [n for n in normals if n[1] < 0 and n[0] >= 0]
        shade_l = _lambert(torch.tensor(left_n[0][0]), torch.tensor(0.0), torch.tensor(left_n[0][1]),
                           light) if left_n else torch.tensor(_AMBIENT)
        shade_r = _lambert(torch.tensor(right_n[0][0]), torch.tensor(0.0),
                           torch.tensor(right_n[0][1]), light) if right_n else torch.tensor(_AMBIENT)
        shade = torch.where(top & ~side, torch.full_like(X, top_shade),
                            torch.where(X < x_front, shade_l.float(), shade_r.float()))
        return (side | top).float(), shade
    if shape in ("cylinder", "capsule"):
        r = w if shape == "cylinder" else 0.7 * w
        H = 2 * w
        q = (1 - (X / r) ** 2).clamp(min=0)
        inside_x = X.abs() <= r
        lo = yb - k * r * q.sqrt()
        side = inside_x & (Y >= lo) & (Y < lo + H)
        side_shade = _lambert(X / r, zero, -q.sqrt(), light)
        if shape == "cylinder":
            top = ((X / r) ** 2 + ((Y - yb - H) / (k * r)) ** 2) <= 1
            shade = torch.where(top, torch.full_like(X, top_shade), side_shade)
            return (side | top).float(), shade
        cy = yb + H                                                   # hemispherical cap
        d2 = (X ** 2 + (Y - cy) ** 2) / r ** 2
        cap = (d2 <= 1) & (Y >= lo + H)                               # above the side's rim
        cap_shade = _lambert(X / r, (Y - cy) / r, -(1 - d2).clamp(min=0).sqrt(), light)
        shade = torch.where(cap, cap_shade, side_shade)
        return (side | cap).float(), shade
    if shape == "sphere":
        cy = yb + w
        d2 = (X ** 2 + (Y - cy) ** 2) / w ** 2
        shade = _lambert(X / w, (Y - cy) / w, -(1 - d2).clamp(min=0).sqrt(), light)
        return (d2 <= 1).float(), shade
    raise ValueError(f"unknown shape {shape!r}")


@functools.lru_cache(maxsize=8)
def _geometry_table(size: int, n_scale: int, n_shape: int, n_orient: int) -> torch.Tensor:
    """Pooled maps (n_scale, n_shape, n_orient, 4, size, size): object * shade, floor *
    shade, wall * shade (each with the other surfaces' coverage removed) and object coverage."""
    s2 = 2 * size
    coords = (torch.arange(s2, dtype=torch.float32) + 0.5) / s2 * 2 - 1
    x = coords.view(1, s2).expand(s2, s2)
    y = coords.flip(0).view(s2, 1).expand(s2, s2)
    scales = _spaced(*SCALE_RANGE, n_scale)
    angles = np.radians(_spaced(*ORIENTATION_RANGE, n_orient))
    out = torch.empty(n_scale, n_shape, n_orient, 4, size, size)
    for o, theta in enumerate(angles):
        roll = theta / 2                                   # the view rolls: scene = R(-roll) screen
        X = math.cos(roll) * x + math.sin(roll) * y
        Y = -math.sin(roll) * x + math.cos(roll) * y
        ct, st = math.cos(theta), math.sin(theta)          # the light turns with the object
        light = np.array([ct * _LIGHT[0] - st * _LIGHT[2], _LIGHT[1], st * _LIGHT[0] + ct * _LIGHT[2]])
        light = light / np.linalg.norm(light)
        floor = (Y < _HORIZON).float()
        floor_shade = 0.7 + 0.3 * ((_HORIZON - Y) / (_HORIZON + 1.5)).clamp(0, 1)
        wall_shade = 0.9 - 0.12 * X.abs()
        for a, sc in enumerate(scales):
            for b in range(n_shape):
                cov, shade = _object(SHAPES[b], float(sc), theta, X, Y, light)
                maps = torch.stack([cov * shade, (1 - cov) * floor * floor_shade,
                                    (1 - cov) * (1 - floor) * wall_shade, cov])
                out[a, b, o] = F.avg_pool2d(maps.unsqueeze(0), 2)[0]
    return out


def _render(factors: torch.Tensor | np.ndarray, size: int, levels: Sequence[int],
            device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
    levels = _check(size, levels)
    f = torch.as_tensor(np.asarray(torch.as_tensor(factors).cpu()), dtype=torch.long)
    if f.ndim != 2 or f.shape[1] != 6:
        raise ValueError(f"factors must be (N, 6), got {tuple(f.shape)}")
    if (f < 0).any() or (f >= torch.tensor(levels)).any():
        raise ValueError("factor index out of range of levels")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    table = _geometry_table(size, levels[3], levels[4], levels[5]).to(dev)
    f = f.to(dev)
    geometry = (f[:, 3] * levels[4] + f[:, 4]) * levels[5] + f[:, 5]
    table = table.flatten(0, 2)                                      # (geometries, 4, size, size)
    x = torch.empty(len(f), 3, size, size, device=dev)
    masks = torch.empty(len(f), 1, size, size, device=dev)
    for start in range(0, len(f), 2048):
        sl = slice(start, start + 2048)
        maps = table[geometry[sl]]                                   # (B, 4, size, size)
        # colours (B, 3 surfaces, 3 channels) in the order object, floor, wall
        colours = torch.stack([hsv_to_rgb(f[sl, k].float() / levels[k]) for k in (2, 0, 1)], 1)
        x[sl] = torch.einsum("bjhw,bjc->bchw", maps[:, :3], colours).clamp_(0, 1)
        masks[sl] = (maps[:, 3:4] >= 0.5).float()
    return x, masks


def render(factors: torch.Tensor | np.ndarray, size: int = 32,
           levels: Sequence[int] = DEFAULT_LEVELS,
           device: torch.device | str | None = None) -> torch.Tensor:
    """Images (N, 3, size, size) in [0, 1] of the factor level indices ``factors`` (N, 6)."""
    return _render(factors, size, levels, device)[0]


def render_masks(factors: torch.Tensor | np.ndarray, size: int = 32,
                 levels: Sequence[int] = DEFAULT_LEVELS,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Binary object masks (N, 1, size, size) of ``factors`` (coverage >= 1/2)."""
    return _render(factors, size, levels, device)[1]


def make(n: int, seed: int = 0, size: int = 32, levels: Sequence[int] = DEFAULT_LEVELS,
         device: torch.device | str | None = None) -> Bundle:
    """``n`` scenes with factors drawn uniformly from the grid ``levels`` (see module doc).

    Returns a `Bundle` with ``x`` (n, 3, size, size) in [0, 1], ``factors`` (n, 6) level
    indices in the order :data:`FACTOR_NAMES`, ``masks`` (n, 1, size, size) binary object
    masks and ``extra["values"]`` (n, 6) the continuous factor values.
    """
    levels = _check(size, levels)
    fac = sample_factor_grid(n, levels, np.random.default_rng(seed))
    x, masks = _render(fac, size, levels, device)
    dev = x.device
    return Bundle(x=x, factors=torch.as_tensor(fac, device=dev), factor_names=list(FACTOR_NAMES),
                  levels=list(levels), masks=masks, name="shapes3d",
                  info={"size": size, "levels": list(levels), "seed": seed},
                  extra={"values": torch.as_tensor(factor_values(fac, levels), dtype=torch.float32,
                                                   device=dev)})
