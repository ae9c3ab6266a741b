"""The datasets by name: :func:`load_dataset`, :func:`register_dataset` and :data:`DATASETS`.

:func:`load_dataset` returns a :class:`DatasetSplits` whose ``train``/``test`` are torch
datasets yielding ``(image_tensor, int_label)``, exactly what pytorch-metric-learning's trainers
and testers consume. Every dataset exposes its labels as ``dataset.labels`` (a ``LongTensor``,
see :func:`get_labels`), e.g. for ``MPerClassSampler``.

Datasets (:data:`DATASETS`):

``digits``       sklearn's 1,797 8×8 digits, offline, the embedded default (1×8×8).
``mnist``        torchvision MNIST from a local root (1×28×28); see :func:`prepare_mnist_root`.
``imagefolder``  torchvision ``ImageFolder`` (alias ``folder``): ``root/train`` + ``root/test``,
                 or one folder of class sub-folders (CUB-200 / Cars-196 layout).
``cub``          CUB-200-2011 via PML's ``CUB`` (root holds ``CUB_200_2011/``), 3×64×64 by default.
``cars196``      Cars-196 via PML's ``Cars196`` (Kaggle's by-class-folder layout), 3×64×64 by default.
``sop``          Stanford Online Products via PML's ``StanfordOnlineProducts``; open_set only.
``inaturalist2018``  iNaturalist 2018 via PML's ``INaturalist2018`` (the Smooth-AP class split).
``cifar10``, ``cifar100``, ``svhn``  torchvision's, 3×32×32 tensors; ``augment``: crop (+ flip: CIFAR).
``food101``, ``caltech256``  torchvision's, imagefolder's transforms (Caltech-256: seeded per-class split).
``emnist``, ``fashion_mnist``, ``kmnist``  torchvision's, 1×28×28 like ``mnist`` (EMNIST ``split``: balanced);
                 ``data_root`` may also be a folder of their (gzipped) IDX files.

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
import os
from collections.abc import Callable

from ...validators import naming_rejected_options
from .containers import DatasetSplits, subset
from .digits import build_digits
from .dml import build_cars196, build_cub, build_inaturalist2018, build_sop
from .imagefolder import build_imagefolder
from .mnist import build_emnist, build_fashion_mnist, build_kmnist, build_mnist
from .sources import dataset_names, find_dataset
from .splits import PROTOCOLS, balanced_limit, per_class_subset
from .torchvision_folders import build_caltech256, build_food101
from .torchvision_sets import build_cifar10, build_cifar100, build_svhn

__all__ = ["DATASETS", "available_datasets", "load_dataset", "register_dataset"]


#: name → builder ``(*, data_root, protocol, seed, download, **kwargs) -> DatasetSplits``.
DATASETS: dict[str, Callable[..., DatasetSplits]] = {
    "digits": build_digits,
    "mnist": build_mnist,
    "imagefolder": build_imagefolder,
    "folder": build_imagefolder,
    "cub": build_cub,
    "cars196": build_cars196,
    "sop": build_sop,
    "inaturalist2018": build_inaturalist2018,
    "cifar10": build_cifar10,
    "cifar100": build_cifar100,
    "svhn": build_svhn,
    "food101": build_food101,
    "caltech256": build_caltech256,
    "emnist": build_emnist,
    "fashion_mnist": build_fashion_mnist,
    "kmnist": build_kmnist,
}


def register_dataset(name: str, builder: Callable[..., DatasetSplits], *, overwrite: bool = False) -> None:
    """Add a dataset builder ``builder(*, data_root, protocol, seed, download, **kw) -> DatasetSplits`` in this
    process (a plugin's ``register_datasets`` hook adds one for every process: ``docs/plugins/hooks.md``)."""
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise ValueError(f"dataset name must be a lower-case identifier such as 'cub200', got {name!r}")
    if not callable(builder):
        raise TypeError(f"dataset {name!r}: builder must be callable, got {builder!r}")
    if name in DATASETS and not overwrite:
        raise ValueError(f"dataset {name!r} is already registered")
    DATASETS[name] = builder


def available_datasets() -> list[str]:
    """Every name :func:`load_dataset` takes: the built-in and the plugins' datasets (``plugin:name`` for a name that
    several provide)."""
    return dataset_names(DATASETS)


def load_dataset(
    name: str = "digits",
    *,
    data_root: str | os.PathLike | None = None,
    protocol: str = "same_class",
    seed: int = 0,
    download: bool = False,
    limit: int | None = None,
    test_limit: int | None = None,
    train_per_class: int | None = None,
    **kwargs,
) -> DatasetSplits:
    """Load dataset ``name`` (a key of :data:`DATASETS` or a plugin's dataset; ``plugin:name`` or
    ``pml-anchors:name`` when several have that name, see :mod:`~pml_anchors.app.data.sources`) under ``protocol``.

    :param data_root: the folder that holds the dataset as its official archive extracts (``docs/datasets.md``;
        default :func:`default_data_root`); ``imagefolder``: the image folder (required); ``digits``: unused.
    :param protocol: ``"same_class"`` or ``"open_set"`` (see the module docstring).
    :param seed: seed of the deterministic splits and subsampling.
    :param download: let PML's or torchvision's dataset class download into ``data_root`` (needs internet; a
        failure is one :class:`~pml_anchors.app.data.downloads.DatasetDownloadError` and leaves nothing behind).
    :param limit: keep only this many training items (deterministic, class-balanced).
    :param test_limit: same for the test set.
    :param train_per_class: keep this many training items of every class (few-shot: 1, 2, 4, ...; seeded, and the
        same ``seed`` keeps the same items); a class with fewer is a ``ValueError`` naming it. Not with ``limit``.
    :param kwargs: builder options: ``test_fraction`` (digits, single-folder imagefolder),
        ``num_train_classes`` and ``open_set_test`` (``"test"``: unseen classes from the test split
        only — default; ``"all"``: from both splits), ``image_size``, ``resize_size`` and ``augment`` (image
        datasets; ``augment`` also CIFAR/SVHN), ``split`` (EMNIST), ``clutter`` (Caltech-256).
    """
    source = find_dataset(name, DATASETS)
    key = source.name if source.plugin is None else source.qualified_name
    if train_per_class is not None and limit is not None:
        raise ValueError(
            f"train_per_class={train_per_class} and limit={limit} both choose the training items: give one "
            "(train_per_class N keeps N items of every class; limit L keeps L items, class-balanced)"
        )
    if protocol not in PROTOCOLS:
        close = difflib.get_close_matches(str(protocol), PROTOCOLS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown protocol {protocol!r}.{hint} Available: {', '.join(PROTOCOLS)}")
    with naming_rejected_options(f"dataset {key!r}", kwargs):
        splits = source.resolve()(data_root=data_root, protocol=protocol, seed=seed, download=download, **kwargs)
    if not isinstance(splits, DatasetSplits):
        raise TypeError(f"dataset {key!r}: its builder returned {type(splits).__name__}, expected a DatasetSplits")
    splits.info = {**splits.info, **source.provenance()}
    if train_per_class is not None:
        where = f"dataset {key!r} (protocol {protocol!r}, seed {seed})"
        keep = per_class_subset(splits.train_labels, train_per_class, seed, splits.class_names, where=where)
        splits.train = subset(splits.train, keep)
    if limit is not None:
        splits.train = subset(splits.train, balanced_limit(splits.train_labels, int(limit), seed))
    if test_limit is not None:
        splits.test = subset(splits.test, balanced_limit(splits.test_labels, int(test_limit), seed + 1))
    return splits
