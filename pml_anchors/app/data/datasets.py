"""Datasets for training and evaluating the anchor/proxy methods.

:func:`load_dataset` returns a :class:`DatasetSplits` whose ``train``/``test`` are torch
datasets yielding ``(image_tensor, int_label)``, exactly what pytorch-metric-learning's trainers
and testers consume. Every dataset exposes its labels as ``dataset.labels`` (a ``LongTensor``,
see :func:`get_labels`), e.g. for ``MPerClassSampler``.

Datasets (:data:`DATASETS`):

``digits``       sklearn's 1,797 8×8 digits, offline, the embedded default (1×8×8).
``mnist``        torchvision MNIST from a local root (1×28×28); see :func:`prepare_mnist_root`.
``imagefolder``  torchvision ``ImageFolder`` (alias ``folder``): ``root/train`` + ``root/test``,
                 or one folder of class sub-folders (CUB-200 / Cars-196 layout).

Protocols (:data:`PROTOCOLS`):

``same_class``  train and test share the classes (digits: stratified split; MNIST: its own
                split; single-folder ImageFolder: stratified per-class split).
``open_set``    the deep-metric-learning protocol: train on the first half of the classes
                (sorted by label; MNIST: digits 0–4), test (query = gallery) on the unseen
                second half. Train labels are ``0..K-1``; test labels are ``K..K+M-1`` (for
                MNIST/digits the original digits 5–9), so they never collide with train labels.
                ``num_classes`` is ``K``, the number of *train* classes (what a loss needs).

Heavy imports (torchvision, scikit-learn, numpy) happen inside the functions that need them.
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from torch.utils.data import ConcatDataset, Dataset

from ...validators import naming_rejected_options
from .mnist_idx import MNIST_FILES, prepare_mnist_root

__all__ = [
    "DATASETS",
    "MNIST_MEAN",
    "MNIST_STD",
    "PROTOCOLS",
    "DatasetSplits",
    "LabeledSubset",
    "TensorImageDataset",
    "available_datasets",
    "default_data_root",
    "get_labels",
    "load_dataset",
    "prepare_mnist_root",
    "register_dataset",
    "subset",
]

PROTOCOLS = ("same_class", "open_set")
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Dataset containers
# --------------------------------------------------------------------------------------------


class TensorImageDataset(Dataset):
    """In-memory images ``(N, C, H, W)`` with integer labels, normalised on the fly.

    ``images`` may be ``uint8`` (scaled by ``scale``, default 1/255) or float. Each item is
    ``((x * scale - mean) / std, int(label))`` with per-channel or scalar ``mean``/``std``.
    Implements ``__getitems__`` so a ``DataLoader`` fetches and normalises a whole batch at once.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | Sequence[int],
        *,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        scale: float | None = None,
    ):
        if images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.mean = mean
        self.std = std
        self.scale = (1.0 / 255.0 if images.dtype == torch.uint8 else 1.0) if scale is None else scale
        self._mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self._std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.scale != 1.0:
            x = x * self.scale
        return (x - self._mean) / self._std

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._normalise(self.images[index]), int(self.labels[index])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self._normalise(self.images[idx])
        return list(zip(x.unbind(0), self.labels[idx].tolist()))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All normalised images (float32) and labels, e.g. for fast full-batch evaluation."""
        return self._normalise(self.images), self.labels.clone()

    def subset(self, indices, labels=None) -> TensorImageDataset:
        """A new dataset with the rows ``indices`` (and optionally new ``labels``)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        new_labels = self.labels[idx] if labels is None else labels
        return TensorImageDataset(self.images[idx], new_labels, mean=self.mean, std=self.std, scale=self.scale)

    def __repr__(self) -> str:
        return f"TensorImageDataset(n={len(self)}, shape={tuple(self.images.shape[1:])})"


class LabeledSubset(Dataset):
    """Items ``indices`` of ``base`` with (possibly remapped) ``labels``: ``(base[i][0], label)``."""

    def __init__(self, base: Dataset, indices, labels):
        self.base = base
        self.indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        self.labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if len(self.indices) != len(self.labels):
            raise ValueError(f"{len(self.indices)} indices but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.base[int(self.indices[index])][0], int(self.labels[index])

    def __repr__(self) -> str:
        return f"LabeledSubset(n={len(self)}, base={type(self.base).__name__})"


def _size(dataset: Dataset) -> int:
    """``len(dataset)``: the datasets here are map-style and sized (torch's ``Dataset`` does not declare ``__len__``)."""
    return len(cast(Sized, dataset))


def get_labels(dataset: Dataset) -> torch.Tensor:
    """Labels of ``dataset`` as a ``LongTensor`` (``.labels``, ``.targets``, or by iterating)."""
    for attr in ("labels", "targets"):
        labels = getattr(dataset, attr, None)
        if labels is not None:
            return torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    return torch.tensor([int(dataset[i][1]) for i in range(_size(dataset))], dtype=torch.long)


def subset(dataset: Dataset, indices, labels=None) -> Dataset:
    """Positions ``indices`` of ``dataset``, keeping a ``.labels`` attribute (optionally new ``labels``)."""
    idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    old = get_labels(dataset)
    if len(idx) == len(old) and torch.equal(idx, torch.arange(len(old))):
        if labels is None or torch.equal(torch.as_tensor(labels, dtype=torch.long), old):
            return dataset  # nothing to select or relabel: avoid copying
    if isinstance(dataset, TensorImageDataset):
        return dataset.subset(idx, labels)
    old = old[idx]
    new = old if labels is None else torch.as_tensor(labels, dtype=torch.long)
    if isinstance(dataset, LabeledSubset):
        return LabeledSubset(dataset.base, dataset.indices[idx], new)
    return LabeledSubset(dataset, idx, new)


def _concat(a: Dataset, b: Dataset) -> Dataset:
    if (
        isinstance(a, TensorImageDataset)
        and isinstance(b, TensorImageDataset)
        and (a.mean, a.std, a.scale) == (b.mean, b.std, b.scale)
        and a.images.dtype == b.images.dtype
    ):
        return TensorImageDataset(
            torch.cat([a.images, b.images]),
            torch.cat([a.labels, b.labels]),
            mean=a.mean,
            std=a.std,
            scale=a.scale,
        )
    labels = torch.cat([get_labels(a), get_labels(b)])
    return LabeledSubset(ConcatDataset([a, b]), torch.arange(len(labels)), labels)


# --------------------------------------------------------------------------------------------
# DatasetSplits
# --------------------------------------------------------------------------------------------


@dataclass
class DatasetSplits:
    """What :func:`load_dataset` returns.

    :ivar train: training dataset, items ``(float tensor of input_shape, int label)``; labels in
        ``0..num_classes-1``.
    :ivar test: evaluation dataset (used as query and gallery), same item format. Under
        ``open_set`` its labels are ``num_classes..`` (unseen classes).
    :ivar num_classes: number of *training* classes — what a loss / proxy count needs.
    :ivar input_shape: ``(C, H, W)`` of one item.
    :ivar name: dataset name as registered (e.g. ``"digits"``).
    :ivar protocol: ``"same_class"`` or ``"open_set"``.
    :ivar class_names: name of every label that occurs, indexed by label (train and test).
    :ivar seed: the seed used for splitting / subsampling.
    """

    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    name: str
    protocol: str = "same_class"
    class_names: tuple[str, ...] = ()
    seed: int = 0
    info: dict = field(default_factory=dict)

    @property
    def train_labels(self) -> torch.Tensor:
        return get_labels(self.train)

    @property
    def test_labels(self) -> torch.Tensor:
        return get_labels(self.test)

    @property
    def num_test_classes(self) -> int:
        return int(torch.unique(self.test_labels).numel())

    @property
    def in_channels(self) -> int:
        return int(self.input_shape[0])

    @property
    def input_size(self) -> int:
        """Height of the input (the inputs are square for every built-in dataset)."""
        return int(self.input_shape[-2])

    @property
    def train_class_names(self) -> tuple[str, ...]:
        return tuple(self.class_names[: self.num_classes])

    @property
    def test_class_names(self) -> tuple[str, ...]:
        return tuple(self.class_names[int(i)] for i in torch.unique(self.test_labels))

    def summary(self) -> str:
        return (
            f"{self.name} [{self.protocol}] train={_size(self.train)} test={_size(self.test)} "
            f"num_classes={self.num_classes} test_classes={self.num_test_classes} input={tuple(self.input_shape)}"
        )


# --------------------------------------------------------------------------------------------
# Splitting helpers
# --------------------------------------------------------------------------------------------


def _stratified_split(labels: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic per-class split; every class keeps ≥ 1 train item (and ≥ 1 test item if it has 2+)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    gen = torch.Generator().manual_seed(int(seed))
    train_idx, test_idx = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_test = int(round(len(idx) * test_fraction))
        n_test = min(max(n_test, 1 if len(idx) > 1 else 0), len(idx) - 1)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    return torch.sort(torch.cat(train_idx)).values, torch.sort(torch.cat(test_idx)).values


def _balanced_limit(labels: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    """Deterministic class-balanced subsample of ``limit`` positions (round-robin over classes)."""
    if limit is None or limit >= len(labels):
        return torch.arange(len(labels))
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    perm = torch.randperm(len(labels), generator=gen)
    plabels = labels[perm]
    rank = torch.empty(len(labels), dtype=torch.long)
    for c in torch.unique(plabels).tolist():
        pos = torch.nonzero(plabels == c).flatten()
        rank[pos] = torch.arange(len(pos))
    order = torch.argsort(rank * (len(labels) + 1) + torch.arange(len(labels)))  # rank, then perm order
    return torch.sort(perm[order[:limit]]).values


def _make_splits(
    *,
    name: str,
    protocol: str,
    seed: int,
    train_pool: Dataset,
    test_pool: Dataset,
    class_names: Sequence[str],
    input_shape: tuple[int, ...],
    train_pool_eval: Dataset | None = None,
    num_train_classes: int | None = None,
    open_set_test: str = "test",
    info: dict | None = None,
) -> DatasetSplits:
    """Apply ``protocol`` to pools whose labels index ``class_names`` (a common label space)."""
    tr_labels, te_labels = get_labels(train_pool), get_labels(test_pool)
    tr_set, te_set = set(tr_labels.tolist()), set(te_labels.tolist())
    info = dict(info or {})
    if protocol == "same_class":
        if num_train_classes is not None:
            raise ValueError("num_train_classes only applies to protocol='open_set'")
        unseen = sorted(te_set - tr_set)
        if unseen:
            absent = [class_names[i] for i in unseen[:5]]
            raise ValueError(
                f"protocol='same_class' but the test split has classes absent from training: {absent}; "
                "use protocol='open_set' for disjoint class sets"
            )
        classes = sorted(tr_set)
        remap = {c: i for i, c in enumerate(classes)}
        train = subset(train_pool, torch.arange(len(tr_labels)), [remap[c] for c in tr_labels.tolist()])
        test = subset(test_pool, torch.arange(len(te_labels)), [remap[c] for c in te_labels.tolist()])
        names = tuple(class_names[c] for c in classes)
        return DatasetSplits(train, test, len(classes), tuple(input_shape), name, protocol, names, seed, info)

    if open_set_test not in ("test", "all"):
        raise ValueError(f"open_set_test must be 'test' or 'all', got {open_set_test!r}")
    if tr_set.isdisjoint(te_set):  # already an open-set split (e.g. disjoint train/ and test/ folders)
        if num_train_classes is not None and num_train_classes != len(tr_set):
            raise ValueError(f"num_train_classes={num_train_classes} but the train split has {len(tr_set)} classes")
        train_classes, test_classes = sorted(tr_set), sorted(te_set)
    else:
        classes = sorted(tr_set | te_set)
        k = len(classes) // 2 if num_train_classes is None else int(num_train_classes)
        if not 1 <= k < len(classes):
            raise ValueError(f"open_set needs 1 <= num_train_classes < {len(classes)} (number of classes), got {k}")
        train_classes, test_classes = classes[:k], classes[k:]
    k = len(train_classes)
    remap = {c: i for i, c in enumerate(train_classes)}
    remap.update({c: k + i for i, c in enumerate(test_classes)})
    tr_sel = torch.nonzero(torch.isin(tr_labels, torch.tensor(train_classes))).flatten()
    train = subset(train_pool, tr_sel, [remap[c] for c in tr_labels[tr_sel].tolist()])
    te_sel = torch.nonzero(torch.isin(te_labels, torch.tensor(test_classes))).flatten()
    test = subset(test_pool, te_sel, [remap[c] for c in te_labels[te_sel].tolist()])
    if open_set_test == "all" and train_pool_eval is not None:
        extra_sel = torch.nonzero(torch.isin(tr_labels, torch.tensor(test_classes))).flatten()
        if len(extra_sel):
            extra = subset(train_pool_eval, extra_sel, [remap[c] for c in tr_labels[extra_sel].tolist()])
            test = _concat(extra, test)
    if _size(test) == 0:
        raise ValueError("open_set: the test split has no items of the unseen classes")
    names = tuple(class_names[c] for c in train_classes + test_classes)
    return DatasetSplits(train, test, k, tuple(input_shape), name, protocol, names, seed, info)


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def default_data_root() -> Path:
    """``$PML_ANCHORS_DATA`` if set, else ``~/.cache/pml_anchors``."""
    env = os.environ.get("PML_ANCHORS_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pml_anchors"


def _build_digits(
    *,
    data_root=None,
    protocol: str,
    seed: int,
    download: bool = False,
    test_fraction: float = 0.25,
    num_train_classes: int | None = None,
    open_set_test: str = "test",
) -> DatasetSplits:
    """sklearn ``load_digits``: 8×8 values 0..16 → [0, 1] → standardised with train statistics."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    train_idx, test_idx = _stratified_split(labels, test_fraction, seed)
    mean = float(images[train_idx].mean())
    std = float(images[train_idx].std())
    images = (images - mean) / std
    train_pool = TensorImageDataset(images[train_idx], labels[train_idx])
    test_pool = TensorImageDataset(images[test_idx], labels[test_idx])
    return _make_splits(
        name="digits",
        protocol=protocol,
        seed=seed,
        train_pool=train_pool,
        test_pool=test_pool,
        train_pool_eval=train_pool,
        class_names=[str(int(c)) for c in bunch.target_names],
        input_shape=(1, 8, 8),
        num_train_classes=num_train_classes,
        open_set_test=open_set_test,
        info={"mean": mean, "std": std},
    )


def _mnist_missing_message(root: Path) -> str:
    raw = root / "MNIST" / "raw"
    msg = (
        f"MNIST not found: expected the uncompressed IDX files {', '.join(MNIST_FILES)} in {raw}. "
        "Prepare that root offline with pml_anchors.app.data.prepare_mnist_root(idx_dir, root) from a folder of "
        "(gzipped) IDX files, or pass download=True (the CLI's --download) to let torchvision download MNIST "
        "(needs internet)."
    )
    if root.is_dir() and any((root / f).exists() or (root / (f + ".gz")).exists() for f in MNIST_FILES):
        msg += (
            f" {root} itself holds IDX files: call prepare_mnist_root({str(root)!r}, <cache dir>) and pass the "
            "cache dir as data_root."
        )
    return msg


def _build_mnist(
    *,
    data_root=None,
    protocol: str,
    seed: int,
    download: bool = False,
    num_train_classes: int | None = None,
    open_set_test: str = "test",
) -> DatasetSplits:
    """torchvision MNIST read once into uint8 tensors, normalised on the fly (0.1307 / 0.3081)."""
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    raw = root / "MNIST" / "raw"
    if not download and not all((raw / f).is_file() for f in MNIST_FILES):
        raise FileNotFoundError(_mnist_missing_message(root))
    from torchvision import datasets

    pools = []
    for train in (True, False):
        ds = datasets.MNIST(str(root), train=train, download=download)
        pools.append(TensorImageDataset(ds.data.unsqueeze(1), ds.targets, mean=MNIST_MEAN, std=MNIST_STD))
    return _make_splits(
        name="mnist",
        protocol=protocol,
        seed=seed,
        train_pool=pools[0],
        test_pool=pools[1],
        train_pool_eval=pools[0],
        class_names=[str(i) for i in range(10)],
        input_shape=(1, 28, 28),
        num_train_classes=num_train_classes,
        open_set_test=open_set_test,
        info={"root": str(root), "mean": MNIST_MEAN, "std": MNIST_STD},
    )


def _imagefolder_transforms(image_size: int, augment: bool, resize_size: int):
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


def _build_imagefolder(
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
    train_tf, eval_tf = _imagefolder_transforms(int(image_size), augment, resize_size)
    shape = (3, int(image_size), int(image_size))
    sizes: dict[str, object] = {"image_size": int(image_size), "resize_size": resize_size, "augment": bool(augment)}
    sizes.update(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    split_layout = (root / "train").is_dir() and (root / "test").is_dir()
    make_splits = functools.partial(_make_splits, name="imagefolder", protocol=protocol, seed=seed, input_shape=shape)
    if split_layout:
        train_ds = datasets.ImageFolder(str(root / "train"), transform=train_tf)
        test_ds = datasets.ImageFolder(str(root / "test"), transform=eval_tf)
        names = sorted(set(train_ds.classes) | set(test_ds.classes))
        train_eval = None
        if protocol == "open_set" and open_set_test == "all":
            train_eval = _relabel_folder(datasets.ImageFolder(str(root / "train"), transform=eval_tf), names)
        return make_splits(
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
        tr_idx, te_idx = _stratified_split(labels, test_fraction, seed)
        train_pool, test_pool = subset(train_ds, tr_idx), subset(eval_ds, te_idx)
    else:  # open_set: all images of unseen classes form the test set
        train_pool, test_pool = train_ds, eval_ds
    return make_splits(
        train_pool=train_pool,
        test_pool=test_pool,
        class_names=list(train_ds.classes),
        num_train_classes=num_train_classes,
        open_set_test="test",
        info=info,
    )


#: name → builder ``(*, data_root, protocol, seed, download, **kwargs) -> DatasetSplits``.
DATASETS: dict[str, Callable[..., DatasetSplits]] = {
    "digits": _build_digits,
    "mnist": _build_mnist,
    "imagefolder": _build_imagefolder,
    "folder": _build_imagefolder,
}


def register_dataset(name: str, builder: Callable[..., DatasetSplits], *, overwrite: bool = False) -> None:
    """Add a dataset builder ``builder(*, data_root, protocol, seed, download, **kw) -> DatasetSplits``."""
    if name in DATASETS and not overwrite:
        raise ValueError(f"dataset {name!r} is already registered")
    DATASETS[name] = builder


def available_datasets() -> list[str]:
    return sorted(DATASETS)


def load_dataset(
    name: str = "digits",
    *,
    data_root: str | os.PathLike | None = None,
    protocol: str = "same_class",
    seed: int = 0,
    download: bool = False,
    limit: int | None = None,
    test_limit: int | None = None,
    **kwargs,
) -> DatasetSplits:
    """Load dataset ``name`` (a key of :data:`DATASETS`) under ``protocol``.

    :param data_root: ``mnist``: a torchvision root holding ``MNIST/raw/*-ubyte`` (default
        :func:`default_data_root`); ``imagefolder``: the image folder (required); ``digits``: unused.
    :param protocol: ``"same_class"`` or ``"open_set"`` (see the module docstring).
    :param seed: seed of the deterministic splits and subsampling.
    :param download: ``mnist`` only: let torchvision download into ``data_root`` (needs internet).
    :param limit: keep only this many training items (deterministic, class-balanced).
    :param test_limit: same for the test set.
    :param kwargs: builder options: ``test_fraction`` (digits, single-folder imagefolder),
        ``num_train_classes`` and ``open_set_test`` (``"test"``: unseen classes from the test split
        only — default; ``"all"``: from both splits), ``image_size`` and ``augment`` (imagefolder).
    """
    key = str(name).lower()
    if key not in DATASETS:
        close = difflib.get_close_matches(key, DATASETS, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"Unknown dataset {name!r}.{hint} Available: {', '.join(available_datasets())}")
    if protocol not in PROTOCOLS:
        close = difflib.get_close_matches(str(protocol), PROTOCOLS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown protocol {protocol!r}.{hint} Available: {', '.join(PROTOCOLS)}")
    with naming_rejected_options(f"dataset {key!r}", kwargs):
        splits = DATASETS[key](data_root=data_root, protocol=protocol, seed=seed, download=download, **kwargs)
    if limit is not None:
        splits.train = subset(splits.train, _balanced_limit(splits.train_labels, int(limit), seed))
    if test_limit is not None:
        splits.test = subset(splits.test, _balanced_limit(splits.test_labels, int(test_limit), seed + 1))
    return splits
