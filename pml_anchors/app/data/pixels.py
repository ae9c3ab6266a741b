"""In-memory ``uint8`` images: per-channel statistics, and training-time augmentation applied before normalising."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .containers import TensorImageDataset

__all__ = ["AugmentedTensorDataset", "channel_stats"]


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``uint8`` images ``(N, C, H, W)`` scaled to ``[0, 1]``.

    Exact, from each channel's histogram of the 256 values (fast, and no float copy of the images). A channel
    without variation gets std 1, so normalising by it never divides by zero. Rounded to 6 decimals.
    """
    if images.dim() != 4 or images.dtype != torch.uint8 or len(images) == 0:
        raise ValueError(
            f"channel_stats needs uint8 images (N, C, H, W), N >= 1; got {images.dtype} {tuple(images.shape)}"
        )
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        p = counts / counts.sum()
        mean = float((p * values).sum())
        std = float((p * (values - mean).square()).sum().sqrt())
        means.append(round(mean, 6))
        stds.append(round(std, 6) if std > 1e-12 else 1.0)
    return tuple(means), tuple(stds)


class AugmentedTensorDataset(TensorImageDataset):
    """A :class:`TensorImageDataset` whose items first pass through ``augment``, a transform of one ``uint8``
    ``(C, H, W)`` tensor (e.g. torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``).

    A fresh random augmentation per item and fetch, then the usual scaling and normalisation. ``tensors()``
    returns the images un-augmented. :meth:`subset` keeps the augmentation (``--limit`` subsamples, protocols).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | Sequence[int],
        *,
        augment: Callable[[torch.Tensor], torch.Tensor],
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        scale: float | None = None,
    ):
        super().__init__(images, labels, mean=mean, std=std, scale=scale)
        self.augment = augment

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._normalise(self.augment(self.images[index])), int(self.labels[index])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self._normalise(torch.stack([self.augment(self.images[i]) for i in idx.tolist()]))
        return list(zip(x.unbind(0), self.labels[idx].tolist()))

    def subset(self, indices, labels=None) -> AugmentedTensorDataset:
        idx = torch.as_tensor(indices, dtype=torch.long)
        new_labels = self.labels[idx] if labels is None else labels
        return AugmentedTensorDataset(
            self.images[idx], new_labels, augment=self.augment, mean=self.mean, std=self.std, scale=self.scale
        )

    def __repr__(self) -> str:
        return f"AugmentedTensorDataset(n={len(self)}, shape={tuple(self.images.shape[1:])}, augment={self.augment})"
