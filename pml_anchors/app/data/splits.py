"""The protocols (``same_class``, ``open_set``) and the seeded, class-balanced splits and subsamples behind them
(``limit``: :func:`balanced_limit`; ``train_per_class``, the few-shot training sets: :func:`per_class_subset`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from ...validators import check_int
from .containers import DatasetSplits, concat, dataset_size, get_labels, subset

__all__ = ["PROTOCOLS", "balanced_limit", "make_splits", "per_class_subset", "stratified_split"]

PROTOCOLS = ("same_class", "open_set")


def stratified_split(labels: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
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


def balanced_limit(labels: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
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


def per_class_subset(
    labels: torch.Tensor, per_class: int, seed: int, class_names: Sequence[str] = (), *, where: str = "the training set"
) -> torch.Tensor:
    """Sorted positions of ``per_class`` items of every class of ``labels``, drawn with ``seed``: the few-shot
    (``per_class``-shot) training set. The same seed draws the same items, and the sets are nested: the 1-shot items
    are among the 2-shot ones, and so on. A class with fewer than ``per_class`` items is a ``ValueError`` naming the
    smallest such class (by its ``class_names`` entry) and its count, and ``where`` the labels come from."""
    per_class = check_int(per_class, "train_per_class", minimum=1)
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    short = torch.nonzero(counts < per_class).flatten()
    if len(short):
        smallest = int(short[torch.argmin(counts[short])])
        label = int(classes[smallest])
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        shown = repr(name) if name == str(label) else f"{name!r} (label {label})"
        others = f"; {len(short)} of the {len(classes)} classes have fewer than {per_class}" if len(short) > 1 else ""
        raise ValueError(
            f"train_per_class={per_class}: class {shown} of {where} has only "
            f"{int(counts[smallest])} item{'' if int(counts[smallest]) == 1 else 's'}{others}; choose "
            f"train_per_class <= {int(counts.min())}"
        )
    gen = torch.Generator().manual_seed(int(seed) + 104729)
    perm = torch.randperm(len(labels), generator=gen)
    order = torch.argsort(inverse[perm], stable=True)  # grouped by class, in ``perm`` order within a class
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(labels)) - starts[inverse[perm][order]]
    return torch.sort(perm[order[rank < per_class]]).values


def make_splits(
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
            test = concat(extra, test)
    if dataset_size(test) == 0:
        raise ValueError("open_set: the test split has no items of the unseen classes")
    names = tuple(class_names[c] for c in train_classes + test_classes)
    return DatasetSplits(train, test, k, tuple(input_shape), name, protocol, names, seed, info)
