"""The containers every dataset returns: in-memory image tensors, labelled subsets, and :class:`DatasetSplits`.

Every dataset exposes its labels as ``dataset.labels`` (a ``LongTensor``, see :func:`get_labels`), e.g. for PML's
``MPerClassSampler``; items are ``(image_tensor, int_label)``, what PML's trainers and testers consume.
"""

from __future__ import annotations

import os
from collections.abc import Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from torch.utils.data import ConcatDataset, Dataset

__all__ = [
    "DatasetSplits",
    "LabeledSubset",
    "TensorImageDataset",
    "concat",
    "dataset_size",
    "default_data_root",
    "get_labels",
    "subset",
]


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


def dataset_size(dataset: Dataset) -> int:
    """``len(dataset)``: the datasets here are map-style and sized (torch's ``Dataset`` does not declare ``__len__``)."""
    return len(cast(Sized, dataset))


def get_labels(dataset: Dataset) -> torch.Tensor:
    """Labels of ``dataset`` as a ``LongTensor`` (``.labels``, ``.targets``, or by iterating)."""
    for attr in ("labels", "targets"):
        labels = getattr(dataset, attr, None)
        if labels is not None:
            return torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    return torch.tensor([int(dataset[i][1]) for i in range(dataset_size(dataset))], dtype=torch.long)


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


def concat(a: Dataset, b: Dataset) -> Dataset:
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
            f"{self.name} [{self.protocol}] train={dataset_size(self.train)} test={dataset_size(self.test)} "
            f"num_classes={self.num_classes} test_classes={self.num_test_classes} input={tuple(self.input_shape)}"
        )


# --------------------------------------------------------------------------------------------
# Splitting helpers
# --------------------------------------------------------------------------------------------


def default_data_root() -> Path:
    """``$PML_ANCHORS_DATA`` if set, else ``~/.cache/pml_anchors``."""
    env = os.environ.get("PML_ANCHORS_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pml_anchors"
