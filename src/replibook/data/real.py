"""Full-tier datasets read from disk: CIFAR-10, MNIST, Fashion-MNIST, CIFAR-100 and MVTec AD.

Where the files come from (BOOK_DESIGN, data policy):

- developers and CI have no internet; ``$REPLIBOOK_DATA`` points at
  ``../shared/data``, which holds a JPEG mirror of CIFAR-10
  (``cifar10-jpeg/cifar10-jpeg.zip``);
- a user with internet points ``$REPLIBOOK_DATA`` at any folder and lets
  torchvision download the originals there (``download=True``), in
  torchvision's own on-disk layout.

These loaders read both layouts themselves (pickles, IDX files, the zip), so
no download code runs unless ``download=True`` is passed. A missing dataset
raises `DatasetMissing` with a one-line message naming the dataset, the folder
searched, ``REPLIBOOK_DATA`` and how to get the files; nothing is ever
substituted silently. Every `Dataset` records in ``source`` which copy it read
("torchvision" or "cifar10-jpeg-mirror"), because the JPEG mirror's pixels are
not bit-identical to the original release.

Images are float32 (N, C, H, W) in [0, 1], labels int64. ``n_train`` /
``n_test`` take balanced, seeded per-class subsets (`balanced_subset`); the
samples come back in a seeded random order, never grouped by class.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import uuid
import zipfile
from pathlib import Path

import numpy as np
import torch

from .. import runtime
from ..errors import DatasetMissing, ReplibookError
from . import Dataset, Split, balanced_subset

__all__ = ["cifar10", "mnist", "fashion_mnist", "CIFAR10_CLASSES", "FASHION_MNIST_CLASSES",
           "MIRROR_SHA256", "mvtec_ad", "MVTEC_CATEGORIES"]

# torchvision's class order (= the label order of the original release).
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
MNIST_CLASSES = [str(d) for d in range(10)]

# sha256 of ../shared/data/cifar10-jpeg/cifar10-jpeg.zip (see its README).
MIRROR_SHA256 = "f7625fc6a42ead0a462a6e36eb4b53cc89da86f36a0e011313c8c9a582622870"

CIFAR10_TORCHVISION_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_MIRROR_ZIP = Path("cifar10-jpeg") / "cifar10-jpeg.zip"


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------

def _device(device) -> torch.device:
    return torch.device(device) if device is not None else runtime.device()


def _root(root: str | Path | None, dataset: str, how_to_get: str) -> Path:
    """``root`` or ``$REPLIBOOK_DATA``; a one-line `DatasetMissing` when neither is given."""
    if root is not None:
        return Path(root).expanduser()
    env = runtime.data_dir()
    if env is None:
        raise DatasetMissing(f"{dataset} not found: REPLIBOOK_DATA is not set; set it to the folder "
                             f"holding the dataset mirrors (developers: ../shared/data), or "
                             f"{how_to_get}")
    return env


def _to_split(images: np.ndarray, labels: np.ndarray, dev: torch.device) -> Split:
    """uint8 (N, C, H, W) -> float32 in [0, 1] on ``dev`` (converted after the move: 4x less traffic)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(dev).float().div_(255.0)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(dev)
    return Split(x, y)


def _take(images: np.ndarray, labels: np.ndarray, n: int | None, seed: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """A balanced seeded subset (all samples, shuffled, when ``n`` is None)."""
    labels = np.asarray(labels)
    idx = balanced_subset(labels, n, seed)
    # Read memory-mapped arrays in file order (fast), then apply the random order.
    order = np.argsort(idx, kind="stable")
    picked = np.empty((len(idx),) + images.shape[1:], dtype=images.dtype)
    picked[order] = images[idx[order]]
    return picked, labels[idx]


def _temporary_sibling(path: Path) -> Path:
    """A unique temporary name beside ``path`` (same filesystem, so `os.replace` is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Write ``path`` so that readers see either no file or the complete one."""
    tmp = _temporary_sibling(path)
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, array)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = _temporary_sibling(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# CIFAR-10: torchvision's python pickles
# ---------------------------------------------------------------------------

def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch -> (images (N, 3, 32, 32) uint8, labels (N,) int64).

    The pickles were written by Python 2: ``latin1`` decodes their str keys;
    rows are 3072 bytes, the red plane then green then blue, each 32x32 row-major.
    """
    with open(path, "rb") as handle:
        entry = pickle.load(handle, encoding="latin1")
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    data = np.asarray(entry["data"], dtype=np.uint8)
    labels = np.asarray(entry["labels"] if "labels" in entry else entry["fine_labels"],
                        dtype=np.int64)
    return data.reshape(-1, 3, 32, 32), labels


def _torchvision_cifar_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in CIFAR10_TRAIN_BATCHES + [CIFAR10_TEST_BATCH])


def _read_torchvision_cifar(folder: Path) -> dict[str, np.ndarray]:
    parts = [_read_cifar_batch(folder / name) for name in CIFAR10_TRAIN_BATCHES]
    test_x, test_y = _read_cifar_batch(folder / CIFAR10_TEST_BATCH)
    return {"train_x": np.concatenate([p[0] for p in parts]),
            "train_y": np.concatenate([p[1] for p in parts]),
            "test_x": test_x, "test_y": test_y}


# ---------------------------------------------------------------------------
# CIFAR-10: the JPEG mirror (decoded once, cached by the zip's sha256)
# ---------------------------------------------------------------------------

_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read in 1 MiB chunks (the mirror is 62 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _zip_sha256(path: Path) -> str:
    """sha256 of ``path``, remembered per (path, size, mtime) in memory and on disk.

    Re-hashing 62 MB costs ~0.2 s per call; the on-disk index under
    ``$REPLIBOOK_CACHE/cifar10`` lets later processes skip it too. A changed
    file has a new size or mtime and is hashed again.
    """
    path = path.resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _SHA_MEMO:
        return _SHA_MEMO[key]
    index_path = runtime.cache_dir("cifar10") / "sha256-index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    known = index.get(str(path))
    if known and known.get("size") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns:
        sha = known["sha256"]
    else:
        sha = _sha256_file(path)
        index[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
        _atomic_write_text(index_path, json.dumps(index, indent=1, sort_keys=True))
    _SHA_MEMO[key] = sha
    return sha


def _parse_member(name: str) -> tuple[str, int] | None:
    """``[prefix/]train/<class>/NNNN.jpg`` -> ("train", class index); None for non-images."""
    parts = name.split("/")
    if len(parts) < 3 or not parts[-1].lower().endswith((".jpg", ".jpeg")):
        return None
    split, cls = parts[-3], parts[-2]
    if split not in ("train", "test"):
        return None
    if cls not in CIFAR10_CLASSES:
        raise ReplibookError(f"CIFAR-10 mirror: unexpected class folder {cls!r} in member {name!r}")
    return split, CIFAR10_CLASSES.index(cls)


def _decode_jpeg_zip(zip_path: Path) -> dict[str, np.ndarray]:
    """Decode every ``{train,test}/<class>/NNNN.jpg`` member of the mirror zip.

    Members are decoded in sorted order, so within a split the images are
    grouped by class (airplane first) and numbered as in the zip; loaders
    shuffle afterwards. Takes ~15 s for all 60k images on one (busy) core.

    Returns:
        {"train_x": (N, 3, 32, 32) uint8, "train_y": (N,) int64, "test_x", "test_y"}.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    with zipfile.ZipFile(zip_path) as archive:
        members = []
        for info in archive.infolist():
            parsed = _parse_member(info.filename)
            if parsed is not None:
                members.append((parsed[0], parsed[1], info.filename))
        members.sort()
        out: dict[str, list] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
        for split, label, name in tqdm(members, desc="decoding CIFAR-10 JPEG mirror",
                                       unit="img", mininterval=1.0, leave=False):
            with Image.open(io.BytesIO(archive.read(name))) as image:
                pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
            if pixels.shape != (32, 32, 3):
                raise ReplibookError(f"CIFAR-10 mirror: {name} is {pixels.shape}, expected 32x32 RGB")
            out[f"{split}_x"].append(pixels.transpose(2, 0, 1))       # HWC -> CHW
            out[f"{split}_y"].append(label)
    arrays = {}
    for split in ("train", "test"):
        if not out[f"{split}_y"]:
            raise ReplibookError(f"CIFAR-10 mirror {zip_path} holds no {split}/<class>/*.jpg images")
        arrays[f"{split}_x"] = np.stack(out[f"{split}_x"])
        arrays[f"{split}_y"] = np.asarray(out[f"{split}_y"], dtype=np.int64)
    return arrays


def _mirror_arrays(zip_path: Path) -> tuple[dict[str, np.ndarray], str]:
    """The decoded mirror as memory-mapped uint8 arrays, decoding on the first call only.

    Cache: ``$REPLIBOOK_CACHE/cifar10/mirror-<sha256[:16]>/{train,test}_{x,y}.npy``.
    The key is the zip's content hash, so a different or updated zip never
    reuses a stale decode. ``y`` is written last: its presence marks a complete cache.
    """
    sha = _zip_sha256(zip_path)
    folder = runtime.cache_dir("cifar10", f"mirror-{sha[:16]}")
    names = ["train_x", "test_x", "train_y", "test_y"]
    if not all((folder / f"{n}.npy").exists() for n in names):
        arrays = _decode_jpeg_zip(zip_path)
        for name in names:
            _atomic_save_npy(folder / f"{name}.npy", arrays[name])
    return {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in names}, sha


def _cifar10_missing(root: Path, detail: str = "") -> DatasetMissing:
    return DatasetMissing(
        f"CIFAR-10 not found in {root}{detail}: expected {CIFAR10_TORCHVISION_DIR}/ (torchvision "
        f"layout) or {CIFAR10_MIRROR_ZIP.as_posix()}; set REPLIBOOK_DATA to the folder holding "
        f"them, or run `python -c 'import torchvision; torchvision.datasets.CIFAR10("
        f"\"$REPLIBOOK_DATA\", download=True)'` on a machine with internet")


def cifar10(n_train: int | None = None, n_test: int | None = None, seed: int = 0,
            source: str = "auto", root: str | Path | None = None, device=None,
            download: bool = False) -> Dataset:
    """CIFAR-10 (Krizhevsky, 2009): 50,000 train and 10,000 test 32x32 colour images.

    Two on-disk copies are understood, looked up in ``root`` (default ``$REPLIBOOK_DATA``):

    - ``"torchvision"``: ``cifar-10-batches-py/data_batch_1..5`` and
      ``test_batch``, the original python pickles as torchvision downloads them;
    - ``"mirror"``: ``cifar10-jpeg/cifar10-jpeg.zip``, the offline JPEG mirror
      (re-encoded at quality ~75, so pixels differ slightly from the original;
      accuracies are comparable, not identical). Decoded once (~15-30 s) into
      uint8 ``.npy`` files under ``$REPLIBOOK_CACHE/cifar10``, keyed by the
      zip's sha256; later calls memory-map them.

    ``source="auto"`` prefers the torchvision copy, then the mirror.
    ``download=True`` lets torchvision fetch the original when neither is there
    (user machines with internet only).

    Args:
        n_train, n_test: balanced per-class subset sizes (None: the whole split).
        seed: seed of the subsets and of the sample order.
    Returns:
        Dataset with x (N, 3, 32, 32) float32 in [0, 1], y (N,) int64,
        ``classes`` in torchvision order, ``source`` "torchvision" or
        "cifar10-jpeg-mirror".
    """
    if source not in ("auto", "mirror", "torchvision"):
        raise ValueError(f"cifar10: source must be 'auto', 'mirror' or 'torchvision', got {source!r}")
    how = ("run `python -c 'import torchvision; torchvision.datasets.CIFAR10(\"$REPLIBOOK_DATA\", "
           "download=True)'` on a machine with internet")
    base = _root(root, "CIFAR-10", how)
    tv_folder, zip_path = base / CIFAR10_TORCHVISION_DIR, base / CIFAR10_MIRROR_ZIP
    use_tv = source in ("auto", "torchvision") and _torchvision_cifar_complete(tv_folder)
    use_mirror = not use_tv and source in ("auto", "mirror") and zip_path.is_file()
    if not (use_tv or use_mirror) and download and source != "mirror":
        import torchvision  # user machines only: this downloads ~170 MB
        torchvision.datasets.CIFAR10(str(base), train=True, download=True)
        use_tv = _torchvision_cifar_complete(tv_folder)
    info: dict = {"root": str(base), "pixels": "uint8 / 255"}
    if use_tv:
        arrays, src = _read_torchvision_cifar(tv_folder), "torchvision"
        info["path"] = str(tv_folder)
    elif use_mirror:
        arrays, sha = _mirror_arrays(zip_path)
        src = "cifar10-jpeg-mirror"
        info.update(path=str(zip_path), sha256=sha, is_reference_mirror=sha == MIRROR_SHA256,
                    note="JPEG re-encoded (quality ~75): pixels differ slightly from the original")
    else:
        detail = {"mirror": " (source='mirror')", "torchvision": " (source='torchvision')"}
        if source == "torchvision" and tv_folder.is_dir():
            detail["torchvision"] = f" ({tv_folder.name}/ lacks some of data_batch_1..5, test_batch)"
        raise _cifar10_missing(base, detail.get(source, ""))

    train_x, train_y = _take(arrays["train_x"], arrays["train_y"], n_train, seed)
    test_x, test_y = _take(arrays["test_x"], arrays["test_y"], n_test, seed)
    info.update(n_train=len(train_y), n_test=len(test_y), full_train=len(arrays["train_y"]),
                full_test=len(arrays["test_y"]), seed=seed,
                subset="balanced per class" if n_train is not None or n_test is not None else "all",
                x_shape=[3, 32, 32])
    dev = _device(device)
    return Dataset(_to_split(train_x, train_y, dev), _to_split(test_x, test_y, dev),
                   name="cifar10", source=src, classes=list(CIFAR10_CLASSES), info=info)


# ---------------------------------------------------------------------------
# MNIST and Fashion-MNIST: IDX files in torchvision's layout
# ---------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
              "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (LeCun's MNIST format), plain or ``.gz``.

    Layout: two zero bytes, a type code (0x08 = uint8), the number of
    dimensions d, then d big-endian int32 sizes, then the values row-major.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ReplibookError(f"{path} is not an IDX file (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise ReplibookError(f"{path} is truncated or corrupt: {len(raw) - offset} bytes of data "
                             f"for shape {shape} (expected {expected})")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(raw_dir: Path) -> dict[str, Path] | None:
    """The four IDX paths in ``raw_dir`` (plain preferred over .gz), or None if any is missing."""
    found = {}
    for key, stem in _IDX_FILES.items():
        candidates = [raw_dir / stem, raw_dir / f"{stem}.gz"]
        hit = next((p for p in candidates if p.is_file()), None)
        if hit is None:
            return None
        found[key] = hit
    return found


def _idx_dataset(name: str, folder: str, tv_class: str, classes: list[str], root, n_train, n_test,
                 seed: int, flatten: bool, device, download: bool) -> Dataset:
    how = (f"call replibook.data.real.{name}(download=True), i.e. run `python -c 'import "
           f"torchvision; torchvision.datasets.{tv_class}(\"$REPLIBOOK_DATA\", download=True)'`, "
           f"on a machine with internet")
    pretty = "MNIST" if name == "mnist" else "Fashion-MNIST"
    base = _root(root, pretty, how)
    raw_dir = base / folder / "raw"
    paths = _find_idx(raw_dir)
    if paths is None and download:
        import torchvision  # user machines only
        for train in (True, False):
            getattr(torchvision.datasets, tv_class)(str(base), train=train, download=True)
        paths = _find_idx(raw_dir)
    if paths is None:
        raise DatasetMissing(
            f"{pretty} not found in {base}: expected {folder}/raw/train-images-idx3-ubyte[.gz] and "
            f"the other three IDX files (torchvision layout); set REPLIBOOK_DATA to the folder "
            f"holding {folder}/, or {how}")
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_x"]) != len(arrays[f"{split}_y"]):
            raise ReplibookError(f"{pretty}: {split} images and labels differ in count "
                                 f"({len(arrays[f'{split}_x'])} vs {len(arrays[f'{split}_y'])})")
    train_x, train_y = _take(arrays["train_x"][:, None], arrays["train_y"], n_train, seed)
    test_x, test_y = _take(arrays["test_x"][:, None], arrays["test_y"], n_test, seed)
    dev = _device(device)
    train, test = _to_split(train_x, train_y, dev), _to_split(test_x, test_y, dev)
    if flatten:
        train, test = Split(train.x.flatten(1), train.y), Split(test.x.flatten(1), test.y)
    info = {"root": str(base), "path": str(raw_dir), "files": [p.name for p in paths.values()],
            "pixels": "uint8 / 255", "n_train": len(train_y), "n_test": len(test_y),
            "full_train": len(arrays["train_y"]), "full_test": len(arrays["test_y"]), "seed": seed,
            "subset": "balanced per class" if n_train is not None or n_test is not None else "all",
            "x_shape": list(train.x.shape[1:])}
    return Dataset(train, test, name=name, source="torchvision", classes=list(classes), info=info)


def mnist(n_train: int | None = None, n_test: int | None = None, seed: int = 0,
          root: str | Path | None = None, flatten: bool = False, device=None,
          download: bool = False) -> Dataset:
    """MNIST (60,000 train / 10,000 test, 28x28 grey) from torchvision's on-disk layout.

    Reads ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``
    directly (no torchvision code runs unless ``download=True`` and the files
    are missing). ``root`` defaults to ``$REPLIBOOK_DATA``. For offline smoke
    runs use `bundled.mnist5k` instead.

    Returns:
        Dataset with x (N, 1, 28, 28) float32 in [0, 1] (or (N, 784) with
        ``flatten``), y (N,) int64, source "torchvision".
    """
    return _idx_dataset("mnist", "MNIST", "MNIST", MNIST_CLASSES, root, n_train, n_test, seed,
                        flatten, device, download)


def fashion_mnist(n_train: int | None = None, n_test: int | None = None, seed: int = 0,
                  root: str | Path | None = None, flatten: bool = False, device=None,
                  download: bool = False) -> Dataset:
    """Fashion-MNIST (Xiao et al., 2017): 70,000 28x28 grey clothing images, 10 classes.

    Same layout and behaviour as `mnist`, under ``<root>/FashionMNIST/raw/``.
    """
    return _idx_dataset("fashion_mnist", "FashionMNIST", "FashionMNIST", FASHION_MNIST_CLASSES,
                        root, n_train, n_test, seed, flatten, device, download)


def cifar100(root: str | Path | None = None, n_train: int | None = None, n_test: int | None = None,
             seed: int = 0, device=None, download: bool = False, labels: str = "fine") -> Dataset:
    """CIFAR-100 from torchvision's layout ``<root>/cifar-100-python/{train,test}``.

    Full tier only. ``root`` defaults to ``$REPLIBOOK_DATA``; ``download=True`` lets
    torchvision fetch it (machines with internet). ``n_train`` / ``n_test`` take the
    first examples of a seeded permutation. Returns x ``(N, 3, 32, 32)`` float32 in
    [0, 1] and y ``(N,)`` int64: the 100 fine classes (``labels="fine"``, default) or the
    20 superclasses (``labels="coarse"``). ``info["fine_to_coarse"]`` lists the superclass
    of each fine class as paired in the files (-1 for a class absent from them, or all -1
    when the pickles carry no ``coarse_labels``), so
    ``coarse = torch.tensor(info["fine_to_coarse"])[y_fine]``.
    """
    if labels not in ("fine", "coarse"):
        raise ValueError(f"cifar100: labels must be 'fine' or 'coarse', got {labels!r}")
    base = Path(root) if root is not None else runtime.data_dir(required=False)
    if base is None:
        raise DatasetMissing("CIFAR-100: set REPLIBOOK_DATA to the folder holding "
                             "cifar-100-python/ "
                             "(torchvision layout), or pass root=")
    folder = base / "cifar-100-python"
    if not (folder / "train").is_file() and download:
        import torchvision  # user machines only
        torchvision.datasets.CIFAR100(str(base), train=True, download=True)
    if not ((folder / "train").is_file() and (folder / "test").is_file()):
        raise DatasetMissing(f"CIFAR-100 not found in {folder} (need train and test pickles); "
                             "get it with "
                             "`python -c 'import torchvision; torchvision.datasets.CIFAR100("
                             "\"$REPLIBOOK_DATA\", download=True)'`")

    def read(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        # python-2 pickle (latin1 keys): rows of 3072 bytes (R, G, B planes, 32x32 row-major)
        with open(path, "rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        coarse = entry.get("coarse_labels")
        return (np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32),
                np.asarray(entry["fine_labels"], dtype=np.int64),
                None if coarse is None else np.asarray(coarse, dtype=np.int64))

    gen = np.random.default_rng(seed)
    splits, mapping = [], [-1] * 100
    for name, n in (("train", n_train), ("test", n_test)):
        x, fine, coarse = read(folder / name)
        if coarse is not None:            # the superclass of each fine class, from all its samples
            for f, c in set(zip(fine.tolist(), coarse.tolist())):
                if mapping[f] not in (-1, c):
                    raise ReplibookError(f"CIFAR-100 ({folder / name}): fine class {f} is paired with "
                                         f"coarse classes {mapping[f]} and {c}")
                mapping[f] = c
        elif labels == "coarse":
            raise ReplibookError(f"CIFAR-100: {folder / name} has no coarse_labels; is it the python "
                                 "version of CIFAR-100 (cifar-100-python)?")
        if n is not None:
            keep = gen.permutation(len(fine))[:n]
            x, fine = x[keep], fine[keep]
            coarse = coarse[keep] if coarse is not None else None
        y = fine if labels == "fine" else coarse
        splits.append(Split(torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y)))
    dev = device if isinstance(device, torch.device) else runtime.device(device)
    n_classes = 100 if labels == "fine" else 20
    return Dataset(splits[0].to(dev), splits[1].to(dev), name="cifar100", source="torchvision",
                   classes=[str(i) for i in range(n_classes)],
                   info={"path": str(folder), "n_train": len(splits[0]), "n_test": len(splits[1]),
                         "seed": seed, "labels": labels, "fine_to_coarse": mapping})


# ---------------------------------------------------------------------------
# MVTec AD (industrial anomaly detection; full tier of the anomaly chapters)
# ---------------------------------------------------------------------------

MVTEC_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
                    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper")
MVTEC_DIR = "mvtec_ad"


def _read_image(path: Path, size: int, mode: str) -> torch.Tensor:
    """One PNG as float32 in [0, 1], resized to ``size`` (bilinear for RGB, nearest for masks)."""
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert(mode).resize((size, size), Image.BILINEAR if mode == "RGB" else Image.NEAREST)
        arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1) if arr.ndim == 3 else torch.from_numpy(arr)[None]


def mvtec_ad(root: str | Path | None, category: str, size: int = 256, fold: int | None = None,
             n_folds: int = 5) -> dict[str, torch.Tensor]:
    """One MVTec AD category (Bergmann et al., CVPR 2019) from its on-disk layout.

    ``root/<category>/train/good/*.png`` (normal training images), ``test/<defect>/*.png``
    (``good`` = normal) and ``ground_truth/<defect>/<name>_mask.png``. ``root=None`` reads
    ``$REPLIBOOK_DATA/mvtec_ad``. With ``fold`` set, the normal training images are split into
    ``n_folds`` folds (sklearn ``KFold(shuffle=True, random_state=0)``, as the official code of
    Rippel et al. 2020) and fold ``fold`` is held out; ``fold=None`` keeps all of them.
    Images are resized to ``size`` (RGB in [0, 1]; masks nearest-neighbour, binarised).

    Returns ``{"train": (N, 3, S, S), "test": (M, 3, S, S), "labels": (M,), "masks": (M, 1, S, S)}``
    (test images in sorted defect-folder, then file order).
    """
    if root is None:
        root = _root(None, "MVTec AD", "download MVTec AD from "
                     "https://www.mvtec.com/company/research/datasets/mvtec-ad and extract it to "
                     f"$REPLIBOOK_DATA/{MVTEC_DIR}") / MVTEC_DIR
    folder = Path(root).expanduser() / category
    if not (folder / "train" / "good").is_dir():
        raise DatasetMissing(f"MVTec AD category {category!r} not found under {Path(root).expanduser()} "
                             f"(expected {folder}/train/good/). Download MVTec AD from "
                             "https://www.mvtec.com/company/research/datasets/mvtec-ad (free for "
                             "research, registration required), extract it and pass its folder "
                             f"(e.g. $REPLIBOOK_DATA/{MVTEC_DIR})")
    train_files = sorted((folder / "train" / "good").glob("*.png"))
    if fold is not None:
        from sklearn.model_selection import KFold
        splits = list(KFold(n_splits=n_folds, shuffle=True, random_state=0).split(np.zeros(len(train_files))))
        train_files = [train_files[i] for i in splits[fold][0]]
    train = torch.stack([_read_image(p, size, "RGB") for p in train_files])
    images, labels, masks = [], [], []
    for defect_dir in sorted(p for p in (folder / "test").iterdir() if p.is_dir()):
        for path in sorted(defect_dir.glob("*.png")):
            images.append(_read_image(path, size, "RGB"))
            normal = defect_dir.name == "good"
            labels.append(0 if normal else 1)
            mask_path = folder / "ground_truth" / defect_dir.name / f"{path.stem}_mask.png"
            masks.append(torch.zeros(1, size, size) if normal or not mask_path.exists()
                         else (_read_image(mask_path, size, "L") > 0.5).float())
    return {"train": train, "test": torch.stack(images), "labels": torch.tensor(labels),
            "masks": torch.stack(masks)}
