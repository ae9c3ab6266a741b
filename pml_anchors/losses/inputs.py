"""Input checks of a loss's forward: embeddings and labels of the right type, shape and range.

Each raises a ``TypeError`` (wrong type) or ``ValueError`` (wrong shape or value) whose message says what was
expected and what was given; ``docs/bad_input.md`` lists them. Only :func:`check_label_range_and_finite` reads the
data: in eager CPU use with one host read for all of it; on an accelerator and under ``torch.compile`` as a
non-blocking device assertion (no host-device synchronisation, no graph break).
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from pytorch_metric_learning.utils import common_functions as c_f

__all__ = ["check_embeddings", "check_label_range_and_finite", "check_labels"]


def check_embeddings(embeddings: Any, embedding_size: int) -> None:
    """A floating-point tensor of shape (batch, ``embedding_size``)."""
    if not torch.is_tensor(embeddings):
        raise TypeError(f"embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
    if not embeddings.is_floating_point():
        raise TypeError(
            "embeddings must be a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got {embeddings.dtype}"
        )
    if embeddings.ndim != 2 or embeddings.shape[1] != embedding_size:
        raise ValueError(
            f"embeddings must have shape (batch_size, {embedding_size}) for this loss "
            f"(embedding_size={embedding_size}), got {tuple(embeddings.shape)}"
        )


def check_labels(labels: Any, batch_size: int) -> None:
    """A 1-D integer tensor of ``batch_size`` labels (``None`` is PML's "labels are required")."""
    c_f.labels_required(labels)
    if not torch.is_tensor(labels):
        raise TypeError(f"labels must be a 1-D integer torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor (e.g. torch.long), got {labels.dtype}")
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D tensor of shape (batch_size,), got shape {tuple(labels.shape)}")
    if labels.shape[0] != batch_size:
        raise ValueError(f"got {batch_size} embeddings but {labels.shape[0]} labels; they must match")


def check_label_range_and_finite(
    embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int, *, check_finite: bool = True
) -> None:
    """Labels in ``[0, num_classes)`` and, with ``check_finite``, no NaN/Inf embedding.

    Eager, on CPU tensors: a ``ValueError`` naming the range found or the bad rows, from two reductions read on
    the host (free on the CPU, where nothing runs ahead of the host). A finite sum proves every embedding finite
    (any NaN/Inf makes it NaN/Inf); a non-finite one (or an overflow) triggers the exact, row-by-row check that
    names the bad rows.

    On an accelerator (reading a value back would stall the host until the device caught up) and under
    ``torch.compile`` (where it would break the graph), each check is a device-side assertion instead
    (``torch._assert_async``): it costs no synchronisation, and a failing one raises a ``RuntimeError`` with the
    same wording where the host next waits for the device (on CUDA, a device-side assert that ends the process's
    CUDA context; on CPU under ``torch.compile``, when the compiled code runs).
    """
    if embeddings.shape[0] == 0:
        return
    on_host = not torch.compiler.is_compiling()
    expected = f"labels must lie in [0, {num_classes}) (num_classes={num_classes})"
    if on_host and labels.device.type == "cpu":
        low, high = torch.aminmax(labels)
        first, last = cast(int, low.tolist()), cast(int, high.tolist())  # 0-d: a number (no ATen op)
        if first < 0 or last >= num_classes:
            raise ValueError(f"{expected}, got values from {first} to {last}")
    else:  # 3 kernels (aminmax and two comparisons: 4); a narrow dtype's labels are all below its own maximum
        top = min(num_classes - 1, torch.iinfo(labels.dtype).max)
        torch._assert_async(labels.clamp(0, top).eq(labels).all(), expected)
    if not check_finite:
        return
    if on_host and embeddings.device.type == "cpu":
        if not math.isfinite(cast(float, embeddings.sum(dtype=torch.float32).tolist())):
            bad = (~torch.isfinite(embeddings)).any(dim=1).nonzero().flatten()[:5].tolist()
            if bad:
                raise ValueError(f"embeddings contain NaN or Inf (first bad rows: {bad})")
    else:
        # 0 * NaN and 0 * Inf are NaN and a sum of zeros cannot overflow: 3 kernels (``isfinite(...).all()``: 5)
        torch._assert_async((embeddings.detach() * 0).sum() == 0, "embeddings contain NaN or Inf")
