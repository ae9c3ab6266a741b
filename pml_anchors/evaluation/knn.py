"""Exact k-nearest-neighbour search in bounded memory: a ``knn_func`` for PML's ``AccuracyCalculator``.

PML's default, ``FaissKNN``, copies the gallery into a faiss index on the CPU (a GPU index only with faiss-gpu
installed), so on a CUDA device every evaluation leaves the GPU. :class:`BlockedKNN` searches on the embeddings'
own device in blocks of queries: each block's squared Euclidean distances to the whole gallery,
``|q|^2 + |r|^2 - 2 q.r`` (the gallery norms computed once, as faiss's ``IndexFlatL2`` does), then ``torch.topk``.
Memory is the embeddings, the ``N x k`` result and one block of at most ``block_bytes``, whatever ``N``;
distances are squared L2 as ``FaissKNN`` returns them, and the self-match removal is PML's own
(``return_results``). float32 candidates are confirmed in float64 against a rounding bound, so the neighbours
are the exact ranking: faiss's exact search (float32) can order two near-equal distances the other way, which moves
a metric by one query's share. ``benchmarks/eval_memory.py`` measures both: peak memory, time, and each metric's
difference at 10k, 60k and 200k embeddings.

:func:`make_knn_func` is what the tester uses: ``"faiss"`` (PML's ``FaissKNN``), ``"blocked"``, or ``"auto"``:
blocked on a CUDA device (no copy to the host), faiss on the CPU (the faster one there).
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_metric_learning.utils.inference import FaissKNN, return_results

from ..validators import positive_int

__all__ = ["DEFAULT_BLOCK_BYTES", "KNN_BACKENDS", "BlockedKNN", "check_knn", "make_knn_func"]

#: the memory of one block of query-to-gallery distances (and its top-k scratch), 256 MiB
DEFAULT_BLOCK_BYTES = 256 * 2**20
#: the ``knn`` choices of :func:`make_knn_func` (and of ``--knn``)
KNN_BACKENDS = ("auto", "blocked", "faiss")


class BlockedKNN:
    """Exact kNN under squared Euclidean distance, ``block_bytes`` of distances at a time (PML's ``knn_func``
    protocol: ``(query, k, reference, ref_includes_query) -> (distances, indices)``, ``N x k``, nearest first).

    float32 (and half) embeddings are searched in float32 and the ranking is confirmed against the worst-case
    rounding of a length-``d`` float32 dot product (:meth:`rounding_bound`): a query whose first ``k + 1`` distances
    are further apart than twice that bound is exact as it is; the others (:attr:`last_refined_rows`) are re-ranked
    by the float64 distances of their ``2k + 16`` nearest candidates, accepted when the last candidate's float32
    distance minus the bound exceeds the k-th float64 distance, else searched again with four times the candidates
    (:attr:`last_retried_rows`; at most the whole gallery). The result is the float64 ranking (ties by index)
    whatever the GEMM's rounding.
    """

    def __init__(self, block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        self.block_bytes = positive_int(block_bytes, "block_bytes")
        self.last_refined_rows = self.last_retried_rows = 0

    def block_rows(self, num_reference: int, element_size: int) -> int:
        """Queries per block: the block's distances plus ``topk``'s scratch (about twice as much) fit the budget."""
        return max(1, self.block_bytes // (3 * max(1, num_reference) * element_size))

    @staticmethod
    def rounding_bound(dim: int, device: torch.device) -> float:
        """``g`` such that a float32 squared distance ``|q|^2 + |r|^2 - 2 q.r`` is within ``g (|q| + |r|)^2`` of
        the exact one: ``gamma_{d+4} = (d+4) u / (1 - (d+4) u)`` for the unit roundoff ``u`` of the matmul (float32,
        or TF32 / bfloat16 where torch's matmul precision allows them)."""
        precision = torch.get_float32_matmul_precision()
        u = {"highest": 2.0**-24, "high": 2.0**-11, "medium": 2.0**-8}.get(precision, 2.0**-8)
        if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
            u = max(u, 2.0**-11)
        n = dim + 4
        return n * u / max(1e-12, 1 - n * u)

    def __call__(
        self, query: torch.Tensor, k: int, reference: torch.Tensor | None = None, ref_includes_query: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        reference = query if reference is None else reference
        _check_embeddings(query, reference)
        k = positive_int(k, "k") + int(ref_includes_query)
        if k > len(reference):
            raise ValueError(f"k = {k} neighbours asked of a gallery of {len(reference)} embeddings")
        dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
        query, reference = query.to(dtype), reference.to(query.device, dtype)
        ref_sq = reference.pow(2).sum(1)
        ref_norm_max = float(ref_sq.max().sqrt())
        distances = torch.empty(len(query), k, dtype=dtype, device=query.device)
        indices = torch.empty(len(query), k, dtype=torch.long, device=query.device)
        rows = self.block_rows(len(reference), reference.element_size())
        self.last_refined_rows = self.last_retried_rows = 0
        for start in range(0, len(query), rows):
            block = query[start : start + rows]
            dist = torch.addmm(ref_sq.unsqueeze(0), block, reference.T, alpha=-2.0)
            dist.add_(block.pow(2).sum(1, keepdim=True)).clamp_(min=0)
            stop = start + len(block)
            if dtype == torch.float64:
                distances[start:stop], indices[start:stop] = torch.topk(dist, k, dim=1, largest=False)
            else:
                distances[start:stop], indices[start:stop] = self._confirmed(block, reference, dist, k, ref_norm_max)
            del dist
        return return_results(distances, indices, ref_includes_query)

    def _confirmed(
        self, block: torch.Tensor, reference: torch.Tensor, dist: torch.Tensor, k: int, ref_norm_max: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact top ``k`` of each row of ``block`` from its float32 distances ``dist``: rows whose first
        ``k + 1`` float32 distances are more than twice the rounding bound apart are exact as they are; the others
        are re-ranked in float64 from their candidates, with more candidates until nothing else can be nearer."""
        slack = self.rounding_bound(block.shape[1], block.device) * (block.norm(dim=1) + ref_norm_max) ** 2
        candidates = first = min(len(reference), 2 * k + 16)
        cand_d, cand_i = torch.topk(dist, candidates, dim=1, largest=False, sorted=True)
        out_d, out_i = cand_d[:, :k].clone(), cand_i[:, :k].clone()
        edge = min(k + 1, candidates)
        sure = (cand_d[:, 1:edge] - cand_d[:, : edge - 1] > 2 * slack[:, None]).all(1)
        todo = (~sure).nonzero().flatten()
        while len(todo):
            if candidates != first:
                cand_d, cand_i = torch.topk(dist[todo], candidates, dim=1, largest=False, sorted=True)
            else:
                cand_d, cand_i = cand_d[todo], cand_i[todo]
            exact_d, exact_i = self._rerank(block[todo], reference, cand_i, k)
            done = torch.ones(len(todo), dtype=torch.bool, device=block.device)
            if candidates < len(reference):  # could an item outside the candidates be nearer than the k-th?
                done = cand_d[:, -1].double() - slack[todo].double() > exact_d[:, -1]
            out_d[todo[done]], out_i[todo[done]] = exact_d[done].to(block.dtype), exact_i[done]
            if candidates == first:
                self.last_refined_rows += len(todo)
                self.last_retried_rows += int((~done).sum())
            todo = todo[~done]
            candidates = min(len(reference), 4 * candidates)
        return out_d, out_i

    def _rerank(
        self, block: torch.Tensor, reference: torch.Tensor, cand_i: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` nearest of each row's candidates by float64 distance (ties: the lower index first)."""
        cand_i, _ = cand_i.sort(dim=1)
        step = max(1, self.block_bytes // (3 * cand_i.shape[1] * block.shape[1] * 8))
        exact = torch.empty(cand_i.shape, dtype=torch.float64, device=block.device)
        for s in range(0, len(block), step):
            diff = reference[cand_i[s : s + step]].double() - block[s : s + step, None, :].double()
            exact[s : s + step] = diff.pow_(2).sum(-1)
        order = torch.sort(exact, dim=1, stable=True).indices[:, :k]
        return exact.gather(1, order), cand_i.gather(1, order)


def _check_embeddings(query: Any, reference: Any) -> None:
    for name, x in (("query", query), ("reference", reference)):
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
            raise TypeError(f"{name} must be a 2-D floating-point tensor (N x d), got {_describe(x)}")
    if query.shape[1] != reference.shape[1]:
        raise ValueError(f"query has d = {query.shape[1]} but reference has d = {reference.shape[1]}")


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dim()}-D {x.dtype} tensor"
    return type(x).__name__


def check_knn(knn: Any) -> str:
    """``knn`` if it is one of :data:`KNN_BACKENDS`, else a ``ValueError`` naming them."""
    if knn not in KNN_BACKENDS:
        raise ValueError(f"knn must be one of {', '.join(KNN_BACKENDS)}, got {knn!r}")
    return knn


def make_knn_func(knn: str = "auto", device: Any = None, block_bytes: int = DEFAULT_BLOCK_BYTES) -> Any:
    """The ``knn_func`` for ``AccuracyCalculator``: ``"faiss"`` (PML's ``FaissKNN``), ``"blocked"``
    (:class:`BlockedKNN`) or ``"auto"`` (blocked on CUDA, faiss elsewhere)."""
    check_knn(knn)
    if knn == "auto":
        knn = "blocked" if torch.device(device if device is not None else "cpu").type == "cuda" else "faiss"
    return BlockedKNN(block_bytes) if knn == "blocked" else FaissKNN()
