"""Full-tier domain-adaptation image sets in their published folder layouts (ch. 10).

- **Office-Home** (Venkateswara et al. 2017): ``<root>/OfficeHome/<Domain>/<Class>/*.jpg`` with
  the domains Art, Clipart, Product and Real_World (65 classes). Download:
  https://www.hemanthdv.org/officeHomeDataset.html (unzip ``OfficeHomeDataset_10072016``
  and rename it ``OfficeHome``).
- **VisDA-2017** classification (Peng et al. 2017): ``<root>/visda-2017/<split>/<class>/*``
  with the splits ``train`` (synthetic renderings) and ``validation`` (real photos, the
  target of SFDA papers), 12 classes. Download: https://github.com/VisionLearningGroup/taskcv-2017-public
  (``train.tar`` and ``validation.tar``, unpacked under ``visda-2017/``).

``<root>`` is the ``root`` argument or ``$REPLIBOOK_DATA``. Images are decoded with PIL,
converted to RGB and resized (bilinear, shorter side then centre crop) to ``size`` x ``size``,
and returned as a uint8 tensor ``(N, 3, size, size)`` to keep memory low (224 px VisDA
validation: 55k images, about 8 GB). ``max_per_class`` takes a seeded subset per class.
Class indices follow the sorted class-folder names; files are sorted, so a load is
deterministic.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetMissing
from .images import IMAGE_EXTENSIONS, center_crop

__all__ = ["OFFICE_HOME_DOMAINS", "VISDA_SPLITS", "image_folder", "office_home", "visda2017"]

OFFICE_HOME_DOMAINS = ("Art", "Clipart", "Product", "Real_World")
VISDA_SPLITS = ("train", "validation")


def _root(root, dataset: str, how: str) -> Path:
    if root is None:
        from .. import runtime
        root = runtime.data_dir()
        if root is None:
            raise DatasetMissing(f"{dataset} not found: REPLIBOOK_DATA is not set; set it to the folder that "
                                 f"holds it. {how}")
    return Path(root).expanduser()


def image_folder(folder: Path | str, *, size: int = 224, max_per_class: int | None = None, seed: int = 0,
                 dataset: str = "image folder", how: str = "") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images of ``folder/<class>/<file>`` as ``(x uint8 (N, 3, size, size), y (N,), classes)``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetMissing(f"{dataset} not found at {folder}. {how}")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DatasetMissing(f"{dataset}: no class folders under {folder}. {how}")
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if max_per_class is not None and len(files) > max_per_class:
            keep = np.sort(rng.choice(len(files), size=max_per_class, replace=False))
            files = [files[i] for i in keep]
        xs += [center_crop(f, size) for f in files]
        ys += [k] * len(files)
    if not xs:
        raise DatasetMissing(f"{dataset}: no images under {folder}. {how}")
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.int64), classes


def office_home(domain: str, *, size: int = 224, max_per_class: int | None = None, seed: int = 0, root=None):
    """One Office-Home domain: ``(x uint8, y, classes)`` (65 classes)."""
    if domain not in OFFICE_HOME_DOMAINS:
        raise ValueError(f"office_home: domain must be one of {OFFICE_HOME_DOMAINS}, got {domain!r}")
    how = ("Get it from https://www.hemanthdv.org/officeHomeDataset.html and unpack it as "
           "$REPLIBOOK_DATA/OfficeHome/<Domain>/<Class>/*.jpg.")
    base = _root(root, "Office-Home", how)
    return image_folder(base / "OfficeHome" / domain, size=size, max_per_class=max_per_class, seed=seed,
                        dataset=f"Office-Home ({domain})", how=how)


def visda2017(split: str = "validation", *, size: int = 224, max_per_class: int | None = None, seed: int = 0,
              root=None):
    """One VisDA-2017 classification split: ``(x uint8, y, classes)`` (12 classes)."""
    if split not in VISDA_SPLITS:
        raise ValueError(f"visda2017: split must be one of {VISDA_SPLITS}, got {split!r}")
    how = ("Get train.tar and validation.tar from https://github.com/VisionLearningGroup/taskcv-2017-public "
           "(classification) and unpack them under $REPLIBOOK_DATA/visda-2017/.")
    base = _root(root, "VisDA-2017", how)
    return image_folder(base / "visda-2017" / split, size=size, max_per_class=max_per_class, seed=seed,
                        dataset=f"VisDA-2017 ({split})", how=how)
