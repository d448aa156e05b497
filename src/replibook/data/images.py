"""Decoding image files into fixed-size uint8 arrays (the folder-layout loaders of the full tiers).

Two crops, both returning ``uint8 (3, size, size)`` arrays (RGB, channels first):

- `center_crop`: the evaluation transform of ImageNet-style pipelines; resize so the
  shorter side is ``resize`` (bilinear), then cut the central ``size`` x ``size`` square.
  ``resize = size`` keeps as much of the image as possible; ``resize = size * 256 / 224`` is
  the usual ImageNet evaluation.
- `random_resized_crop`: the "Inception" crop used to train on ImageNet (Szegedy et al.
  2015): a box covering a fraction ``scale`` of the image area with aspect ratio in
  ``ratio`` (log-uniform), resized to ``size``. `random_resized_box` draws the box from a
  numpy ``Generator``, so a loader can seed it per (epoch, index, view) and be
  reproducible with any number of workers. When ten draws do not fit, it falls back to the
  largest central box with an in-range aspect ratio (the same rule as torchvision).

Colour jitter, blur and flips are not done here: they run batched on the device
(`replibook.data.augment`).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_EXTENSIONS", "center_crop", "random_resized_box", "random_resized_crop", "random_resized_crops"]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _open_rgb(path: Path | str, draft: int | None = None):
    from PIL import Image
    im = Image.open(path)
    if draft is not None and im.format == "JPEG":
        # JPEG DCT scaling: decode at >= the target size only (several times faster on photos)
        im.draft("RGB", (draft, draft))
    return im.convert("RGB")


def _chw(im) -> np.ndarray:
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()


def center_crop(path: Path | str, size: int, resize: int | None = None) -> np.ndarray:
    """``uint8 (3, size, size)``: shorter side resized to ``resize`` (default ``size``), centre crop."""
    from PIL import Image
    resize = size if resize is None else int(resize)
    if resize < size:
        raise ValueError(f"center_crop: resize ({resize}) must be >= size ({size})")
    with _open_rgb(path, draft=resize) as im:
        w, h = im.size
        scale = resize / min(w, h)
        im = im.resize((max(resize, round(w * scale)), max(resize, round(h * scale))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        return _chw(im.crop((left, top, left + size, top + size)))


def random_resized_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
                       rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random crop box ``(left, top, w, h)`` covering ``scale`` of the area, aspect in ``ratio``."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(path: Path | str, size: int, scale: tuple[float, float], rng: np.random.Generator,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """``uint8 (3, size, size)``: a `random_resized_box` of the image, resized (bilinear) to ``size``."""
    return random_resized_crops(path, size, scale, [rng], ratio)[0]


def random_resized_crops(path: Path | str, size: int, scale: tuple[float, float],
                         rngs: list[np.random.Generator], ratio: tuple[float, float] = (3 / 4, 4 / 3)
                         ) -> list[np.ndarray]:
    """One crop per generator in ``rngs`` (the views of a contrastive pair), decoding the file once."""
    from PIL import Image
    with _open_rgb(path) as im:
        out = []
        for rng in rngs:
            left, top, w, h = random_resized_box(im.size[0], im.size[1], scale, ratio, rng)
            out.append(_chw(im.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))))
        return out
