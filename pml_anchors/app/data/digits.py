"""``digits``: scikit-learn's 1,797 8×8 digits, offline: the embedded default (1×8×8)."""

from __future__ import annotations

import torch

from .containers import DatasetSplits, TensorImageDataset
from .splits import make_splits, stratified_split

__all__ = ["build_digits"]


def build_digits(
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
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    mean = float(images[train_idx].mean())
    std = float(images[train_idx].std())
    images = (images - mean) / std
    train_pool = TensorImageDataset(images[train_idx], labels[train_idx])
    test_pool = TensorImageDataset(images[test_idx], labels[test_idx])
    return make_splits(
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
