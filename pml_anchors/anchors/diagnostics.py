"""Anchor diagnostics: pairwise cosines and the smallest pairwise angle, for any rows (sub-centres flattened)."""

from __future__ import annotations

import math

import torch

from .inputs import F64, normalize_rows

__all__ = [
    "CHEAP_ANGLE_BUDGET",
    "DIAGNOSTIC_ANGLE_BUDGET",
    "as_rows",
    "min_angle_within_budget",
    "min_pairwise_angle",
    "min_pairwise_angle_if_cheap",
    "pairwise_cosine",
]


def as_rows(anchors) -> torch.Tensor:
    a = torch.as_tensor(anchors)
    if a.ndim < 2:
        raise ValueError(f"anchors must have at least 2 dims (rows x embedding), got shape {tuple(a.shape)}")
    return a.detach().reshape(-1, a.shape[-1]).to(device="cpu", dtype=F64)


def pairwise_cosine(anchors) -> torch.Tensor:
    """K x K cosine matrix of the (L2-normalised) rows; (K, s, d) sub-centres are flattened to K*s rows.

    Computed in float64 and returned in the input's floating dtype (float64 for integer input). Zero rows
    get cosine 0 with everything.
    """
    a = normalize_rows(as_rows(anchors))
    in_dtype = torch.as_tensor(anchors).dtype
    out_dtype = in_dtype if in_dtype.is_floating_point else F64
    return (a @ a.T).clamp(-1.0, 1.0).to(out_dtype)


def min_pairwise_angle(anchors, *, query_rows: torch.Tensor | None = None) -> float:
    """Smallest angle (radians) between two distinct rows; (K, s, d) sub-centres are flattened to rows.

    With ``query_rows`` (row indices), only the pairs with one row among them count: the smallest angle between one
    of those rows and any other row, an upper bound of the exact minimum at ``len(query_rows) x K x d`` cost.
    Works in row blocks, so memory stays O(block x K) for large K.
    """
    a = normalize_rows(as_rows(anchors))
    k = a.shape[0]
    if k < 2:
        raise ValueError(f"min_pairwise_angle needs at least 2 rows, got {k}")
    queries = torch.arange(k) if query_rows is None else torch.as_tensor(query_rows, dtype=torch.long).reshape(-1)
    block = max(1, 2**22 // k)
    max_cos = -1.0
    for start in range(0, len(queries), block):
        index = queries[start : start + block]
        g = a[index] @ a.T
        g[torch.arange(len(index)), index] = -2.0  # a row with itself
        max_cos = max(max_cos, float(g.max()))
    return math.acos(min(1.0, max(-1.0, max_cos)))


#: Multiply-adds (K^2 d) up to which the diagnostics recorded while training (every epoch by the trainer hooks,
#: every evaluation) search every pair: about 7e10, a few seconds on two CPU cores (K = 23k at d = 128).
DIAGNOSTIC_ANGLE_BUDGET = 2**36


def min_angle_within_budget(anchors, budget: float | None = None, seed: int = 0) -> tuple[float, int]:
    """``(angle, rows_searched)``: :func:`min_pairwise_angle` when K^2 d is within ``budget`` (default
    :data:`DIAGNOSTIC_ANGLE_BUDGET`, read at call time), with ``rows_searched`` = K; beyond, the smallest angle between one of ``max(1, budget // (K d))`` rows, drawn with ``seed`` (the same
    rows every call, so epochs compare), and any other row: an upper bound of the exact minimum at ``budget`` cost,
    instead of hours at K = 1M."""
    budget = DIAGNOSTIC_ANGLE_BUDGET if budget is None else budget
    rows = as_rows(anchors)
    k, d = rows.shape
    if k * k * d <= budget:
        return min_pairwise_angle(rows), k
    m = min(k, max(1, int(budget // (k * d))))
    sample = torch.randperm(k, generator=torch.Generator().manual_seed(seed))[:m]
    return min_pairwise_angle(rows, query_rows=sample), m


#: Multiply-adds (K^2 d) up to which :func:`min_pairwise_angle_if_cheap` measures (about 0.1 s on one core).
CHEAP_ANGLE_BUDGET = 1e9


def min_pairwise_angle_if_cheap(anchors, budget: float = CHEAP_ANGLE_BUDGET) -> float | None:
    """:func:`min_pairwise_angle` when it costs at most ``budget`` multiply-adds (K^2 d), else ``None``.

    For recording the angle anchors were built with at construction without making huge-K losses slow to build.
    """
    rows = as_rows(anchors)
    k, d = rows.shape
    return min_pairwise_angle(rows) if k > 1 and k * k * d <= budget else None
