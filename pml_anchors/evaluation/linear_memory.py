"""Two steps of PML's ``AccuracyCalculator.get_accuracy`` in memory linear in N, for test sets of 10^5 items.

PML 2.9 counts every class's gallery items with one ``classes x N`` comparison that ``sum`` widens to int64
(``get_label_match_counts``: 2.9 GB at N = 60,000 in 6,000 classes, 32 GB at 200,000 in 20,000; SOP's test set is
60,502 images of 11,316 products), and checks that the gallery starts with the queries with ``torch.allclose`` over
the whole ``N x d`` embeddings (four ``N x d`` temporaries). :func:`label_match_counts` gives the same counts by
sorting, :func:`starts_with` the same check in blocks; ``RecallAtKCalculator.get_accuracy`` uses both.
"""

from __future__ import annotations

import torch

__all__ = ["label_match_counts", "starts_with"]

#: elements compared at a time by :func:`starts_with` (64 MiB of float32)
BLOCK_ELEMENTS = 2**24


def label_match_counts(query_labels: torch.Tensor, reference_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PML's ``get_label_match_counts`` for equal labels: the distinct query labels (``torch.unique(dim=0)``, rows of
    ``(N, L)`` labels) and, for each, how many reference items carry it (0 when none)."""
    unique_query = torch.unique(query_labels, dim=0)
    unique_reference, reference_counts = torch.unique(reference_labels, dim=0, return_counts=True)
    _, ids = torch.unique(torch.cat([unique_reference, unique_query]), dim=0, return_inverse=True)
    counts = torch.zeros(len(unique_reference) + len(unique_query), dtype=torch.long, device=reference_counts.device)
    counts[ids[: len(unique_reference)]] = reference_counts
    return unique_query, counts[ids[len(unique_reference) :]]


def starts_with(reference: torch.Tensor, query: torch.Tensor) -> bool:
    """``torch.allclose(query, reference[:len(query)])``, ``BLOCK_ELEMENTS`` at a time (at once when they are the
    same tensor)."""
    if reference is query:
        return True
    if len(reference) < len(query) or reference.shape[1:] != query.shape[1:]:
        return False
    rows = max(1, BLOCK_ELEMENTS // max(1, query[0].numel()))
    n = len(query)
    return all(torch.allclose(query[s : s + rows], reference[s : min(s + rows, n)]) for s in range(0, n, rows))
