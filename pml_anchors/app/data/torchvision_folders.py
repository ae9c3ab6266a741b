"""``food101`` and ``caltech256`` through torchvision: image files read per item, with imagefolder's ImageNet-sized
transforms (``image_size``, ``resize_size``, ``augment``; 64 pixels unaugmented by default, sized for a CPU)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .containers import DatasetSplits, LabeledSubset, subset
from .downloads import guarded_download
from .imagefolder import IMAGENET_MEAN, IMAGENET_STD, imagefolder_transforms
from .splits import make_splits, stratified_split
from .torchvision_sets import checked_root, data_root_path

__all__ = ["CALTECH256_CLUTTER", "build_caltech256", "build_food101"]

#: Caltech-256's background category, not one of its 256 object classes
CALTECH256_CLUTTER = "257.clutter"


def _sized_transforms(image_size: int, resize_size: int | None, augment: bool):
    """imagefolder's (train, eval) transforms and the ``info`` entries that record them."""
    image_size = int(image_size)
    resize_size = image_size if resize_size is None else int(resize_size)
    if image_size < 1 or resize_size < image_size:
        raise ValueError(
            f"need 1 <= image_size <= resize_size (the centre crop of the resized image); got image_size={image_size}, "
            f"resize_size={resize_size}"
        )
    train_tf, eval_tf = imagefolder_transforms(image_size, augment, resize_size)
    info = {"image_size": image_size, "resize_size": resize_size, "augment": bool(augment)}
    return train_tf, eval_tf, {**info, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def _labelled(ds, labels) -> LabeledSubset:
    """All of ``ds`` with its ``labels`` known up front (these torchvision classes expose neither ``labels`` nor
    ``targets``: without it the labels would be found by decoding every image)."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    return LabeledSubset(ds, torch.arange(len(labels)), labels)


# ------------------------------------------------------------------------------------------------ Food-101


def _check_food101(root: Path, how: str) -> None:
    base = "food-101"
    checked_root("Food-101", root, [f"{base}/meta/train.json", f"{base}/meta/test.json", f"{base}/images"], how)
    for split in ("train", "test"):  # an interrupted extraction lacks whole class folders or their last images
        meta = root / base / "meta" / f"{split}.json"
        try:
            listing = json.loads(meta.read_text())
        except (OSError, ValueError) as error:
            raise OSError(f"Food-101: {meta} is unreadable ({error}); extract food-101.tar.gz again") from error
        ends = [f"{base}/images/{rel}.jpg" for files in listing.values() if files for rel in (files[0], files[-1])]
        missing = [rel for rel in ends if not (root / rel).is_file()]
        if missing:
            raise FileNotFoundError(
                f"Food-101 under {root} is incomplete: {split}.json lists images that are absent, e.g. "
                f"{', '.join(missing[:3])} ({len(missing)} of the first/last image of each class). {how}"
            )


def build_food101(
    *,
    data_root=None,
    protocol: str,
    seed: int,
    download: bool = False,
    image_size: int = 64,
    resize_size: int | None = None,
    augment: bool = False,
    num_train_classes: int | None = None,
    open_set_test: str = "test",
) -> DatasetSplits:
    """torchvision ``Food101`` (``<root>/food-101/{meta,images}``): 750 train / 250 test images of 101 dishes.

    ``same_class``: the official split; ``open_set``: the first 50 dishes (sorted by name) for training, the other
    51 for testing. Transforms as ``imagefolder`` (``image_size``, ``resize_size``, ``augment``).
    """
    from torchvision import datasets

    root = data_root_path(data_root)
    train_tf, eval_tf, sizes = _sized_transforms(image_size, resize_size, augment)
    if download:
        hint = f"Offline, extract food-101.tar.gz (5 GB) into {root} by hand."
        guarded_download("Food-101", root, lambda: datasets.Food101(str(root), download=True), prepare_hint=hint)
    how = (
        f"Pass download=True (the CLI's --download; needs internet) to let torchvision fetch food-101.tar.gz (5 GB) "
        f"into {root}, or extract it there; data_root is the folder that holds food-101/."
    )
    _check_food101(root, how)

    def pool(split: str, transform):
        ds = datasets.Food101(str(root), split=split, transform=transform)
        return _labelled(ds, ds._labels), list(ds.classes)

    (train_pool, classes), (test_pool, _) = pool("train", train_tf), pool("test", eval_tf)
    train_eval = None
    if protocol == "open_set" and open_set_test == "all":
        train_eval = train_pool if train_tf is eval_tf else pool("train", eval_tf)[0]
    return make_splits(
        name="food101",
        protocol=protocol,
        seed=seed,
        train_pool=train_pool,
        test_pool=test_pool,
        train_pool_eval=train_eval,
        class_names=classes,
        input_shape=(3, sizes["image_size"], sizes["image_size"]),
        num_train_classes=num_train_classes,
        open_set_test=open_set_test,
        info={"root": str(root), **sizes},
    )


# --------------------------------------------------------------------------------------------- Caltech-256


def _to_rgb(image):
    """Caltech-256 holds greyscale and CMYK JPEGs; torchvision's ``Caltech256`` returns them as they are."""
    return image.convert("RGB")


def _check_caltech256(root: Path, how: str) -> None:
    """Every category folder is ``NNN.name`` numbered in order, with ``NNN_0001.jpg`` (torchvision builds each file
    name from the folder's position, so a missing folder would surface mid-training as another folder's file)."""
    folder = root / "caltech256" / "256_ObjectCategories"
    checked_root("Caltech-256", root, ["caltech256/256_ObjectCategories"], how)
    categories = sorted(p.name for p in folder.iterdir())
    if not categories:
        raise FileNotFoundError(f"Caltech-256: {folder} is empty. {how}")
    for i, name in enumerate(categories, start=1):
        first = folder / name / f"{i:03d}_0001.jpg"
        if not re.fullmatch(rf"{i:03d}\..+", name) or not (folder / name).is_dir() or not first.is_file():
            raise FileNotFoundError(
                f"Caltech-256 under {root} is incomplete or not the official layout: category {i} of the sorted "
                f"entries of {folder} is {name!r}, expected a folder '{i:03d}.<name>' holding {i:03d}_0001.jpg. {how}"
            )


def build_caltech256(
    *,
    data_root=None,
    protocol: str,
    seed: int,
    download: bool = False,
    image_size: int = 64,
    resize_size: int | None = None,
    augment: bool = False,
    test_fraction: float | None = None,
    clutter: bool = False,
    num_train_classes: int | None = None,
) -> DatasetSplits:
    """torchvision ``Caltech256`` (``<root>/caltech256/256_ObjectCategories/NNN.name/NNN_MMMM.jpg``).

    The 256 object classes (``clutter=True`` keeps the background category ``257.clutter`` as a 257th); names
    without the number (``001.ak47`` → ``ak47``). It has no official split: ``same_class`` holds out
    ``test_fraction`` (default 0.25) of every class by ``seed`` (:func:`stratified_split`); ``open_set`` trains on all images of
    the first half of the classes and tests on all images of the rest. Transforms as ``imagefolder``.
    """
    from torchvision import datasets

    if protocol == "open_set" and test_fraction is not None:
        raise ValueError(
            "caltech256: test_fraction only applies to protocol='same_class' (open_set tests on all "
            "images of the unseen classes)"
        )
    test_fraction = 0.25 if test_fraction is None else float(test_fraction)
    root = data_root_path(data_root)
    train_tf, eval_tf, sizes = _sized_transforms(image_size, resize_size, augment)
    if download:
        hint = f"Offline, extract 256_ObjectCategories.tar (1.2 GB) into {root / 'caltech256'} by hand."
        guarded_download("Caltech-256", root, lambda: datasets.Caltech256(str(root), download=True), prepare_hint=hint)
    how = (
        "Pass download=True (the CLI's --download; needs internet) to let torchvision fetch 256_ObjectCategories.tar "
        f"(1.2 GB) into {root / 'caltech256'}, or extract it there; data_root is the folder that holds caltech256/."
    )
    _check_caltech256(root, how)  # before torchvision, which would create caltech256/ in data_root
    train_ds = datasets.Caltech256(str(root), transform=_rgb_then(train_tf))
    eval_ds = train_ds if train_tf is eval_tf else datasets.Caltech256(str(root), transform=_rgb_then(eval_tf))
    labels = torch.as_tensor(train_ds.y, dtype=torch.long)
    kept = torch.arange(len(labels))
    if not clutter and CALTECH256_CLUTTER in train_ds.categories:
        kept = torch.nonzero(labels != train_ds.categories.index(CALTECH256_CLUTTER)).flatten()
    train_all, eval_all = subset(_labelled(train_ds, labels), kept), subset(_labelled(eval_ds, labels), kept)
    if protocol == "same_class":
        tr_idx, te_idx = stratified_split(labels[kept], test_fraction, seed)
        train_pool, test_pool = subset(train_all, tr_idx), subset(eval_all, te_idx)
    else:
        train_pool, test_pool = train_all, eval_all
    return make_splits(
        name="caltech256",
        protocol=protocol,
        seed=seed,
        train_pool=train_pool,
        test_pool=test_pool,
        class_names=[name.split(".", 1)[1] for name in train_ds.categories],
        input_shape=(3, sizes["image_size"], sizes["image_size"]),
        num_train_classes=num_train_classes,
        info={"root": str(root), "clutter": bool(clutter), "test_fraction": test_fraction, **sizes},
    )


def _rgb_then(transform):
    from torchvision import transforms as T

    return T.Compose([_to_rgb, transform])
