"""What every initializer shares: its common arguments' checks, the seeded generator and row normalisation."""

from __future__ import annotations

from typing import Any

import torch

from ..validators import check_seed, positive_int

__all__ = ["F64", "ceil_log2", "check_geometry_args", "normalize_rows", "seeded_generator"]

#: Every geometry is computed in float64 and returned in the requested dtype.
F64 = torch.float64


def check_geometry_args(num_classes: Any, embedding_size: Any, seed: Any, dtype: Any) -> tuple[int, int, torch.dtype]:
    """``(K, d, dtype)`` for an initializer's common arguments (``dtype=None``: torch's default dtype)."""
    k = positive_int(num_classes, "num_classes")
    d = positive_int(embedding_size, "embedding_size")
    check_seed(seed)
    if dtype is None:
        dtype = torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return k, d, dtype


def seeded_generator(seed: int | None) -> torch.Generator | None:
    """A private generator for an int seed; ``None`` means torch's global RNG."""
    return None if seed is None else torch.Generator().manual_seed(int(seed))


def ceil_log2(k: int) -> int:
    return (k - 1).bit_length()


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-300)
