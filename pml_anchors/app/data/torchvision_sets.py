"""``cifar10``, ``cifar100`` and ``svhn`` through torchvision (3×32×32), read once into ``uint8`` tensors.

Each root is checked before torchvision opens it, so a missing, partial or damaged dataset is one error naming the
files expected where (torchvision still verifies its MD5 sums). Items are normalised with the training split's
per-channel mean/std; ``augment=True`` adds the standard training augmentation of the papers: a random 32-pixel
crop of the image padded by 4 pixels, and (CIFAR only: SVHN's digits are not mirror-symmetric) a horizontal flip.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .containers import DatasetSplits, TensorImageDataset, default_data_root
from .downloads import guarded_download
from .pixels import AugmentedTensorDataset, channel_stats
from .splits import make_splits

__all__ = ["build_cifar10", "build_cifar100", "build_svhn", "checked_root", "data_root_path", "open_checked"]


def data_root_path(data_root) -> Path:
    """``data_root`` as a path, or :func:`default_data_root` when it is ``None``."""
    return Path(data_root).expanduser() if data_root is not None else default_data_root()


def checked_root(title: str, root: Path, expected: Sequence[str], how: str) -> None:
    """Raise ``FileNotFoundError`` naming the ``expected`` paths (relative to ``root``) that are absent."""
    missing = [rel for rel in expected if not (root / rel).exists()]
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise FileNotFoundError(
            f"{title} not found under {root}: expected {', '.join(expected)}; missing: {shown}. {how}"
        )


def open_checked(title: str, root: Path, build: Callable[[], Any], sums: Sequence[tuple[str, str]]) -> Any:
    """``build()`` (a torchvision dataset), its "not found or corrupted" ``RuntimeError`` turned into an ``OSError``
    that names the files among ``sums`` (relative path, MD5) whose checksum does not match."""
    try:
        return build()
    except RuntimeError as error:
        from torchvision.datasets.utils import check_integrity

        bad = [rel for rel, md5 in sums if not check_integrity(str(root / rel), md5)]
        raise OSError(
            f"{title} under {root} is damaged or not the official release: MD5 mismatch of {', '.join(bad) or '?'} "
            f"(torchvision: {error}). Delete those files and pass --download, or extract the official archive there."
        ) from error


@dataclass(frozen=True)
class _TensorSpec:
    name: str
    title: str
    tv_class: str
    archive: str  # what --download fetches, for messages
    flip: bool  # horizontal flips in the training augmentation


_CIFAR10 = _TensorSpec("cifar10", "CIFAR-10", "CIFAR10", "cifar-10-python.tar.gz (163 MB)", True)
_CIFAR100 = _TensorSpec("cifar100", "CIFAR-100", "CIFAR100", "cifar-100-python.tar.gz (161 MB)", True)
_SVHN = _TensorSpec("svhn", "SVHN", "SVHN", "train_32x32.mat and test_32x32.mat (182 + 64 MB)", False)


def _files(spec: _TensorSpec, cls) -> list[tuple[str, str]]:
    """(path relative to the root, MD5) of every file torchvision reads, from the class (as it verifies them)."""
    if spec is _SVHN:
        return [(cls.split_list[s][1], cls.split_list[s][2]) for s in ("train", "test")]
    base = cls.base_folder
    listed = [(f"{base}/{name}", md5) for name, md5 in [*cls.train_list, *cls.test_list]]
    return [*listed, (f"{base}/{cls.meta['filename']}", cls.meta["md5"])]


def _open(spec: _TensorSpec, cls, root: Path, train: bool, download: bool):
    if spec is _SVHN:
        return cls(str(root), split="train" if train else "test", download=download)
    return cls(str(root), train=train, download=download)


def _tensors(spec: _TensorSpec, ds) -> tuple[torch.Tensor, torch.Tensor]:
    """``uint8`` images ``(N, 3, 32, 32)`` and labels of an opened torchvision dataset."""
    if spec is _SVHN:  # already (N, C, H, W); digit 0 is label 0
        return torch.from_numpy(ds.data).contiguous(), torch.as_tensor(ds.labels, dtype=torch.long)
    return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)


def _augmentation(flip: bool):
    from torchvision import transforms as T

    steps: list = [T.RandomCrop(32, padding=4)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps)


def _build_tensor_set(
    spec: _TensorSpec,
    *,
    data_root,
    protocol: str,
    seed: int,
    download: bool,
    augment: bool,
    num_train_classes: int | None,
    open_set_test: str,
) -> DatasetSplits:
    from torchvision import datasets

    cls = getattr(datasets, spec.tv_class)
    root = data_root_path(data_root)
    sums = _files(spec, cls)
    if download:
        hint = f"Offline, extract {spec.archive} into {root} by hand."
        opened = guarded_download(
            spec.title, root, lambda: [_open(spec, cls, root, t, True) for t in (True, False)], prepare_hint=hint
        )
    else:
        how = (
            f"Pass download=True (the CLI's --download; needs internet) to let torchvision fetch {spec.archive} "
            f"into {root}, or put the official files there; data_root is the folder that holds them."
        )
        checked_root(spec.title, root, [rel for rel, _ in sums], how)
        opened = [
            open_checked(spec.title, root, functools.partial(_open, spec, cls, root, t, False), sums)
            for t in (True, False)
        ]
    (train_x, train_y), (test_x, test_y) = (_tensors(spec, ds) for ds in opened)
    classes = list(getattr(opened[0], "classes", [str(d) for d in range(10)]))  # SVHN has no names: digits
    mean, std = channel_stats(train_x)
    train_eval = TensorImageDataset(train_x, train_y, mean=mean, std=std)
    train_pool = (
        AugmentedTensorDataset(train_x, train_y, augment=_augmentation(spec.flip), mean=mean, std=std)
        if augment
        else train_eval
    )
    return make_splits(
        name=spec.name,
        protocol=protocol,
        seed=seed,
        train_pool=train_pool,
        test_pool=TensorImageDataset(test_x, test_y, mean=mean, std=std),
        train_pool_eval=train_eval,
        class_names=classes,
        input_shape=(3, 32, 32),
        num_train_classes=num_train_classes,
        open_set_test=open_set_test,
        info={
            "root": str(root),
            "mean": list(mean),
            "std": list(std),
            "augment": bool(augment),
            "augmentation": f"random crop 32, padding 4{', horizontal flip' if spec.flip else ''}" if augment else "",
        },
    )


def build_cifar10(
    *,
    data_root=None,
    protocol: str,
    seed: int,
    download: bool = False,
    augment: bool = False,
    num_train_classes: int | None = None,
    open_set_test: str = "test",
) -> DatasetSplits:
    """torchvision ``CIFAR10`` (``<root>/cifar-10-batches-py/``): 50,000 train / 10,000 test images, 10 classes."""
    return _build_tensor_set(_CIFAR10, **locals())


def build_cifar100(
    *,
    data_root=None,
    protocol: str,
    seed: int,
    download: bool = False,
    augment: bool = False,
    num_train_classes: int | None = None,
    open_set_test: str = "test",
) -> DatasetSplits:
    """torchvision ``CIFAR100`` (``<root>/cifar-100-python/``): 50,000 / 10,000 images, the 100 fine classes."""
    return _build_tensor_set(_CIFAR100, **locals())


def build_svhn(
    *,
    data_root=None,
    protocol: str,
    seed: int,
    download: bool = False,
    augment: bool = False,
    num_train_classes: int | None = None,
    open_set_test: str = "test",
) -> DatasetSplits:
    """torchvision ``SVHN`` (``<root>/{train,test}_32x32.mat``): 73,257 train / 26,032 test digits (``extra`` unused).

    Labels are the digits 0..9 (torchvision maps the files' label 10 to 0); ``augment`` crops but never flips.
    """
    return _build_tensor_set(_SVHN, **locals())
