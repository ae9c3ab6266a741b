"""Validation folds carved from the training split, and a seal on the test split.

Musgrave et al. ("A Metric Learning Reality Check", ECCV 2020) tune every loss on validation folds made from the
*training* classes and touch the test classes once, at the end. :func:`validation_folds` cuts the training split into
``folds`` seeded folds: under ``open_set`` the folds partition the training *classes* (class-disjoint, as the test
classes are unseen); under ``same_class`` they partition the *items* of every class (sample-disjoint, stratified).
:func:`validation_split` turns fold ``fold`` into a :class:`DatasetSplits` whose ``train`` is the other folds and whose
``test`` is that fold, labelled as the protocol expects. :class:`SealedTestSplit` wraps the real test split so that
any read of it (items, length, labels) raises :class:`HeldOutTestSplitError`: what ``pml-anchors tune`` trains on
cannot have seen it.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset

from ...validators import check_int
from .containers import DatasetSplits, LabeledSubset, TensorImageDataset, dataset_size, get_labels, subset
from .pixels import AugmentedTensorDataset
from .splits import PROTOCOLS

__all__ = [
    "HeldOutTestSplitError",
    "SealedTestSplit",
    "check_validation",
    "seal_test_split",
    "validation_folds",
    "validation_split",
]

#: the keys of a validation choice (``TrainConfig.validation``)
VALIDATION_KEYS = ("fold", "folds", "seed")


class HeldOutTestSplitError(RuntimeError):
    """The test split was read while it was sealed (during validation or hyper-parameter search)."""


class SealedTestSplit(Dataset):
    """The test split, held out: ``len()``, indexing, ``labels`` and ``targets`` raise :class:`HeldOutTestSplitError`.

    :meth:`unseal` returns the dataset for the one final evaluation. ``reads`` counts the refused reads (a test can
    check that nothing tried).
    """

    def __init__(self, dataset: Dataset, why: str = "hyper-parameters are being tuned on validation folds"):
        self._dataset = dataset
        self._why = why
        self.reads = 0

    def _refuse(self, what: str) -> HeldOutTestSplitError:
        self.reads += 1
        return HeldOutTestSplitError(
            f"the test split is sealed ({self._why}): {what} refused; only the final evaluation may read it"
        )

    def __len__(self) -> int:
        raise self._refuse("len()")

    def __getitem__(self, index: Any) -> Any:
        raise self._refuse(f"item {index!r}")

    def __getitems__(self, indices: Any) -> Any:
        raise self._refuse("a batch of items")

    @property
    def labels(self) -> torch.Tensor:
        raise self._refuse("its labels")

    @property
    def targets(self) -> torch.Tensor:
        raise self._refuse("its labels")

    def unseal(self) -> Dataset:
        """The wrapped test split, for the final evaluation."""
        return self._dataset

    def __repr__(self) -> str:
        return f"SealedTestSplit({type(self._dataset).__name__})"


def seal_test_split(splits: DatasetSplits, why: str | None = None) -> DatasetSplits:
    """A copy of ``splits`` whose ``test`` is a :class:`SealedTestSplit` (the same object if it is sealed already)."""
    if isinstance(splits.test, SealedTestSplit):
        return splits
    sealed = SealedTestSplit(splits.test) if why is None else SealedTestSplit(splits.test, why)
    return dataclasses.replace(splits, test=sealed, info=dict(splits.info))


def check_validation(value: Any) -> dict[str, int] | None:
    """``None`` or a ``{"fold", "folds", "seed"}`` mapping (``0 <= fold < folds``, ``folds >= 2``), checked."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - set(VALIDATION_KEYS) or not {"fold", "folds"} <= set(value):
        raise ValueError(
            f"validation must be None or a dict with keys 'fold', 'folds' and optionally 'seed', got {value!r}"
        )
    folds = check_int(value["folds"], "validation folds", minimum=2)
    fold = check_int(value["fold"], "validation fold", minimum=0)
    if fold >= folds:
        raise ValueError(f"validation fold must be in 0..{folds - 1} (folds={folds}), got {fold}")
    return {"fold": fold, "folds": folds, "seed": check_int(value.get("seed", 0), "validation seed")}


def validation_folds(labels: torch.Tensor, folds: int, seed: int, protocol: str) -> list[torch.Tensor]:
    """``folds`` sorted index tensors into ``labels`` that partition it, drawn with ``seed``.

    ``open_set``: the classes are shuffled and dealt into ``folds`` groups of near-equal size (every fold needs
    2 classes or more, else a ``ValueError``); each fold holds every item of its classes. ``same_class``: every class's
    items are shuffled and dealt round-robin over the folds (from a random fold), so each fold holds about
    ``1/folds`` of every class (every class needs ``folds`` items or more, else a ``ValueError`` naming it).
    """
    folds = check_int(folds, "folds", minimum=2)
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    gen = torch.Generator().manual_seed(int(seed) + 7_368_787)
    classes, counts = torch.unique(labels, return_counts=True)
    fold_of = torch.empty(len(labels), dtype=torch.long)
    if protocol == "open_set":
        if len(classes) < 2 * folds:
            raise ValueError(
                f"open_set validation: {len(classes)} training classes cannot make {folds} class-disjoint folds of "
                f"2 classes or more; use folds <= {len(classes) // 2}"
            )
        order = classes[torch.randperm(len(classes), generator=gen)]
        for position, c in enumerate(order.tolist()):
            fold_of[labels == c] = position * folds // len(classes)
    else:
        if int(counts.min()) < folds:
            small = int(classes[torch.argmin(counts)])
            raise ValueError(
                f"same_class validation: class {small} has {int(counts.min())} training items, fewer than folds={folds}; "
                f"use folds <= {int(counts.min())}"
            )
        for c in classes.tolist():
            idx = torch.nonzero(labels == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=gen)]
            start = int(torch.randint(folds, (1,), generator=gen))
            fold_of[idx] = (torch.arange(len(idx)) + start) % folds
    return [torch.nonzero(fold_of == f).flatten() for f in range(folds)]


def _transform_of(dataset: Any) -> Any:
    """The ``transform`` the images of ``dataset`` go through (through :class:`LabeledSubset` / ``ConcatDataset``
    wrappers and a sealed test split, whose images are not read), or ``None``."""
    if isinstance(dataset, SealedTestSplit):
        return _transform_of(dataset.unseal())
    if isinstance(dataset, LabeledSubset):
        return _transform_of(dataset.base)
    if isinstance(dataset, ConcatDataset):
        return _transform_of(dataset.datasets[0]) if dataset.datasets else None
    return getattr(dataset, "transform", None)


def _with_transform(dataset: Any, transform: Any) -> Any:
    """A view of ``dataset`` whose images go through ``transform`` (shallow copies: the files are not read again)."""
    if isinstance(dataset, LabeledSubset):
        return LabeledSubset(_with_transform(dataset.base, transform), dataset.indices, dataset.labels)
    if isinstance(dataset, ConcatDataset):
        return ConcatDataset([_with_transform(d, transform) for d in dataset.datasets])
    if getattr(dataset, "transform", None) is not None:
        view = copy.copy(dataset)
        view.transform = transform
        return view
    return dataset


def _evaluation_view(dataset: Dataset, test: Dataset) -> Dataset:
    """The items of ``dataset`` as the test split's are evaluated: without random augmentation (tensor images), or
    through the test split's transform (image files: e.g. the centre crop instead of the training's random crop)."""
    if isinstance(dataset, AugmentedTensorDataset):
        return TensorImageDataset(
            dataset.images, dataset.labels, mean=dataset.mean, std=dataset.std, scale=dataset.scale
        )
    evaluation, training = _transform_of(test), _transform_of(dataset)
    if evaluation is None or training is None or evaluation is training:
        return dataset
    return _with_transform(dataset, evaluation)


def validation_split(splits: DatasetSplits, fold: int, folds: int, seed: int = 0) -> DatasetSplits:
    """Fold ``fold`` of :func:`validation_folds` as a :class:`DatasetSplits` made of ``splits.train`` alone.

    ``train`` is the other folds, ``test`` fold ``fold``; ``splits.test`` is not read. Under ``open_set`` the training
    classes are relabelled ``0..K-1`` and the validation classes ``K..`` (``num_classes`` is ``K``); under
    ``same_class`` the labels stay. ``info["validation"]`` records the fold, folds, seed, sizes and class names.
    """
    choice = check_validation({"fold": fold, "folds": folds, "seed": seed})
    assert choice is not None
    labels = get_labels(splits.train)
    parts = validation_folds(labels, choice["folds"], choice["seed"], splits.protocol)
    val_idx = parts[choice["fold"]]
    train_idx = torch.sort(torch.cat([p for f, p in enumerate(parts) if f != choice["fold"]])).values
    names = splits.class_names

    def name(label: int) -> str:
        return names[label] if 0 <= label < len(names) else str(label)

    train_classes = torch.unique(labels[train_idx]).tolist()
    val_classes = torch.unique(labels[val_idx]).tolist()
    if splits.protocol == "open_set":
        remap = {c: i for i, c in enumerate(train_classes)}
        remap.update({c: len(train_classes) + i for i, c in enumerate(val_classes)})
        train = subset(splits.train, train_idx, [remap[c] for c in labels[train_idx].tolist()])
        test = subset(
            _evaluation_view(splits.train, splits.test), val_idx, [remap[c] for c in labels[val_idx].tolist()]
        )
        num_classes = len(train_classes)
        class_names = tuple(name(c) for c in train_classes + val_classes)
    else:
        train = subset(splits.train, train_idx)
        test = subset(_evaluation_view(splits.train, splits.test), val_idx)
        num_classes, class_names = splits.num_classes, splits.class_names
    record = {
        **choice,
        "protocol": splits.protocol,
        "train_size": dataset_size(train),
        "validation_size": dataset_size(test),
        "train_classes": [name(c) for c in train_classes],
        "validation_classes": [name(c) for c in val_classes],
    }
    return dataclasses.replace(
        splits,
        train=train,
        test=test,
        num_classes=num_classes,
        class_names=class_names,
        info={**splits.info, "validation": record},
    )
