"""ImageNet-1k (ILSVRC-2012) and ImageNet-100 in the ImageFolder layout, streamed (full tiers).

Layout (the one torchvision's ``ImageFolder`` and the official PyTorch ImageNet example use)::

    $REPLIBOOK_DATA/imagenet/train/<wnid>/*.JPEG      1,281,167 images, 1000 classes
    $REPLIBOOK_DATA/imagenet/val/<wnid>/*.JPEG        50,000 images (validation set sorted into
                                                      class folders, e.g. with the widely used
                                                      ``valprep.sh``)

**ImageNet-100** is the 100-class subset of Tian, Krishnan & Isola (CMC, ECCV 2020), used by
MoCo / feature-transformation studies: ``classes="imagenet100"`` reads only the folders of
`IMAGENET100_CLASSES` (the list of CMC's ``imagenet100.txt``). Class indices always follow
the sorted WordNet ids of the selected classes (what ``ImageFolder`` gives on a folder that
holds just those classes), so ImageNet-100 labels are 0..99.

Full-size ImageNet does not fit in memory, so `imagenet_loader` streams it: a
`torch.utils.data.DataLoader` over `ImageFiles` yields uint8 batches ``(B, 3, S, S)`` (or
``(B, V, 3, S, S)`` with ``views=V`` independent crops per image, for contrastive learning).
Training crops (``crop_scale``) are drawn per (seed, epoch, index, view), so a run is
reproducible for any number of workers; the rest of the augmentation runs batched on the device
(`replibook.data.augment`). Convert with `to_float` and normalise with `IMAGENET_MEAN` /
`IMAGENET_STD`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DatasetMissing
from .images import IMAGE_EXTENSIONS, center_crop, random_resized_crops

__all__ = ["IMAGENET_DIR", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGENET100_CLASSES", "IMAGENET_SPLITS",
           "ImageFiles", "imagenet_root", "imagenet_files", "imagenet_loader", "to_float", "normalize"]

IMAGENET_DIR = "imagenet"
IMAGENET_SPLITS = ("train", "val")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Tian, Krishnan & Isola 2020 (CMC), https://github.com/HobbitLong/CMC/blob/master/imagenet100.txt,
# in that file's order (labels use the sorted order; see the module docstring).
IMAGENET100_CLASSES: tuple[str, ...] = (
    "n02869837", "n01749939", "n02488291", "n02107142", "n13037406", "n02091831", "n04517823", "n04589890",
    "n03062245", "n01773797", "n01735189", "n07831146", "n07753275", "n03085013", "n04485082", "n02105505",
    "n01983481", "n02788148", "n03530642", "n04435653", "n02086910", "n02859443", "n13040303", "n03594734",
    "n02085620", "n02099849", "n01558993", "n04493381", "n02109047", "n04111531", "n02877765", "n04429376",
    "n02009229", "n01978455", "n02106550", "n01820546", "n01692333", "n07714571", "n02974003", "n02114855",
    "n03785016", "n03764736", "n03775546", "n02087046", "n07836838", "n04099969", "n04592741", "n03891251",
    "n02701002", "n03379051", "n02259212", "n07715103", "n03947888", "n04026417", "n02326432", "n03637318",
    "n01980166", "n02113799", "n02086240", "n03903868", "n02483362", "n04127249", "n02089973", "n03017168",
    "n02093428", "n02804414", "n02396427", "n04418357", "n02172182", "n01729322", "n02113978", "n03787032",
    "n02089867", "n02119022", "n03777754", "n04238763", "n02231487", "n03032252", "n02138441", "n02104029",
    "n03837869", "n03494278", "n04136333", "n03794056", "n03492542", "n02018207", "n04067472", "n03930630",
    "n03584829", "n02123045", "n04229816", "n02100583", "n03642806", "n04336792", "n03259280", "n02116738",
    "n02108089", "n03424325", "n01855672", "n02090622",
)

_HOW = ("ImageNet (ILSVRC-2012) needs a free account at https://image-net.org/download.php; unpack "
        "ILSVRC2012_img_train.tar into $REPLIBOOK_DATA/imagenet/train/<wnid>/ and the validation "
        "images into $REPLIBOOK_DATA/imagenet/val/<wnid>/ (the ImageFolder layout, e.g. with the "
        "valprep.sh script of the PyTorch ImageNet example).")


def imagenet_root(root: str | Path | None = None) -> Path:
    """The folder holding ``train/`` and ``val/``: ``root`` itself, or ``$REPLIBOOK_DATA/imagenet``."""
    if root is not None:
        return Path(root).expanduser()
    from .. import runtime
    base = runtime.data_dir()
    if base is None:
        raise DatasetMissing(f"ImageNet not found: REPLIBOOK_DATA is not set. {_HOW}")
    return Path(base).expanduser() / IMAGENET_DIR


def _select(available: list[str], classes, folder: Path) -> list[str]:
    if classes is None:
        return available
    wanted = IMAGENET100_CLASSES if isinstance(classes, str) and classes == "imagenet100" else classes
    if isinstance(wanted, str):
        raise ValueError(f"classes must be None, 'imagenet100' or a sequence of wnids, got {classes!r}")
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise DatasetMissing(f"ImageNet: {len(missing)} of the {len(set(wanted))} requested class folders are "
                             f"missing under {folder} (e.g. {', '.join(missing[:3])}). {_HOW}")
    return sorted(set(wanted))


def imagenet_files(split: str = "train", classes: None | str | Sequence[str] = None,
                   root: str | Path | None = None, max_per_class: int | None = None,
                   seed: int = 0) -> tuple[list[Path], torch.Tensor, list[str]]:
    """The image paths of one split: ``(paths, labels (N,) int64, classes)``.

    ``classes``: None (every class folder), ``"imagenet100"`` or a sequence of WordNet ids.
    ``max_per_class``: a seeded subset of each class (files are sorted first, so the
    listing is deterministic).
    """
    if split not in IMAGENET_SPLITS:
        raise ValueError(f"imagenet_files: split must be one of {IMAGENET_SPLITS}, got {split!r}")
    folder = imagenet_root(root) / split
    if not folder.is_dir():
        raise DatasetMissing(f"ImageNet {split} split not found at {folder}. {_HOW}")
    available = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not available:
        raise DatasetMissing(f"ImageNet: no class folders under {folder}. {_HOW}")
    names = _select(available, classes, folder)
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    labels: list[int] = []
    for k, wnid in enumerate(names):
        files = sorted(p for p in (folder / wnid).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DatasetMissing(f"ImageNet: class folder {folder / wnid} holds no images. {_HOW}")
        if max_per_class is not None and len(files) > max_per_class:
            keep = np.sort(rng.choice(len(files), size=max_per_class, replace=False))
            files = [files[i] for i in keep]
        paths += files
        labels += [k] * len(files)
    return paths, torch.tensor(labels, dtype=torch.int64), names


class ImageFiles(Dataset):
    """Image files decoded on demand into ``uint8 (3, S, S)`` (or ``(V, 3, S, S)`` for V views).

    ``crop_scale=None``: the deterministic evaluation crop (`images.center_crop` with
    ``resize``, default ``round(size * 256 / 224)``). ``crop_scale=(lo, hi)``: ``views``
    independent random resized crops, drawn from a numpy generator seeded with
    ``(seed, epoch, index, view)``.
    """

    def __init__(self, paths: Sequence[Path], labels: torch.Tensor, size: int = 224, *,
                 crop_scale: tuple[float, float] | None = None, views: int = 1, resize: int | None = None,
                 seed: int = 0, epoch: int = 0):
        if len(paths) != len(labels):
            raise ValueError(f"ImageFiles: {len(paths)} paths but {len(labels)} labels")
        if views < 1:
            raise ValueError(f"ImageFiles: views must be >= 1, got {views}")
        if crop_scale is None and views != 1:
            raise ValueError("ImageFiles: several views need random crops (set crop_scale)")
        self.paths, self.labels = list(paths), labels
        self.size, self.crop_scale, self.views = int(size), crop_scale, int(views)
        self.resize = round(self.size * 256 / 224) if resize is None else int(resize)
        self.seed, self.epoch = int(seed), int(epoch)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.paths[i]
        if self.crop_scale is None:
            x = torch.from_numpy(center_crop(path, self.size, self.resize))
        else:
            rngs = [np.random.default_rng([self.seed, self.epoch, i, v]) for v in range(self.views)]
            crops = random_resized_crops(path, self.size, self.crop_scale, rngs)
            x = torch.from_numpy(np.stack(crops)) if self.views > 1 else torch.from_numpy(crops[0])
        return x, self.labels[i]


def _default_workers() -> int:
    n = os.cpu_count() or 1
    return 0 if n <= 2 else min(8, n - 1)


def imagenet_loader(split: str = "train", *, classes: None | str | Sequence[str] = None, size: int = 224,
                    batch_size: int = 256, views: int = 1, crop_scale: tuple[float, float] | None = None,
                    shuffle: bool | None = None, workers: int | None = None, seed: int = 0,
                    max_per_class: int | None = None, root: str | Path | None = None,
                    drop_last: bool | None = None, epoch: int = 0, resize: int | None = None) -> DataLoader:
    """One epoch of an ImageNet split as uint8 batches ``(x, y)``; see the module docstring.

    ``shuffle`` / ``drop_last`` default to True for the train split and False otherwise; the
    order is a permutation seeded by ``(seed, epoch)``. Build one loader per epoch (cheap)
    so both the order and the crops change with ``epoch``.
    """
    paths, labels, names = imagenet_files(split, classes, root=root, max_per_class=max_per_class, seed=seed)
    train = split == "train"
    ds = ImageFiles(paths, labels, size, crop_scale=crop_scale, views=views, resize=resize, seed=seed,
                    epoch=epoch)
    ds.classes = names
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    n_workers = _default_workers() if workers is None else int(workers)
    return DataLoader(ds, batch_size=batch_size, shuffle=train if shuffle is None else shuffle,
                      drop_last=train if drop_last is None else drop_last, generator=gen,
                      num_workers=n_workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=False, prefetch_factor=4 if n_workers else None)


def to_float(x: torch.Tensor, device=None) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1] on ``device`` (the copy is non-blocking from pinned memory)."""
    return x.to(device, non_blocking=True).float().div_(255.0)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Standardise float images in [0, 1] (channel dim -3) with the ImageNet mean and std."""
    shape = (3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(shape)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(shape)
    return (x - mean) / std
