"""AgeDB-DIR and IMDB-WIKI-DIR: the deep-imbalanced-regression age benchmarks (full tier only).

Yang et al. (2021, "Delving into Deep Imbalanced Regression") define both benchmarks by a csv
file next to the face images, one row per image with the columns ``age`` (the regression
target, in years), ``path`` (the image file, relative to the data folder) and ``split``
(``train`` / ``val`` / ``test``; the val and test splits are balanced over ages). The
ConR code (https://github.com/BorealisAI/ConR, ``agedb-dir/``, ``imdb-wiki-dir/``) reads the
same files. On-disk layout expected here::

    $REPLIBOOK_DATA/agedb-dir/agedb.csv            + the image paths it names (e.g. AgeDB/...)
    $REPLIBOOK_DATA/imdb-wiki-dir/imdb_wiki.csv    + imdb_crop/..., wiki_crop/...

The images are not redistributable and are not shipped offline: download AgeDB (or IMDB-WIKI)
from its authors, and create the csv with the DIR repository's ``data/create_agedb.py`` (or
``create_imd_wiki.py``) and ``preprocess_*.py`` scripts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import runtime
from ..errors import DatasetMissing

__all__ = ["DIR_DATASETS", "DIRSplit", "load_dir_csv", "dir_split"]

#: dataset -> (folder under REPLIBOOK_DATA, csv name, where to get it)
DIR_DATASETS = {
    "agedb": ("agedb-dir", "agedb.csv",
              "download AgeDB from its authors (https://ibug.doc.ic.ac.uk/resources/agedb/) and build "
              "agedb.csv with https://github.com/YyzHarry/imbalanced-regression (agedb-dir/data)"),
    "imdb_wiki": ("imdb-wiki-dir", "imdb_wiki.csv",
                  "download IMDB-WIKI faces (https://data.vision.ee.ethz.ch/cvl/rrothe/imdb-wiki/) and build "
                  "imdb_wiki.csv with https://github.com/YyzHarry/imbalanced-regression (imdb-wiki-dir/data)"),
}
SPLITS = ("train", "val", "test")


@dataclass
class DIRSplit:
    """Images ``x`` (N, 3, size, size) float in [0, 1], ages ``y`` (N,) float32, and the file paths."""
    x: torch.Tensor
    y: torch.Tensor
    paths: list[str]
    dataset: str
    split: str

    def card(self) -> dict:
        return {"name": f"{self.dataset}-dir", "split": self.split, "n": len(self.y),
                "x_shape": list(self.x.shape[1:])}


def _folder(dataset: str, root: str | Path | None) -> tuple[Path, Path]:
    if dataset not in DIR_DATASETS:
        raise ValueError(f"unknown DIR dataset {dataset!r}; known: {sorted(DIR_DATASETS)}")
    sub, csv_name, how = DIR_DATASETS[dataset]
    if root is None:
        env = runtime.data_dir()
        if env is None:
            raise DatasetMissing(f"{dataset}-DIR not found: REPLIBOOK_DATA is not set; put {sub}/{csv_name} "
                                 f"and its images under it; to get them, {how}")
        root = Path(env) / sub
    root = Path(root).expanduser()
    csv = root / csv_name
    if not csv.is_file():
        raise DatasetMissing(f"{dataset}-DIR not found: no {csv} (REPLIBOOK_DATA/{sub}/{csv_name}); to get it, {how}")
    return root, csv


def load_dir_csv(dataset: str = "agedb", root: str | Path | None = None) -> tuple[pd.DataFrame, Path]:
    """The benchmark's csv (columns age, path, split) and the folder its paths are relative to."""
    folder, csv = _folder(dataset, root)
    df = pd.read_csv(csv)
    missing = {"age", "path", "split"} - set(df.columns)
    if missing:
        raise ValueError(f"{csv} lacks the columns {sorted(missing)} of the DIR csv format (age, path, split)")
    bad = set(df["split"].unique()) - set(SPLITS)
    if bad:
        raise ValueError(f"{csv}: unknown split names {sorted(bad)}; expected {SPLITS}")
    return df, folder


def dir_split(dataset: str = "agedb", split: str = "train", *, root: str | Path | None = None, size: int = 224,
              limit: int | None = None, seed: int = 0, device=None) -> DIRSplit:
    """Load one split as tensors: RGB images resized to ``size`` x ``size`` (bilinear), ages as float.

    ``limit`` keeps a seeded random subset of that many rows (for quick looks; the benchmark's
    few-shot regions need the whole training split).
    """
    from PIL import Image

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    df, folder = load_dir_csv(dataset, root)
    df = df[df["split"] == split].reset_index(drop=True)
    if limit is not None and limit < len(df):
        df = df.iloc[np.sort(np.random.default_rng(seed).choice(len(df), limit, replace=False))].reset_index(drop=True)
    images = np.empty((len(df), size, size, 3), dtype=np.uint8)
    for i, rel in enumerate(df["path"]):
        path = folder / rel
        if not path.is_file():
            raise DatasetMissing(f"{dataset}-DIR image missing: {path} (named in the csv; "
                                 f"{DIR_DATASETS[dataset][2]})")
        with Image.open(path) as im:
            images[i] = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
    dev = torch.device(device) if device is not None else torch.device("cpu")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(dev).float().div_(255.0)
    y = torch.as_tensor(df["age"].to_numpy(dtype=np.float32), device=dev)
    return DIRSplit(x, y, list(df["path"]), dataset, split)
