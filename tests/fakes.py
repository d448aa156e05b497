"""Tiny fake copies of real dataset formats, written into a temporary folder.

Each writer produces files in exactly the on-disk layout the real dataset
uses (torchvision's CIFAR-10 pickles, the CIFAR-10 JPEG mirror zip, MNIST IDX
files) but with a handful of images whose pixels follow a known pattern, so
tests can check that a loader decodes layout, channel order and labels
correctly without the real data or a network.
"""
from __future__ import annotations

import gzip
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


# ---------------------------------------------------------------------------
# CIFAR-10, torchvision layout: <root>/cifar-10-batches-py/{data_batch_1..5,test_batch}
# ---------------------------------------------------------------------------

def cifar_pattern(image_id: int) -> np.ndarray:
    """The fake CIFAR image number ``image_id`` (< 256): (3, 32, 32) uint8.

    Red encodes the row (8 * row), green the column (8 * col) and blue is the
    constant ``image_id``, so a decoded image reveals both its identity and
    whether rows, columns and channels came out in the right order.
    """
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    return np.stack([rows * 8, cols * 8, np.full((32, 32), image_id)]).astype(np.uint8)


def write_cifar10_pickles(root: Path, per_batch: int = 6, n_test: int = 10) -> dict[str, np.ndarray]:
    """Write all five train batches and the test batch with a few images each.

    Image ids run 0, 1, 2, ... over train batches 1..5 and then the test
    batch; the label of image ``i`` is ``i % 10``.

    Returns:
        {"train_x": (5*per_batch, 3, 32, 32) uint8, "train_y", "test_x", "test_y"}
        in file order, as the loader should see them before shuffling.
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    next_id = 0
    expected: dict[str, list] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    batches = [(f"data_batch_{b}", per_batch, "train") for b in range(1, 6)] + [("test_batch", n_test, "test")]
    for name, count, split in batches:
        ids = np.arange(next_id, next_id + count)
        next_id += count
        images = np.stack([cifar_pattern(int(i)) for i in ids])
        labels = [int(i % 10) for i in ids]
        # The real files are Python-2 pickles of a dict with str keys; rows are
        # 3072 bytes (the red plane, then green, then blue).
        entry = {"batch_label": f"fake {name}", "labels": labels,
                 "data": images.reshape(count, 3 * 32 * 32),
                 "filenames": [f"fake_{i}.png" for i in ids]}
        with open(folder / name, "wb") as handle:
            pickle.dump(entry, handle, protocol=2)
        expected[f"{split}_x"].append(images)
        expected[f"{split}_y"].append(np.asarray(labels, dtype=np.int64))
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": CIFAR10_CLASSES, "num_cases_per_batch": per_batch}, handle, protocol=2)
    return {k: np.concatenate(v) for k, v in expected.items()}


# ---------------------------------------------------------------------------
# CIFAR-10, JPEG mirror: <root>/cifar10-jpeg/cifar10-jpeg.zip with {train,test}/<class>/NNNN.jpg
# ---------------------------------------------------------------------------

def mirror_colour(split: str, label: int, k: int) -> tuple[int, int, int]:
    """The flat RGB colour of fake mirror image ``k`` of class ``label`` in ``split``.

    Flat colours survive JPEG compression almost exactly (a few grey levels),
    so tests can compare decoded pixels with a small tolerance.
    """
    return (20 + 20 * label, 200 - 15 * k, 60 if split == "train" else 180)


def write_cifar10_jpeg_zip(root: Path, per_class_train: int = 3, per_class_test: int = 2,
                           variant: int = 0) -> Path:
    """Write ``cifar10-jpeg/cifar10-jpeg.zip`` in the mirror's layout (uncompressed members).

    ``variant`` changes one image's colour slightly so tests can make a zip
    with different content (a different sha256) at the same path.

    Returns:
        the zip's path.
    """
    path = Path(root) / "cifar10-jpeg" / "cifar10-jpeg.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for split, per_class in (("train", per_class_train), ("test", per_class_test)):
            for label, name in enumerate(CIFAR10_CLASSES):
                for k in range(per_class):
                    colour = mirror_colour(split, label, k)
                    if variant and split == "train" and label == 0 and k == 0:
                        colour = (colour[0] + variant, colour[1], colour[2])
                    image = Image.new("RGB", (32, 32), colour)
                    buffer = io.BytesIO()
                    image.save(buffer, format="JPEG", quality=75)
                    archive.writestr(f"{split}/{name}/{k:04d}.jpg", buffer.getvalue())
    return path


# ---------------------------------------------------------------------------
# MNIST / Fashion-MNIST IDX files: <root>/<MNIST|FashionMNIST>/raw/...
# ---------------------------------------------------------------------------

def mnist_pattern(image_id: int) -> np.ndarray:
    """Fake 28x28 digit ``image_id``: (image_id + 28*row + col) mod 256, uint8."""
    return ((image_id + np.arange(28 * 28)) % 256).reshape(28, 28).astype(np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file: 0, 0, type 0x08, ndim, big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist_idx(root: Path, folder: str = "MNIST", n_train: int = 30, n_test: int = 20,
                    gz: bool = False) -> dict[str, np.ndarray]:
    """Write the four IDX files of torchvision's layout, plain or gzipped.

    Train images have ids 0..n_train-1, test images n_train.., label = id % 10.

    Returns:
        {"train_x": (n_train, 28, 28) uint8, "train_y", "test_x", "test_y"} in file order.
    """
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    train_ids, test_ids = np.arange(n_train), np.arange(n_train, n_train + n_test)
    arrays = {
        "train_x": np.stack([mnist_pattern(int(i)) for i in train_ids]),
        "train_y": (train_ids % 10).astype(np.uint8),
        "test_x": np.stack([mnist_pattern(int(i)) for i in test_ids]),
        "test_y": (test_ids % 10).astype(np.uint8),
    }
    names = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
             "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
    for key, name in names.items():
        payload = idx_bytes(arrays[key])
        if gz:
            (raw / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (raw / name).write_bytes(payload)
    return arrays
