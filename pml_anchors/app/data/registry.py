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
from .imagefolder import build_imagefolder
from .mnist import build_mnist
from .splits import PROTOCOLS, balanced_limit

__all__ = ["DATASETS", "available_datasets", "load_dataset", "register_dataset"]


#: name → builder ``(*, data_root, protocol, seed, download, **kwargs) -> DatasetSplits``.
DATASETS: dict[str, Callable[..., DatasetSplits]] = {
    "digits": build_digits,
    "mnist": build_mnist,
    "imagefolder": build_imagefolder,
    "folder": build_imagefolder,
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
        splits.train = subset(splits.train, balanced_limit(splits.train_labels, int(limit), seed))
    if test_limit is not None:
        splits.test = subset(splits.test, balanced_limit(splits.test_labels, int(test_limit), seed + 1))
    return splits
