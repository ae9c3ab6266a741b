"""The CAM repeller L_R = sum over unordered anchor pairs of max(0, 2m - ||c_y - c_y'||)^2 (eq. 2), for any K.

Two exact ways to compute it (same value and gradient up to float rounding):

* :func:`repeller_blocked`: all pairs, streamed over row blocks of the K x K distance matrix (one GEMM per
  block, recomputed in backward): O(K^2 d) time, O(block * K) memory. Used for small K, for the present
  classes only (``batch_classes_only``), and as the fallback.
* :class:`NeighborList` + :func:`repeller_on_pairs`: a Verlet neighbour list. The hinge is zero for every pair
  at distance >= 2m, and anchors move little per optimizer step, so the list keeps the pairs whose
  *snapshot* positions S are closer than ``reach = 2m + skin`` and, every call, measures how far each anchor
  moved from its snapshot (one O(K d) pass). A pair left out had ||S_i - S_j|| >= reach, so by the triangle
  inequality ||c_i - c_j|| >= reach - ||c_i - S_i|| - ||c_j - S_j|| > 2m as long as every anchor moved less
  than skin / 2: its hinge and its gradient are exactly 0, and the sum over the listed pairs *is* L_R.
  Anchors that moved further are re-snapshotted and their pairs searched again (O(moved * K * d)); when more
  than half moved, the whole list is rebuilt (O(K^2 d), in blocks). Per-call cost between rebuilds: O(K d +
  pairs * d) instead of O(K^2 d). The search keeps a rounding allowance on top of ``reach`` (it only ever adds
  pairs), and a list that would grow past ``max_pairs`` falls back to the blocked computation.
"""

from __future__ import annotations

import torch

from pml_anchors.chunking import once_differentiable

__all__ = ["NeighborList", "repeller_blocked", "repeller_on_pairs"]

#: Entries of one block of the K x K distance matrix (rows per block = this // K).
BLOCK_ENTRIES = 1 << 24


def _block_rows(k: int, block_entries: int = BLOCK_ENTRIES) -> int:
    return max(1, block_entries // max(k, 1))


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_min(torch.finfo(x.dtype).tiny).sqrt()


def _block_hinge(centred, sq, start, stop, two_m):
    """(d, hinge) for rows [start, stop) against all rows; the diagonal's hinge is 0."""
    d2 = torch.addmm(sq.unsqueeze(0), centred[start:stop], centred.T, alpha=-2).add_(sq[start:stop].unsqueeze(1))
    d = _safe_sqrt(d2)
    hinge = (two_m - d).clamp_min_(0)
    rows = torch.arange(stop - start, device=centred.device)
    hinge[rows, rows + start] = 0
    return d2, d, hinge


class _BlockedRepeller(torch.autograd.Function):
    """L_R over all pairs of rows, streamed over row blocks; backward recomputes each block.

    L_R = 1/2 sum_{i != j} h_ij^2, h_ij = max(0, 2m - d_ij); dL_R / dc_i = sum_j w_ij (c_i - c_j) with
    w_ij = -2 h_ij / d_ij (0 where d_ij^2 <= tiny: coincident anchors get a zero gradient, as ``_safe_sqrt``).
    Distances come from the Gram matrix of the centred anchors (translation invariant; limits cancellation).
    """

    @staticmethod
    def forward(ctx, anchors, two_m, block_rows):
        centred = anchors - anchors.mean(dim=0, keepdim=True)
        sq = centred.square().sum(dim=1)
        total = anchors.new_zeros(())
        k = anchors.shape[0]
        for start in range(0, k, block_rows):
            _, _, hinge = _block_hinge(centred, sq, start, min(k, start + block_rows), two_m)
            total += hinge.square().sum()
        ctx.save_for_backward(anchors)
        ctx.two_m, ctx.block_rows = two_m, block_rows
        return total * 0.5

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (anchors,) = ctx.saved_tensors
        centred = anchors - anchors.mean(dim=0, keepdim=True)
        sq = centred.square().sum(dim=1)
        out = torch.empty_like(anchors)
        k = anchors.shape[0]
        tiny = torch.finfo(anchors.dtype).tiny
        for start in range(0, k, ctx.block_rows):
            stop = min(k, start + ctx.block_rows)
            d2, d, hinge = _block_hinge(centred, sq, start, stop, ctx.two_m)
            w = hinge.div_(d).mul_(-2 * grad).masked_fill_(d2 <= tiny, 0)
            out[start:stop] = centred[start:stop] * w.sum(dim=1, keepdim=True) - w @ centred
        return out, None, None


def repeller_blocked(anchors: torch.Tensor, margin: float, block_entries: int = BLOCK_ENTRIES) -> torch.Tensor:
    """L_R over every pair of rows of ``anchors`` (K, d): exact, memory O((block_entries / K) * K)."""
    if anchors.shape[0] < 2 or margin == 0:
        return anchors.sum() * 0
    return _BlockedRepeller.apply(anchors, 2.0 * margin, _block_rows(anchors.shape[0], block_entries))


def repeller_on_pairs(anchors: torch.Tensor, pairs: torch.Tensor, margin: float) -> torch.Tensor:
    """L_R summed over the unordered ``pairs`` (2, P) only (differentiable; distances from differences)."""
    if pairs.shape[1] == 0 or margin == 0:
        return anchors.sum() * 0
    diff = anchors[pairs[0]] - anchors[pairs[1]]
    d = _safe_sqrt(diff.square().sum(dim=1))
    return (2.0 * margin - d).clamp_min(0).square().sum()


class NeighborList:
    """Pairs of anchors that may lie closer than 2m, kept valid as the anchors move (see module docstring).

    :param margin: m; pairs at distance >= 2m contribute nothing.
    :param skin: extra reach (> 0): the list holds pairs whose snapshots are closer than 2m + skin, and an anchor
        is re-snapshotted once it moves skin / 2 away from its snapshot.
    :param max_pairs: above this many listed pairs :meth:`pairs` returns ``None`` (use the blocked form).
    """

    def __init__(self, margin: float, skin: float, max_pairs: int | None = None):
        if not skin > 0:
            raise ValueError(f"skin must be > 0, got {skin!r}")
        self.two_m, self.skin = 2.0 * margin, float(skin)
        self.max_pairs = max_pairs
        self.snapshot: torch.Tensor | None = None
        self.list: torch.Tensor | None = None
        self.stats = {"rebuilds": 0, "partial": 0, "calls": 0}

    def _reach2(self) -> float:
        reach = self.two_m + self.skin
        # Gram-based squared distances are off by at most ~2 d u max||s||^2 (u: unit roundoff); allow 8x that.
        slack = 16 * self.snapshot.shape[1] * torch.finfo(self.snapshot.dtype).eps * float(self._max_sq)
        return reach * reach + slack

    def _search(self, rows: torch.Tensor) -> torch.Tensor:
        """Listed pairs (2, P), i < j, between snapshot ``rows`` (indices) and every snapshot row."""
        s = self.snapshot - self.center  # centred: limits cancellation in ||s_i||^2 + ||s_j||^2 - 2 s_i.s_j
        sq = self._sq
        k = s.shape[0]
        reach2 = self._reach2()
        found = []
        step = _block_rows(k)
        for start in range(0, rows.shape[0], step):
            idx = rows[start : start + step]
            d2 = torch.addmm(sq.unsqueeze(0), s[idx], s.T, alpha=-2).add_(sq[idx].unsqueeze(1))
            near = d2 < reach2
            near[torch.arange(idx.shape[0], device=s.device), idx] = False
            i, j = near.nonzero(as_tuple=True)
            found.append(torch.stack([idx[i], j]))
        pairs = torch.cat(found, dim=1) if found else torch.empty(2, 0, dtype=torch.long, device=s.device)
        return torch.stack([pairs.min(dim=0).values, pairs.max(dim=0).values]) if pairs.shape[1] else pairs

    @staticmethod
    def _unique(pairs: torch.Tensor) -> torch.Tensor:
        return pairs.unique(dim=1) if pairs.shape[1] else pairs

    def _snap(self, anchors: torch.Tensor, rows: torch.Tensor | None) -> None:
        if rows is None:
            self.center = anchors.mean(dim=0, keepdim=True)
            self.snapshot = anchors.clone()
            self._sq = torch.linalg.vector_norm(anchors - self.center, dim=1).square_()
        else:
            self.snapshot[rows] = anchors[rows]
            self._sq[rows] = torch.linalg.vector_norm(anchors[rows] - self.center, dim=1).square_()
        self._max_sq = self._sq.max()

    def _displacement(self, anchors: torch.Tensor) -> torch.Tensor:
        """||c_i - S_i|| for every anchor, in blocks (no K x d temporary)."""
        k = anchors.shape[0]
        out = torch.empty(k, dtype=anchors.dtype, device=anchors.device)
        step = _block_rows(anchors.shape[1], 1 << 20)  # small blocks: the difference stays in cache
        for start in range(0, k, step):
            stop = min(k, start + step)
            torch.linalg.vector_norm(anchors[start:stop] - self.snapshot[start:stop], dim=1, out=out[start:stop])
        return out

    @torch.no_grad()
    def pairs(self, anchors: torch.Tensor) -> torch.Tensor | None:
        """The pairs (2, P) containing every pair closer than 2m now, or ``None`` when there are too many."""
        anchors = anchors.detach()
        self.stats["calls"] += 1
        stale = (
            self.snapshot is None
            or self.snapshot.shape != anchors.shape
            or self.snapshot.dtype != anchors.dtype
            or self.snapshot.device != anchors.device
        )
        if not stale:
            # 0.45 skin, not 0.5: two anchors that each moved less than that stay > 2m apart with room for rounding.
            moved = self._displacement(anchors) >= 0.45 * self.skin
            count = int(moved.sum())
            if count > anchors.shape[0] // 2:
                stale = True
            elif count:
                rows = moved.nonzero().flatten()
                self._snap(anchors, rows)
                keep = ~(moved[self.list[0]] | moved[self.list[1]])
                new = self._search(rows)
                self.list = self._unique(torch.cat([self.list[:, keep], new], dim=1))
                self.stats["partial"] += 1
        if stale:
            self._snap(anchors, None)
            self.list = self._unique(self._search(torch.arange(anchors.shape[0], device=anchors.device)))
            self.stats["rebuilds"] += 1
        if self.max_pairs is not None and self.list.shape[1] > self.max_pairs:
            return None
        return self.list
