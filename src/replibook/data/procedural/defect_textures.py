r"""MVTec-AD-like anomaly data: crops of real textures and photos, some with painted defects.

MVTec AD (Bergmann et al., CVPR 2019) has, per category, defect-free training images and a
test set of defect-free and defective images with pixel-accurate ground-truth masks. This
generator builds the same structure offline from the photos and textures that ship with
scikit-image (`replibook.data.bundled.skimage_images`):

- **categories** ``brick``, ``grass``, ``gravel`` (textures), ``camera`` and ``coffee``
  (photos). Each source image is centre-cropped to a square, resized to ``source_size`` and
  cut into a ``tiles x tiles`` checkerboard. **Train crops come from the white tiles, test
  crops from the black tiles**: train and test never share a pixel, yet both sample the whole
  photo (a left/right split would put the cameraman in train and the sky in test). A crop is
  ``crop`` px square, lies inside one tile, and is resized to ``size``.
- **defects** (``kinds``), painted through a binary mask :math:`m` that is the ground truth:

  ================  =========================================  ==========================
  kind              mask                                       target colour :math:`t`
  ================  =========================================  ==========================
  ``scratch``       thin polyline (1-3 segments)               white or black
  ``hole``          filled ellipse                             near-black
  ``stain``         blob (union of 3-5 discs)                  the pixel tinted brown
  ``colour_spot``   small disc                                 a saturated random hue
  ================  =========================================  ==========================

  Inside the mask the pixel moves towards the target, outside it is **untouched**:

  .. math:: x' = x + m \, \alpha \, (t - x), \qquad \alpha = \min(1, \text{contrast} \cdot a_k),

  with a base strength :math:`a_k` per kind. ``contrast`` therefore scales every defect's
  strength (0 leaves the image unchanged; the masks and all random draws do not depend on
  it, so one seed at two contrasts gives the same crops and the same masks).

Labels: ``y = 1`` for a defective crop. Factors: ``category`` (index into `CATEGORIES`)
and ``defect`` (0 = none, ``k`` = ``kinds[k - 1]``). Deterministic given ``seed`` (a private
NumPy generator).
"""
from __future__ import annotations

import colorsys
import functools
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ... import runtime
from ...errors import UnknownName
from . import Bundle

__all__ = ["make", "CATEGORIES", "DEFECT_KINDS", "BASE_STRENGTH", "tile_is_train"]

CATEGORIES = ("brick", "grass", "gravel", "camera", "coffee")
DEFECT_KINDS = ("scratch", "hole", "stain", "colour_spot")
# a_k: strength at contrast 1 (alpha = min(1, contrast * a_k))
BASE_STRENGTH = {"scratch": 0.9, "hole": 0.9, "stain": 0.8, "colour_spot": 0.8}
_STAIN_TINT = np.array([0.72, 0.52, 0.32], dtype=np.float32)


def tile_is_train(i: int, j: int) -> bool:
    """Checkerboard: tile (row ``i``, column ``j``) belongs to the train split iff ``i + j`` is even."""
    return (i + j) % 2 == 0


@functools.lru_cache(maxsize=None)
def _source(category: str, source_size: int) -> np.ndarray:
    from ..bundled import skimage_images
    image = skimage_images([category], size=source_size, device="cpu")[0]       # (3, S, S)
    return image.numpy()


def _crop_positions(rng: np.random.Generator, n: int, split: str, source_size: int, tiles: int,
                    crop: int) -> list[tuple[int, int]]:
    tile = source_size // tiles
    if tile < crop:
        raise ValueError(f"defect_textures: tiles of {tile} px cannot hold {crop} px crops "
                         f"(source_size={source_size}, tiles={tiles})")
    want_train = split == "train"
    cells = [(i, j) for i in range(tiles) for j in range(tiles) if tile_is_train(i, j) == want_train]
    out = []
    for _ in range(n):
        i, j = cells[int(rng.integers(len(cells)))]
        top = i * tile + int(rng.integers(0, tile - crop + 1))
        left = j * tile + int(rng.integers(0, tile - crop + 1))
        out.append((top, left))
    return out


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return yy, xx


def _segment_distance(yy, xx, p, q) -> np.ndarray:
    """Distance of every pixel centre to the segment p-q (points as (y, x))."""
    d = q - p
    length2 = float(d @ d) or 1e-9
    t = np.clip(((yy - p[0]) * d[0] + (xx - p[1]) * d[1]) / length2, 0.0, 1.0)
    return np.hypot(yy - (p[0] + t * d[0]), xx - (p[1] + t * d[1]))


def _draw_mask(rng: np.random.Generator, kind: str, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """One defect: (binary mask (size, size), target colour (3,) or None = computed from the pixel)."""
    yy, xx = _grid(size)
    centre = rng.uniform(size / 8, 7 * size / 8, 2)
    if kind == "scratch":
        n_seg = int(rng.integers(1, 4))
        total = rng.uniform(0.3, 0.6) * size
        width = max(0.75, size / 64)                                # half-width in px
        angle = rng.uniform(0, 2 * math.pi)
        points = [centre]
        for _ in range(n_seg):
            angle += rng.normal(0.0, 0.4)
            step = total / n_seg * np.array([math.sin(angle), math.cos(angle)])
            points.append(np.clip(points[-1] + step, 0, size - 1))
        dist = np.min([_segment_distance(yy, xx, a, b) for a, b in zip(points[:-1], points[1:])], axis=0)
        mask = dist <= width
        target = np.full(3, 1.0 if rng.random() < 0.5 else 0.0, dtype=np.float32)
    elif kind == "hole":
        ry, rx = rng.uniform(size / 16, size / 8, 2)
        theta = rng.uniform(0, math.pi)
        dy, dx = yy - centre[0], xx - centre[1]
        u = dy * math.cos(theta) + dx * math.sin(theta)
        v = -dy * math.sin(theta) + dx * math.cos(theta)
        mask = (u / max(ry, 0.75)) ** 2 + (v / max(rx, 0.75)) ** 2 <= 1.0
        target = np.full(3, 0.05, dtype=np.float32)
    elif kind == "stain":
        mask = np.zeros((size, size), dtype=bool)
        for _ in range(int(rng.integers(3, 6))):
            c = centre + rng.normal(0.0, size / 16, 2)
            r = max(rng.uniform(size / 14, size / 8), 1.0)
            mask |= (yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= r ** 2
        target = None                                                # brown tint of the pixel
    elif kind == "colour_spot":
        r = max(rng.uniform(size / 20, size / 10), 1.0)
        mask = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r ** 2
        target = np.array(colorsys.hsv_to_rgb(rng.random(), 0.9, 0.95), dtype=np.float32)
    else:
        raise UnknownName(f"unknown defect kind {kind!r}; choose from {DEFECT_KINDS}")
    if not mask.any():                                               # tiny images: at least the centre
        mask[int(np.clip(centre[0], 0, size - 1)), int(np.clip(centre[1], 0, size - 1))] = True
    return mask, target


def _categories(category: str | Sequence[str] | None) -> list[str]:
    cats = list(CATEGORIES if category is None else ([category] if isinstance(category, str) else category))
    unknown = [c for c in cats if c not in CATEGORIES]
    if unknown or not cats:
        raise UnknownName(f"defect_textures: unknown or empty categories {unknown or cats}; "
                          f"choose from {CATEGORIES}")
    return cats


def make(n: int, seed: int, size: int = 64, category: str | Sequence[str] | None = "brick",
         defective_fraction: float = 0.5, contrast: float = 1.0,
         kinds: Sequence[str] = DEFECT_KINDS, split: str = "test", crop: int = 64,
         source_size: int = 512, tiles: int = 4, device=None) -> Bundle:
    """``n`` crops of ``category`` (one name, several, or None = all five), some with defects.

    Args:
        n: number of crops (spread evenly over the categories, in random order).
        defective_fraction: ``round(n * defective_fraction)`` crops get one defect each
            (kinds drawn uniformly from ``kinds``); training data use 0.
        contrast: defect strength multiplier (see the module docstring); never changes
            the crops, masks or kinds drawn.
        split: ``"train"`` (white checkerboard tiles) or ``"test"`` (black tiles).
        crop: crop side in pixels of the ``source_size`` image, resized to ``size``.
    Returns:
        Bundle with x (n, 3, size, size) in [0, 1], y (n,) 1 = defective, masks
        (n, 1, size, size) in {0, 1} (all zero for defect-free crops), factors
        ``category`` and ``defect``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"defect_textures: split must be 'train' or 'test', got {split!r}")
    if not 0.0 <= defective_fraction <= 1.0:
        raise ValueError(f"defective_fraction must lie in [0, 1], got {defective_fraction}")
    if contrast < 0:
        raise ValueError(f"contrast must be >= 0, got {contrast}")
    kinds = list(kinds)
    bad = [k for k in kinds if k not in DEFECT_KINDS]
    if bad or (not kinds and defective_fraction > 0):
        raise UnknownName(f"unknown or empty defect kinds {bad or kinds}; choose from {DEFECT_KINDS}")
    cats = _categories(category)
    # the categories enter the seed: two categories drawn with one seed get different defects
    rng = np.random.default_rng([int(seed), 0 if split == "train" else 1, int(size),
                                 *(CATEGORIES.index(c) for c in cats)])
    cat_of = rng.permutation(np.arange(n) % len(cats))
    n_def = int(round(n * defective_fraction))
    defective = np.zeros(n, dtype=bool)
    defective[rng.permutation(n)[:n_def]] = True
    kind_of = np.where(defective, rng.integers(0, max(len(kinds), 1), n) + 1, 0)

    crops = np.empty((n, 3, crop, crop), dtype=np.float32)
    for c_index, cat in enumerate(cats):
        rows = np.flatnonzero(cat_of == c_index)
        src = _source(cat, source_size)
        for row, (top, left) in zip(rows, _crop_positions(rng, len(rows), split, source_size, tiles, crop)):
            crops[row] = src[:, top:top + crop, left:left + crop]
    x = torch.from_numpy(crops)
    if crop != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=crop > size).clamp_(0.0, 1.0)
    x = x.numpy().copy()

    masks = np.zeros((n, 1, size, size), dtype=np.float32)
    for i in np.flatnonzero(defective):
        kind = kinds[kind_of[i] - 1]
        mask, target = _draw_mask(rng, kind, size)
        alpha = min(1.0, float(contrast) * BASE_STRENGTH[kind])
        pix = x[i][:, mask]                                                  # (3, P)
        goal = pix * _STAIN_TINT[:, None] if target is None else target[:, None]
        x[i][:, mask] = pix + alpha * (goal - pix)
        masks[i, 0] = mask

    dev = runtime.device() if device is None else torch.device(device)
    factors = np.stack([np.array([CATEGORIES.index(cats[c]) for c in cat_of], dtype=np.int64),
                        kind_of.astype(np.int64)], axis=1)
    return Bundle(
        x=torch.from_numpy(np.clip(x, 0.0, 1.0)).to(dev),
        factors=torch.from_numpy(factors).to(dev),
        factor_names=["category", "defect"],
        levels=[len(CATEGORIES), 1 + len(kinds)],
        y=torch.from_numpy(defective.astype(np.int64)).to(dev),
        masks=torch.from_numpy(masks).to(dev),
        name="defect_textures",
        info={"categories": cats, "kinds": ["none", *kinds], "contrast": float(contrast),
              "defective_fraction": float(defective_fraction), "split": split, "seed": int(seed),
              "size": int(size), "crop": int(crop), "source_size": int(source_size), "tiles": int(tiles),
              "base_strength": {k: BASE_STRENGTH[k] for k in kinds}},
    )
