"""Tiny datasets written in the official on-disk layouts that torchvision reads after a download.

CIFAR pickles (``cifar-10-batches-py``, ``cifar-100-python``), SVHN ``.mat`` files, ``food-101/{meta,images}``,
``caltech256/256_ObjectCategories``, and MNIST-format IDX files (``FashionMNIST/raw``, ``KMNIST/raw``,
``EMNIST/raw``). Images are seeded random pixels; labels cycle through the classes. Each CIFAR/SVHN writer returns
the files' MD5 sums, for tests to put in place of torchvision's (see :func:`use_md5`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _pixels(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _pickle(path: Path, obj: dict) -> str:
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return _md5(path)


def write_cifar10(root: Path, per_class_batch: int = 1, test_per_class: int = 2, seed: int = 0) -> dict:
    """``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``; returns the CIFAR10 md5 attributes."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)

    def batch(name: str, per_class: int) -> list:
        labels = [i % 10 for i in range(10 * per_class)]
        entry = {
            "batch_label": f"{name} of 6",
            "labels": labels,
            "data": _pixels(rng, len(labels), 3072),
            "filenames": [f"img_{name}_{i}.png" for i in range(len(labels))],
        }
        return [name, _pickle(base / name, entry)]

    train = [batch(f"data_batch_{i}", per_class_batch) for i in range(1, 6)]
    test = [batch("test_batch", test_per_class)]
    meta = {"label_names": CIFAR10_NAMES, "num_cases_per_batch": 10 * per_class_batch, "num_vis": 3072}
    meta_md5 = _pickle(base / "batches.meta", meta)
    return {
        "train_list": train,
        "test_list": test,
        "meta": {"filename": "batches.meta", "key": "label_names", "md5": meta_md5},
    }


def cifar100_names() -> list[str]:
    return [f"fine_{i:02d}" for i in range(100)]


def write_cifar100(root: Path, train_per_class: int = 2, test_per_class: int = 1, seed: int = 0) -> dict:
    """``root/cifar-100-python/{train,test,meta}`` (fine and coarse labels); returns the CIFAR100 md5 attributes."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-100-python"
    base.mkdir(parents=True)

    def split(name: str, per_class: int) -> list:
        fine = [i % 100 for i in range(100 * per_class)]
        entry = {
            "filenames": [f"img_{i}.png" for i in range(len(fine))],
            "batch_label": f"{name} batch 1 of 1",
            "fine_labels": fine,
            "coarse_labels": [c // 5 for c in fine],
            "data": _pixels(rng, len(fine), 3072),
        }
        return [name, _pickle(base / name, entry)]

    train, test = [split("train", train_per_class)], [split("test", test_per_class)]
    meta = {"fine_label_names": cifar100_names(), "coarse_label_names": [f"coarse_{i:02d}" for i in range(20)]}
    meta_md5 = _pickle(base / "meta", meta)
    return {
        "train_list": train,
        "test_list": test,
        "meta": {"filename": "meta", "key": "fine_label_names", "md5": meta_md5},
    }


def write_svhn(root: Path, n_train: int = 30, n_test: int = 20, seed: int = 0) -> dict:
    """``root/{train,test}_32x32.mat``: ``X`` (32, 32, 3, N) uint8, ``y`` (N, 1) with label 10 for the digit 0.

    Returns torchvision's ``SVHN.split_list`` with these files' md5 sums.
    """
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    split_list = {}
    for split, n in (("train", n_train), ("test", n_test)):
        digits = np.arange(n) % 10
        y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
        path = root / f"{split}_32x32.mat"
        savemat(str(path), {"X": _pixels(rng, 32, 32, 3, n), "y": y})
        split_list[split] = [f"http://ufldl.stanford.edu/housenumbers/{path.name}", path.name, _md5(path)]
    split_list["extra"] = ["http://ufldl.stanford.edu/housenumbers/extra_32x32.mat", "extra_32x32.mat", "0" * 32]
    return split_list


def _jpeg(path: Path, rng: np.random.Generator, mode: str = "RGB") -> None:
    from PIL import Image

    shape = (10, 12, 3) if mode == "RGB" else (10, 12)
    Image.fromarray(_pixels(rng, *shape), mode=mode).save(path, format="JPEG")


def write_food101(root: Path, classes: list[str], n_train: int = 3, n_test: int = 2, seed: int = 0) -> Path:
    """``root/food-101/meta/{train,test}.json, classes.txt, labels.txt`` and ``images/<class>/<id>.jpg``."""
    rng = np.random.default_rng(seed)
    base = root / "food-101"
    (base / "meta").mkdir(parents=True)
    listing: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    image_id = 1000
    for c in classes:
        (base / "images" / c).mkdir(parents=True)
        for split, n in (("train", n_train), ("test", n_test)):
            ids = []
            for _ in range(n):
                image_id += 7
                _jpeg(base / "images" / c / f"{image_id}.jpg", rng)
                ids.append(f"{c}/{image_id}")
            listing[split][c] = ids
    for split, content in listing.items():
        (base / "meta" / f"{split}.json").write_text(json.dumps(content))
        (base / "meta" / f"{split}.txt").write_text("".join(f"{i}\n" for ids in content.values() for i in ids))
    (base / "meta" / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    (base / "meta" / "labels.txt").write_text("".join(f"{c.replace('_', ' ').capitalize()}\n" for c in classes))
    return base


def write_caltech256(root: Path, names: list[str], per_class: int = 4, seed: int = 0) -> Path:
    """``root/caltech256/256_ObjectCategories/NNN.<name>/NNN_MMMM.jpg``; the first image of each class greyscale."""
    rng = np.random.default_rng(seed)
    base = root / "caltech256" / "256_ObjectCategories"
    for i, name in enumerate(names, start=1):
        folder = base / f"{i:03d}.{name}"
        folder.mkdir(parents=True)
        for j in range(1, per_class + 1):
            _jpeg(folder / f"{i:03d}_{j:04d}.jpg", rng, mode="L" if j == 1 else "RGB")
    return base


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """One IDX file (images ``(N, H, W)`` or labels ``(N,)``, uint8), gzipped as ``path.gz`` if ``gz``."""
    magic = 2051 if array.ndim == 3 else 2049
    data = (
        struct.pack(">I", magic)
        + b"".join(struct.pack(">I", d) for d in array.shape)
        + array.astype(np.uint8).tobytes()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def write_idx_set(
    folder: Path,
    files: tuple[str, ...],
    *,
    n_train: int = 40,
    n_test: int = 20,
    num_classes: int = 10,
    first_label: int = 0,
    gz: bool = False,
    seed: int = 0,
) -> list[np.ndarray]:
    """The four IDX ``files`` (train images, train labels, test images, test labels) into ``folder``.

    Labels cycle ``first_label .. first_label + num_classes - 1``. Returns the arrays as written.
    """
    rng = np.random.default_rng(seed)
    arrays = []
    for (images, labels), n in zip((files[:2], files[2:]), (n_train, n_test)):
        x, y = _pixels(rng, n, 28, 28), (np.arange(n) % num_classes + first_label).astype(np.uint8)
        write_idx(folder / images, x, gz)
        write_idx(folder / labels, y, gz)
        arrays += [x, y]
    return arrays


def use_md5(monkeypatch, cls, sums: dict) -> None:
    """Make torchvision's ``cls`` expect the fixture's md5 sums (``train_list``/``test_list``/``meta`` or
    ``split_list``); the real sums stay in place for every other test."""
    for attr, value in sums.items():
        monkeypatch.setattr(cls, attr, value)
