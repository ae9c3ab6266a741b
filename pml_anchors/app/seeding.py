"""Reproducibility: seeding every random generator a run uses, per-epoch seeds, PyTorch's deterministic mode."""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from pytorch_metric_learning.utils import common_functions as c_f

__all__ = ["epoch_seed", "seed_everything", "use_deterministic_algorithms"]


def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy, torch (all devices) and PML's ``c_f.NUMPY_RANDOM``."""
    seed = int(seed) % 2**32
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    c_f.NUMPY_RANDOM = np.random.RandomState(seed)


def use_deterministic_algorithms() -> None:
    """Turn on PyTorch's deterministic mode for this process, so that a seeded GPU run repeats bit for bit.

    ``torch.use_deterministic_algorithms(True)`` (which also makes cuDNN pick deterministic convolutions),
    ``torch.backends.cudnn.benchmark = False``, and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (cuBLAS needs it for
    repeatable GEMMs; set only if unset, and effective only before this process's first cuBLAS call). An op that
    has no deterministic kernel then raises a ``RuntimeError`` naming itself. It stays on for the rest of the process.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed every epoch starts from (so resumed and uninterrupted runs match)."""
    return (int(seed) * 1_000_003 + int(epoch)) % 2**32
