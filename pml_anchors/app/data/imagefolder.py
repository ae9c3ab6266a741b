"""``imagefolder``: torchvision's ``ImageFolder``, ``root/train`` + ``root/test`` or one folder of class sub-folders
(the CUB-200 / Cars-196 layout), with ImageNet-sized transforms on request."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .containers import DatasetSplits, LabeledSubset, subset
from .splits import make_splits, stratified_split

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "build_imagefolder", "imagefolder_transforms"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagefolder_transforms(image_size: int, augment: bool, resize_size: int):
    """``(train, eval)`` torchvision transforms of RGB PIL images: eval resizes the shorter side to ``resize_size``
    and centre-crops ``image_size``; ``augment`` trains on RandomResizedCrop(``image_size``) + horizontal flips
    (otherwise train = eval). Both end in ToTensor + ImageNet normalisation."""
    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    eval_tf = T.Compose([T.Resize(resize_size), T.CenterCrop(image_size), *norm])
    if not augment:
        return eval_tf, eval_tf
    train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), *norm])
    return train_tf, eval_tf


def _relabel_folder(ds, class_names: list[str]) -> Dataset:
    """``ImageFolder`` ``ds`` relabelled into the label space ``class_names``."""
    pos = {n: i for i, n in enumerate(class_names)}
    labels = [pos[ds.classes[t]] for t in ds.targets]
    return LabeledSubset(ds, torch.arange(len(labels)), labels)


def build_imagefolder(
    *,
    data_root=None,
    protocol: str,
    seed: int,
    download: bool = False,
    image_size: int = 64,
    augment: bool = False,
    resize_size: int | None = None,
    test_fraction: float = 0.25,
    num_train_classes: int | None = None,
    open_set_test: str | None = None,
) -> DatasetSplits:
    """torchvision ``ImageFolder``: ``root/{train,test}/<class>/*`` or ``root/<class>/*``.

    Images are resized (shorter side) to ``resize_size`` (default ``image_size``) and centre-cropped to
    ``image_size`` (64 by default for CPU; pass 224 for ImageNet ResNets), converted with ToTensor and
    ImageNet-normalised; ``augment=True`` uses RandomResizedCrop + horizontal flip for training. The Proxy Anchor
    paper's official ResNet transforms are ``image_size=224, resize_size=256, augment=True``. The splits' ``info``
    records the sizes and the normalisation (``model.data_info`` of :func:`pml_anchors.load_trained`).

    Single-folder layout: ``same_class`` splits every class ``test_fraction`` / rest by ``seed``;
    ``open_set`` trains on all images of the first half of the classes (sorted by folder name)
    and tests on all images of the rest (the CUB-200 / Cars-196 protocol). Split layout:
    ``same_class`` needs the test classes to be training classes; ``open_set`` uses disjoint
    train/test folders as they are, otherwise the first half of all classes from ``train/`` and
    the rest from ``test/`` (``open_set_test="all"`` also adds ``train/`` images of those).
    """
    if data_root is None:
        raise ValueError(
            "dataset 'imagefolder' needs data_root: a folder with train/ and test/ sub-folders of class "
            "folders, or a single folder of class sub-folders (CUB-200 / Cars-196 layout)"
        )
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"ImageFolder root {root} does not exist or is not a directory (pass the image folder as data_root, "
            "or --data-root on the command line)"
        )
    from torchvision import datasets

    resize_size = int(image_size) if resize_size is None else int(resize_size)
    if resize_size < int(image_size):
        raise ValueError(f"resize_size ({resize_size}) must be at least image_size ({image_size}), the centre crop")
    train_tf, eval_tf = imagefolder_transforms(int(image_size), augment, resize_size)
    shape = (3, int(image_size), int(image_size))
    sizes: dict[str, object] = {"image_size": int(image_size), "resize_size": resize_size, "augment": bool(augment)}
    sizes.update(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    split_layout = (root / "train").is_dir() and (root / "test").is_dir()
    splits_of = functools.partial(make_splits, name="imagefolder", protocol=protocol, seed=seed, input_shape=shape)
    if split_layout:
        train_ds = datasets.ImageFolder(str(root / "train"), transform=train_tf)
        test_ds = datasets.ImageFolder(str(root / "test"), transform=eval_tf)
        names = sorted(set(train_ds.classes) | set(test_ds.classes))
        train_eval = None
        if protocol == "open_set" and open_set_test == "all":
            train_eval = _relabel_folder(datasets.ImageFolder(str(root / "train"), transform=eval_tf), names)
        return splits_of(
            train_pool=_relabel_folder(train_ds, names),
            test_pool=_relabel_folder(test_ds, names),
            train_pool_eval=train_eval,
            class_names=names,
            num_train_classes=num_train_classes,
            open_set_test=open_set_test or "test",
            info={"root": str(root), "layout": "train/test", **sizes},
        )
    train_ds = datasets.ImageFolder(str(root), transform=train_tf)
    eval_ds = train_ds if train_tf is eval_tf else datasets.ImageFolder(str(root), transform=eval_tf)
    labels = torch.as_tensor(train_ds.targets, dtype=torch.long)
    info = {"root": str(root), "layout": "single", **sizes}
    if protocol == "same_class":
        tr_idx, te_idx = stratified_split(labels, test_fraction, seed)
        train_pool, test_pool = subset(train_ds, tr_idx), subset(eval_ds, te_idx)
    else:  # open_set: all images of unseen classes form the test set
        train_pool, test_pool = train_ds, eval_ds
    return splits_of(
        train_pool=train_pool,
        test_pool=test_pool,
        class_names=list(train_ds.classes),
        num_train_classes=num_train_classes,
        open_set_test="test",
        info=info,
    )
