"""The CAM repeller L_R = sum over unordered anchor pairs of max(0, 2m - ||c_y - c_y'||)^2 (eq. 2), for any K.

Two exact ways to compute it (same value and gradient up to float rounding):

* :func:`repeller_blocked`: all pairs, streamed over row blocks of the K x K Gram matrix of the centred anchors
  (one GEMM per block, recomputed in backward): O(K^2 d) time, O(block * K) memory. Used for small K, for the
  present classes only (``batch_classes_only``), and as the fallback. The Gram form ||c||^2 + ||c'||^2 - 2 c.c'
  cancels for nearly coincident anchors far from the centre (in float32 two anchors 1e-3 apart at norm 11 got
  a 55 % too large gradient from it), so the few pairs whose Gram d^2 is within ``EXACT_BELOW_SLACKS``
  rounding allowances of 0 are left out of it and summed from their differences instead.
* :class:`NeighborList` + :func:`repeller_on_pairs`: a Verlet neighbour list. The hinge is zero for every pair
  at distance >= 2m, and anchors move little per optimizer step, so the list keeps the pairs whose
  *snapshot* positions S are closer than ``reach = 2m + skin`` and, every call, measures how far each anchor
  moved from its snapshot (one O(K d) pass). A pair left out had ||S_i - S_j|| >= reach, so by the triangle
  inequality ||c_i - c_j|| >= reach - ||c_i - S_i|| - ||c_j - S_j|| > 2m as long as every anchor moved less
  than skin / 2: its hinge and its gradient are exactly 0, and the sum over the listed pairs *is* L_R.
  Anchors that moved further are re-snapshotted and their pairs searched again (O(moved * K * d)); when more
  than half moved, the whole list is rebuilt (O(K^2 d), in blocks). Per-call cost between rebuilds: O(K d +
  pairs * d) instead of O(K^2 d). A list that would grow past ``max_pairs`` falls back to the blocked
  computation.
"""

from __future__ import annotations

import torch

from pml_anchors.losses.logsumexp import once_differentiable

__all__ = ["NeighborList", "repeller_blocked", "repeller_on_pairs"]

#: Entries of one block of the K x K distance matrix (rows per block = this // K).
BLOCK_ENTRIES = 1 << 24
#: Pairs x width up to which :func:`repeller_blocked` sums cancelling pairs from their differences.
EXACT_PAIR_ENTRIES = 1 << 24
#: Pairs whose Gram d^2 lies below this many rounding allowances are summed from their differences; above, the
#: Gram form's relative error in d^2 is below 1 / (8 * this) even in the worst case (typically far below).
EXACT_BELOW_SLACKS = 128


def _block_rows(k: int, block_entries: int = BLOCK_ENTRIES) -> int:
    return max(1, block_entries // max(k, 1))


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_min(torch.finfo(x.dtype).tiny).sqrt()


def _centred(anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows minus their mean (Gram distances are translation invariant; this limits cancellation) and their
    squared norms."""
    centred = anchors - anchors.mean(dim=0, keepdim=True)
    return centred, centred.square().sum(dim=1)


def _rounding_slack(centred: torch.Tensor, max_sq: float) -> float:
    """Allowance on Gram-based squared distances of centred rows: off by at most ~2 d u max||s||^2; 8x that."""
    return 16 * centred.shape[1] * torch.finfo(centred.dtype).eps * max_sq


def _gram_d2(centred: torch.Tensor, sq: torch.Tensor, rows) -> torch.Tensor:
    """Squared distances from ``centred[rows]`` (a slice or an index tensor) to every row, by the Gram form
    ||s_i||^2 + ||s_j||^2 - 2 s_i.s_j (one GEMM; may be slightly negative from rounding)."""
    return torch.addmm(sq.unsqueeze(0), centred[rows], centred.T, alpha=-2).add_(sq[rows].unsqueeze(1))


def _block_hinge(centred, sq, start, stop, two_m):
    """(d2, d, hinge) for rows [start, stop) against all rows, from the Gram form; the diagonal's hinge is 0."""
    d2 = _gram_d2(centred, sq, slice(start, stop))
    d = _safe_sqrt(d2)
    hinge = (two_m - d).clamp_min_(0)
    rows = torch.arange(stop - start, device=centred.device)
    hinge[rows, rows + start] = 0
    return d2, d, hinge


def _zero_pairs(block: torch.Tensor, pairs: torch.Tensor, start: int, stop: int) -> None:
    """Zero the entries (i, j) and (j, i) of every pair (i, j) in ``pairs`` (2, P) that fall in rows [start, stop)."""
    for first, second in ((pairs[0], pairs[1]), (pairs[1], pairs[0])):
        inside = (first >= start) & (first < stop)
        block[first[inside] - start, second[inside]] = 0


class _BlockedRepeller(torch.autograd.Function):
    """L_R over all pairs of rows but the cancelling ones, streamed over row blocks; backward recomputes each block.

    L_R = 1/2 sum_{i != j} h_ij^2, h_ij = max(0, 2m - d_ij); dL_R / dc_i = sum_j w_ij (c_i - c_j) with
    w_ij = -2 h_ij / d_ij (0 where d_ij^2 <= tiny: coincident anchors get a zero gradient, as ``_safe_sqrt``).
    Distances come from the Gram matrix of the centred anchors, except where it cancels: pairs whose Gram d^2
    is below ``EXACT_BELOW_SLACKS`` rounding allowances (at most ``limit`` of them) are left out, both ways
    round, and returned as (2, P) pairs i < j for :func:`repeller_on_pairs` (their differences).
    """

    @staticmethod
    def forward(ctx, anchors, two_m, block_rows, limit):
        ctx.set_materialize_grads(False)
        centred, sq = _centred(anchors)
        slack = _rounding_slack(centred, float(sq.max()))
        exact_below = min(EXACT_BELOW_SLACKS * slack, two_m * two_m + slack)
        total = anchors.new_zeros(())
        k = anchors.shape[0]
        cols = torch.arange(k, device=anchors.device)
        pairs = torch.empty(2, 0, dtype=torch.long, device=anchors.device)
        for start in range(0, k, block_rows):
            stop = min(k, start + block_rows)
            d2, _, hinge = _block_hinge(centred, sq, start, stop, two_m)
            room = limit - pairs.shape[1]
            if room > 0:  # a pair is decided from its first row's block, then left out both ways round
                upper = cols > torch.arange(start, stop, device=anchors.device).unsqueeze(1)
                i, j = ((d2 < exact_below) & upper).nonzero(as_tuple=True)
                pairs = torch.cat([pairs, torch.stack([i[:room] + start, j[:room]])], dim=1)
            if pairs.shape[1]:
                _zero_pairs(hinge, pairs, start, stop)
            total += hinge.square().sum()
        ctx.save_for_backward(anchors, pairs)
        ctx.two_m, ctx.block_rows = two_m, block_rows
        ctx.mark_non_differentiable(pairs)
        return total * 0.5, pairs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, _):
        if grad is None:
            return None, None, None, None
        anchors, pairs = ctx.saved_tensors
        centred, sq = _centred(anchors)
        out = torch.empty_like(anchors)
        k = anchors.shape[0]
        tiny = torch.finfo(anchors.dtype).tiny
        for start in range(0, k, ctx.block_rows):
            stop = min(k, start + ctx.block_rows)
            d2, d, hinge = _block_hinge(centred, sq, start, stop, ctx.two_m)
            w = hinge.div_(d).mul_(-2 * grad).masked_fill_(d2 <= tiny, 0)
            if pairs.shape[1]:
                _zero_pairs(w, pairs, start, stop)
            out[start:stop] = centred[start:stop] * w.sum(dim=1, keepdim=True) - w @ centred
        return out, None, None, None


def repeller_blocked(anchors: torch.Tensor, margin: float, block_entries: int = BLOCK_ENTRIES) -> torch.Tensor:
    """L_R over every pair of rows of ``anchors`` (K, d): memory O((block_entries / K) * K), time O(K^2 d).

    From the Gram form in row blocks, except for the pairs where it cancels (nearly coincident anchors far from
    the centre), which are summed from their differences (:func:`repeller_on_pairs`).
    """
    if anchors.shape[0] < 2 or margin == 0:
        return anchors.sum() * 0
    limit = max(1, EXACT_PAIR_ENTRIES // anchors.shape[1])
    block_rows = _block_rows(anchors.shape[0], block_entries)
    total, pairs = _BlockedRepeller.apply(anchors, 2.0 * margin, block_rows, limit)
    return total + repeller_on_pairs(anchors, pairs, margin)


def _pairs_within(
    centred: torch.Tensor,
    sq: torch.Tensor,
    rows: torch.Tensor,
    reach2: float,
    limit: int | None = None,
    block_entries: int = BLOCK_ENTRIES,
    upper: bool = False,
) -> torch.Tensor | None:
    """Pairs (2, P), i < j, between ``rows`` (indices) and every row whose Gram-based squared distance is below
    ``reach2``; ``None`` as soon as there are more than ``limit``. A pair of two listed rows appears twice,
    unless ``upper`` (meant for all rows) keeps it only from its smaller end."""
    k = centred.shape[0]
    found, count = [], 0
    step = _block_rows(k, block_entries)
    for start in range(0, rows.shape[0], step):
        idx = rows[start : start + step]
        d2 = _gram_d2(centred, sq, idx)
        near = d2 < reach2
        near[torch.arange(idx.shape[0], device=centred.device), idx] = False
        i, j = near.nonzero(as_tuple=True)
        if upper:
            keep = j > idx[i]
            i, j = i[keep], j[keep]
        count += i.shape[0]
        if limit is not None and count > limit:
            return None
        found.append(torch.stack([idx[i], j]))
    pairs = torch.cat(found, dim=1) if found else torch.empty(2, 0, dtype=torch.long, device=centred.device)
    return torch.stack([pairs.min(dim=0).values, pairs.max(dim=0).values]) if pairs.shape[1] else pairs


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

    def _search(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Listed pairs (2, P), i < j, between snapshot ``rows`` (indices; None: all, each pair once) and every
        snapshot row."""
        assert self.snapshot is not None  # searched only after _snap
        reach = self.two_m + self.skin
        centred = self.snapshot - self.center
        reach2 = reach * reach + _rounding_slack(centred, float(self._max_sq))
        if rows is None:
            rows = torch.arange(centred.shape[0], device=centred.device)
            pairs = _pairs_within(centred, self._sq, rows, reach2, upper=True)
        else:
            pairs = _pairs_within(centred, self._sq, rows, reach2)
        assert pairs is not None  # no limit given: never None
        return pairs

    @staticmethod
    def _unique(pairs: torch.Tensor) -> torch.Tensor:
        return pairs.unique(dim=1) if pairs.shape[1] else pairs

    def _snap(self, anchors: torch.Tensor, rows: torch.Tensor | None) -> None:
        if rows is None:
            self.center = anchors.mean(dim=0, keepdim=True)
            self.snapshot = anchors.clone()
            self._sq = torch.linalg.vector_norm(anchors - self.center, dim=1).square_()
        else:
            assert self.snapshot is not None  # partial updates follow a full snapshot
            self.snapshot[rows] = anchors[rows]
            self._sq[rows] = torch.linalg.vector_norm(anchors[rows] - self.center, dim=1).square_()
        self._max_sq = self._sq.max()

    def _displacement(self, anchors: torch.Tensor) -> torch.Tensor:
        """||c_i - S_i|| for every anchor, in blocks (no K x d temporary)."""
        assert self.snapshot is not None  # measured only against an existing snapshot
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
            assert self.list is not None  # built together with the snapshot
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
            self.list = self._search()
            self.stats["rebuilds"] += 1
        listed = self.list
        assert listed is not None  # rebuilt above, or kept from an earlier call
        if self.max_pairs is not None and listed.shape[1] > self.max_pairs:
            return None
        return listed
