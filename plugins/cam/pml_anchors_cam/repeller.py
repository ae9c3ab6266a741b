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
  than half moved, the whole list is rebuilt. Per-call cost between rebuilds: O(K d + pairs * d) instead of
  O(K^2 d). A list that would grow past ``max_pairs`` falls back to the blocked computation.

The list's searches (:func:`close_pairs`) are exact and run in bounded memory: tiles of TILE_ROWS x TILE_COLS
scores of one matrix product each (buffers allocated once per search), a pair kept only if its float64
difference is shorter than the reach. The products run in the cheapest dtype whose rounding error, bounded a
priori, cannot hide a pair (bfloat16 on CPUs with AVX512-BF16, about 5x float32's speed there; float32; float64),
and rows are sorted by their projection on a principal direction so that column tiles beyond the reach of a
row tile's projections are skipped (exact: |<u, a - b>| <= ||a - b||; it prunes nothing for isotropic anchors in
high d, whose projections all lie within a few units, and much for anchors spread along a direction). A full
search still costs K^2 / 2 x (d + 2) multiply-adds: :func:`check_search_cost` refuses it above
``MAX_SEARCH_MACS`` with the option that fits (``batch_classes_only=True``), and :func:`check_step_cost` refuses
L_R over every pair at every step above ``MAX_STEP_MACS``.
"""

from __future__ import annotations

import functools
import math
import weakref

import torch

from pml_anchors.losses.logsumexp import once_differentiable

__all__ = [
    "NeighborList",
    "check_search_cost",
    "check_step_cost",
    "close_pairs",
    "repeller_blocked",
    "repeller_dense",
    "repeller_on_pairs",
]

#: Entries of one block of the K x K distance matrix (rows per block = this // K).
BLOCK_ENTRIES = 1 << 24
#: Pairs x width up to which :func:`repeller_blocked` sums cancelling pairs from their differences.
EXACT_PAIR_ENTRIES = 1 << 24
#: Pairs whose Gram d^2 lies below this many rounding allowances are summed from their differences; above, the
#: Gram form's relative error in d^2 is below 1 / (8 * this) even in the worst case (typically far below).
EXACT_BELOW_SLACKS = 128

#: Rows and columns of one tile of the pair search (:func:`close_pairs`): one matrix product, 8M scores (16 MB
#: in bfloat16: small enough for the max over them to run from cache).
TILE_ROWS = 2048
TILE_COLS = 4096
#: float64 entries per block of the O(K d) passes over the anchors (centre, norms, projections, conversion).
STAT_ENTRIES = 1 << 21
#: Candidate pairs x d checked from their float64 differences at once.
VERIFY_ENTRIES = 1 << 21
#: A low-precision filter that let through more than this many false candidates per anchor (at least 1024
#: anchors counted) is redone in a finer dtype.
MAX_REJECTED_PER_ROW = 16
#: Shortest padded neighbour list (:attr:`NeighborList.padded`).
MIN_PADDED = 1024
#: Largest full pair search (K^2 / 2 x (d + 2) multiply-adds) a neighbour list starts: ~2.1M anchors at d = 128
#: (1M took 3 minutes on 2 CPU cores with bfloat16 products); above, :func:`check_search_cost` refuses.
MAX_SEARCH_MACS = float(1 << 48)
#: Largest L_R over every pair at every step (~3 K^2 d multiply-adds, forward and backward): ~107k anchors at
#: d = 128 (about a minute per step on 2 CPU cores); above, :func:`check_step_cost` refuses.
MAX_STEP_MACS = float(1 << 42)


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


def repeller_on_pairs(
    anchors: torch.Tensor, pairs: torch.Tensor, margin: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """L_R summed over the unordered ``pairs`` (2, P) only (differentiable; distances from differences).
    ``mask`` (P,) bool: count only the pairs marked ``True`` (a list padded to a fixed length)."""
    if pairs.shape[1] == 0 or margin == 0:
        return anchors.sum() * 0
    diff = anchors[pairs[0]] - anchors[pairs[1]]
    d = _safe_sqrt(diff.square().sum(dim=1))
    hinge = (2.0 * margin - d).clamp_min(0)
    if mask is not None:
        hinge = torch.where(mask, hinge, torch.zeros_like(hinge))
    return hinge.square().sum()


#: Pairs up to which :func:`repeller_dense` may hold the K x K distance matrix (the sync-free path: a 4096 x 4096
#: float32 matrix is 64 MB).
DENSE_ENTRIES = 1 << 24


def repeller_dense(anchors: torch.Tensor, margin: float, present: torch.Tensor | None = None) -> torch.Tensor:
    """L_R over every pair of rows, from one K x K matrix of distances taken from the rows' differences (no Gram
    cancellation; coincident rows get a zero gradient): no host read and no data-dependent shape, so it runs on the
    device without a sync and inside one ``torch.compile`` graph. ``present`` (K,) bool: count only the pairs of
    rows that are both ``True`` (the classes present in a batch; a mask instead of an index, whose size would
    depend on the data). Memory O(K^2): for K^2 <= ``DENSE_ENTRIES``.
    """
    if anchors.shape[0] < 2 or margin == 0:
        return anchors.sum() * 0
    d = torch.cdist(anchors, anchors, compute_mode="donot_use_mm_for_euclid_dist")
    keep = torch.ones(d.shape, dtype=torch.bool, device=d.device).triu_(1)  # each unordered pair once
    if present is not None:
        keep &= present.unsqueeze(0) & present.unsqueeze(1)
    hinge = (2.0 * margin - d).clamp_min(0)
    return torch.where(keep, hinge, torch.zeros_like(hinge)).square().sum()


# -- exact search for the pairs closer than a reach, in bounded memory ------------------------------------------


class _TooCoarse(Exception):
    """The low-precision filter let through too many pairs that the exact check rejected: use a finer dtype."""


def _row_blocks(n: int, step: int):
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _stat_rows(d: int) -> int:
    """Rows per block of the O(K d) passes (centre, projections, norms): ~STAT_ENTRIES float64 entries."""
    return max(1, STAT_ENTRIES // max(d, 1))


def _centre(points: torch.Tensor) -> torch.Tensor:
    """The mean of the finite rows in float64 (d,), summed in blocks (no K x d float64 copy). Rows holding NaN or
    Inf are left out: they pair with nothing, and must not spoil the others' centring."""
    total = torch.zeros(points.shape[1], dtype=torch.float64, device=points.device)
    count = 0
    for start, stop in _row_blocks(points.shape[0], _stat_rows(points.shape[1])):
        block = points[start:stop].to(torch.float64)
        finite = torch.isfinite(block).all(dim=1)
        total += block[finite].sum(dim=0)
        count += int(finite.sum())
    return total / max(count, 1)


def _sq_dist_to(points: torch.Tensor, centre: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """||p_i - centre||^2 in float64 for ``rows`` (None: all), in blocks."""
    n = points.shape[0] if rows is None else rows.shape[0]
    out = torch.empty(n, dtype=torch.float64, device=points.device)
    for start, stop in _row_blocks(n, _stat_rows(points.shape[1])):
        block = points[start:stop] if rows is None else points[rows[start:stop]]
        out[start:stop] = (block.to(torch.float64) - centre).square_().sum(dim=1)
    return out


def _principal_projection(points: torch.Tensor, centre: torch.Tensor, iterations: int = 2) -> torch.Tensor:
    """<p_i - centre, u> in float64 for a unit vector u near the first principal direction (a few power iterations
    from a fixed random start, in blocks). For any unit u, |<u, p_i - p_j>| <= ||p_i - p_j||: pairs whose
    projections lie ``reach`` or more apart cannot be closer than ``reach``, whatever u is."""
    k, d = points.shape
    step = _stat_rows(d)
    u = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(points.device)
    u /= torch.linalg.vector_norm(u)
    for _ in range(iterations):
        w = torch.zeros_like(u)
        for start, stop in _row_blocks(k, step):
            x = (points[start:stop].to(torch.float64) - centre).nan_to_num_(0.0, 0.0, 0.0)
            w += x.T @ (x @ u)
        norm = float(torch.linalg.vector_norm(w))
        if not 0 < norm < math.inf:
            break
        u = w / norm
    u = u / torch.linalg.vector_norm(u)
    out = torch.empty(k, dtype=torch.float64, device=points.device)
    for start, stop in _row_blocks(k, step):
        out[start:stop] = (points[start:stop].to(torch.float64) - centre) @ u
    return out


@functools.cache
def _fast_bf16(device_type: str) -> bool:
    """bfloat16 matrix products run natively (several times fp32's speed) and accumulate in float32, as the
    filter's error bound assumes: CPUs with AVX512-BF16, checked once on a sum of 1000 ones (a bfloat16
    accumulator stops at 256). Elsewhere the filter stays in float32 (CUDA: fast enough; and its bfloat16
    products may reduce in reduced precision)."""
    if device_type != "cpu":
        return False
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if not (callable(native) and native()):
        return False
    ones = torch.ones(1, 1000, dtype=torch.bfloat16)
    return float(torch.mm(ones, ones.T)) == 1000.0


def _roundoffs(dtype: torch.dtype, device: torch.device) -> tuple[float, float, float]:
    """(input, output, accumulation) relative error bounds of ``torch.mm`` in ``dtype``: each is the dtype's
    machine epsilon (twice the unit roundoff, so truncation is covered too). bfloat16 products accumulate in
    float32. float32 products may round their inputs to TF32 or bfloat16 when torch is allowed to
    (``torch.set_float32_matmul_precision`` other than "highest", ``torch.backends.cuda.matmul.allow_tf32``):
    then inputs count with bfloat16's epsilon."""
    if dtype == torch.bfloat16:
        return 2.0**-7, 2.0**-7, 2.0**-23
    if dtype == torch.float32:
        reduced = torch.get_float32_matmul_precision() != "highest" or (
            device.type == "cuda" and bool(torch.backends.cuda.matmul.allow_tf32)
        )
        return (2.0**-7 if reduced else 2.0**-23), 2.0**-23, 2.0**-23
    return 2.0**-52, 2.0**-52, 2.0**-52


def _filter_dtypes(device: torch.device, reach2: float, bound: float, width: int) -> list[torch.dtype]:
    """The products' dtypes to try, cheapest first: those whose error allowance moves the filter's cut (in squared
    distance) by at most 8 ``reach2`` (the cut's radius stays within 3 reach); float64 always comes last."""
    out = [torch.bfloat16] if _fast_bf16(device.type) else []
    out.append(torch.float32)
    keep = []
    for dtype in out:
        u_in, u_out, u_acc = _roundoffs(dtype, device)
        if 2 * (3 * u_in + u_out + 2 * width * u_acc) * bound <= 8 * reach2:
            keep.append(dtype)
    return [*keep, torch.float64]


class _TileSearch:
    """Pairs of rows of ``points`` (K, d) closer than ``reach``, tile by tile.

    Each tile is one matrix product of augmented rows, ``[s_i, 1, a_i] . [s_j, a_j, 1] = q0 - ||s_i - s_j||^2 / 2``
    with s = p - centre (float64, then rounded to ``dtype``), a = -(||s||^2 - q0) / 2 and q0 the mean ||s||^2.
    Its rounding error is at most ``e * A`` with e = 3 u_in + u_out + 2 n u_acc (:func:`_roundoffs`; n the
    width) and A >= ||s_i|| ||s_j|| + |a_i| + |a_j| for every pair (Cauchy-Schwarz), so a pair closer than
    ``reach`` always scores above ``theta = q0 - reach^2 / 2 - e A`` (rounded down into ``dtype``). A tile whose
    largest score is below ``theta`` (the usual case) costs one product and one max; otherwise its candidates
    are checked from their float64 differences ``p_i - p_j`` and only pairs closer than ``reach`` are kept. The
    tile buffers are allocated once (no per-tile allocation: no allocator growth over thousands of tiles).
    """

    def __init__(self, points, centre, sq, reach, limit, dtype, tile_rows, tile_cols, last):
        k, d = points.shape
        self.points, self.centre, self.k, self.d, self.dtype = points, centre, k, d, dtype
        self.reach2 = reach * reach
        self.limit = limit
        self.width = d + 2
        finite = sq[torch.isfinite(sq)]  # non-finite rows score NaN: never a candidate, never a pair
        self.q0 = float(finite.mean())
        self.aug = (sq - self.q0).mul_(-0.5)
        bound = float(finite.max()) + float((finite - self.q0).abs().max())
        u_in, u_out, u_acc = _roundoffs(dtype, points.device)
        tiny = torch.finfo(dtype).tiny
        slack = (3 * u_in + u_out + 2 * self.width * u_acc) * bound
        slack += 1e-12 * (bound + abs(self.q0) + self.reach2) + 2 * self.width * tiny * (1.0 + bound)
        cut = self.q0 - 0.5 * self.reach2 - slack
        # a value of ``dtype`` below the cut (comparisons with a tile round the threshold into its dtype)
        self.theta = float(torch.tensor(cut - 2 * u_out * abs(cut) - tiny, dtype=torch.float64).to(dtype))
        assert self.theta <= cut
        self.tile_rows, self.tile_cols = min(tile_rows, k), min(max(tile_cols, tile_rows), k)
        device = points.device
        self.out = torch.empty(self.tile_rows * self.tile_cols, dtype=dtype, device=device)
        self.mask = torch.empty(self.tile_rows * self.tile_cols, dtype=torch.bool, device=device)
        self.found: list[torch.Tensor] = []
        self.count = 0
        self.rejected = 0
        self.max_rejected = math.inf if last else MAX_REJECTED_PER_ROW * max(k, 1024)
        self.verify_rows = max(1, VERIFY_ENTRIES // max(d, 1))

    def augmented(self, rows: torch.Tensor | slice, row_form: bool, out: torch.Tensor | None = None) -> torch.Tensor:
        """``[s, 1, a]`` (row form) or ``[s, a, 1]`` (column form) of ``points[rows]`` in the filter dtype."""
        x = self.points[rows].to(torch.float64) - self.centre
        m = x.shape[0]
        if out is None:
            out = torch.empty(m, self.width, dtype=self.dtype, device=self.points.device)
        out[:, : self.d] = x
        aug = self.aug[rows]
        one, other = (self.d, self.d + 1) if row_form else (self.d + 1, self.d)
        out[:, one] = 1
        out[:, other] = aug
        return out

    def tile(self, rows_lp, row_ids, cols_lp, col_ids, diagonal: bool = False, first_col: int | None = None) -> bool:
        """Check rows x cols. ``diagonal``: the first ``len(rows)`` columns are the rows themselves (keep j > i);
        ``first_col``: the columns are rows ``first_col..`` (each row's own column is left out). False once more
        than ``limit`` pairs were found."""
        m, w = rows_lp.shape[0], cols_lp.shape[0]
        out = self.out[: m * w].view(m, w)
        torch.mm(rows_lp, cols_lp.T, out=out)
        if diagonal:
            out[:, :m].masked_fill_(self.lower[:m, :m], -math.inf)
        if first_col is not None:
            own = ((row_ids >= first_col) & (row_ids < first_col + w)).nonzero().flatten()
            out[own, row_ids[own] - first_col] = -math.inf
        if float(out.max()) <= self.theta:
            return True
        mask = self.mask[: m * w].view(m, w)
        torch.gt(out, self.theta, out=mask)
        for r0, r1 in _row_blocks(m, max(1, VERIFY_ENTRIES // w)):  # candidates a bounded chunk at a time
            ii, jj = mask[r0:r1].nonzero(as_tuple=True)
            if ii.numel() and not self.verify(row_ids[r0 + ii], col_ids[jj]):
                return False
        return True

    def verify(self, first: torch.Tensor, second: torch.Tensor) -> bool:
        """Keep the candidate pairs closer than reach, from their float64 differences, in chunks."""
        for start in range(0, first.shape[0], self.verify_rows):
            i, j = first[start : start + self.verify_rows], second[start : start + self.verify_rows]
            diff = self.points[i].to(torch.float64) - self.points[j].to(torch.float64)
            keep = (diff.square_().sum(dim=1) < self.reach2) & (i != j)
            i, j = i[keep], j[keep]
            self.rejected += int(keep.shape[0] - i.shape[0])
            if self.rejected > self.max_rejected:
                raise _TooCoarse
            if i.shape[0]:
                self.found.append(torch.stack([torch.minimum(i, j), torch.maximum(i, j)]))
                self.count += i.shape[0]
                if self.limit is not None and self.count > self.limit:
                    return False
        return True

    def result(self) -> torch.Tensor:
        if not self.found:
            return torch.empty(2, 0, dtype=torch.long, device=self.points.device)
        return torch.cat(self.found, dim=1)

    def all_pairs(self) -> bool:
        """Every pair once: rows sorted by their projection on a principal direction, each row tile against the
        columns from itself up to the last one whose projection is within reach of the tile's largest."""
        k, rows, cols = self.k, self.tile_rows, self.tile_cols
        proj = _principal_projection(self.points, self.centre)
        proj, order = torch.sort(proj)  # NaN (non-finite rows) last
        reach = math.sqrt(self.reach2)
        reach_proj = reach * (1 + 1e-9) + 1e-12 * float(proj.nan_to_num(0.0, 0.0, 0.0).abs().max())
        ends = torch.searchsorted(proj, proj[torch.arange(rows - 1, k + rows - 1, rows).clamp_max_(k - 1)] + reach_proj)
        del proj
        lp = torch.empty(k, self.width, dtype=self.dtype, device=self.points.device)
        for start, stop in _row_blocks(k, _stat_rows(self.d)):
            self.augmented(order[start:stop], row_form=False, out=lp[start:stop])
        self.lower = torch.ones(rows, rows, dtype=torch.bool, device=self.points.device).tril_()
        row_lp = torch.empty(rows, self.width, dtype=self.dtype, device=self.points.device)
        for tile_index, (start, stop) in enumerate(_row_blocks(k, rows)):
            m = stop - start
            row_lp[:m] = lp[start:stop]
            row_lp[:m, self.d] = 1
            row_lp[:m, self.d + 1] = lp[start:stop, self.d]
            end = max(int(ends[tile_index]), stop)
            for c0, c1 in _row_blocks(end - start, cols):
                if not self.tile(
                    row_lp[:m], order[start:stop], lp[start + c0 : start + c1], order[start + c0 : start + c1], c0 == 0
                ):
                    return False
        return True

    def some_rows(self, rows: torch.Tensor) -> bool:
        """Pairs between ``rows`` and every row (a pair of two listed rows comes twice): column blocks converted
        once each, against every row tile."""
        row_lp = self.augmented(rows, row_form=True)
        col_lp = torch.empty(self.tile_cols, self.width, dtype=self.dtype, device=self.points.device)
        ids = torch.arange(self.k, device=self.points.device)
        for c0, c1 in _row_blocks(self.k, self.tile_cols):
            cols = self.augmented(slice(c0, c1), row_form=False, out=col_lp[: c1 - c0])
            for r0, r1 in _row_blocks(rows.shape[0], self.tile_rows):
                if not self.tile(row_lp[r0:r1], rows[r0:r1], cols, ids[c0:c1], first_col=c0):
                    return False
        return True


def close_pairs(
    points: torch.Tensor,
    reach: float,
    rows: torch.Tensor | None = None,
    limit: int | None = None,
    *,
    centre: torch.Tensor | None = None,
    sq: torch.Tensor | None = None,
    tile_rows: int | None = None,
    tile_cols: int | None = None,
) -> torch.Tensor | None:
    """Every pair (2, P), i < j, of rows of ``points`` (K, d) closer than ``reach`` (from their float64
    differences), or with ``rows`` (indices) only those with an end in ``rows`` (a pair of two listed rows may
    come twice); ``None`` as soon as more than ``limit`` are found.

    Exact (the filter's rounding is bounded, see :class:`_TileSearch`) and in bounded memory: one copy of the
    points in the filter dtype (bfloat16 on CPUs with AVX512-BF16: K x (d + 2) x 2 bytes) plus tiles of
    ``tile_rows`` x ``tile_cols`` scores, whatever K. Time: K^2 / 2 x (d + 2) multiply-adds for all pairs (less
    where the projections on the principal direction are spread beyond ``reach``), len(rows) x K x (d + 2)
    for ``rows``. ``centre`` (float64, (d,)) and ``sq`` (float64 ||p_i - centre||^2) may be passed in.
    """
    k = points.shape[0]
    tile_rows = TILE_ROWS if tile_rows is None else tile_rows
    tile_cols = TILE_COLS if tile_cols is None else tile_cols
    if k < 2 or (rows is not None and rows.numel() == 0):
        return torch.empty(2, 0, dtype=torch.long, device=points.device)
    points = points.detach()
    centre = _centre(points) if centre is None else centre
    sq = _sq_dist_to(points, centre) if sq is None else sq
    finite = sq[torch.isfinite(sq)]
    if finite.numel() < 2:
        return torch.empty(2, 0, dtype=torch.long, device=points.device)
    reach2 = float(reach) ** 2
    bound = float(finite.max()) + float((finite - finite.mean()).abs().max())
    dtypes = _filter_dtypes(points.device, reach2, bound, points.shape[1] + 2)
    for dtype in dtypes:
        last = dtype == dtypes[-1]
        search = _TileSearch(points, centre, sq, reach, limit, dtype, tile_rows, tile_cols, last)
        try:
            complete = search.all_pairs() if rows is None else search.some_rows(rows)
        except _TooCoarse:
            continue
        return search.result() if complete else None
    raise AssertionError("float64 filters never give up")  # pragma: no cover


def search_macs(k: int, d: int) -> float:
    """Multiply-adds of one full exact pair search over K anchors of width d (:func:`close_pairs`)."""
    return k * (k - 1) / 2 * (d + 2)


def check_search_cost(k: int, d: int) -> None:
    """Refuse (ValueError) a neighbour-list build over K anchors that would cost more than ``MAX_SEARCH_MACS``."""
    macs = search_macs(k, d)
    if macs > MAX_SEARCH_MACS:
        raise ValueError(
            f"CAM's repeller over all K={k} anchors (d={d}) needs an exact search of the anchor pairs closer than "
            f"2m + skin: K^2/2 x (d + 2) = {macs:.2e} multiply-adds at the first step and at every rebuild of the "
            f"neighbour list, above pml_anchors_cam.repeller.MAX_SEARCH_MACS = {MAX_SEARCH_MACS:.2e} (about "
            f"{_max_k(d, MAX_SEARCH_MACS):,} anchors at this d; 1M anchors at d = 128 take minutes on 2 CPU cores). "
            f"Use batch_classes_only=True (L_R and L_N over the batch's classes only: O(B^2 d) per step), or raise "
            f"MAX_SEARCH_MACS if the wait is acceptable."
        )


def step_macs(k: int, d: int) -> float:
    """Multiply-adds of L_R over every pair, forward and backward (:func:`repeller_blocked`): ~3 K^2 d."""
    return 3.0 * k * k * d


def check_step_cost(k: int, d: int, reason: str) -> None:
    """Refuse (ValueError) L_R over every pair of K anchors each step when that costs more than ``MAX_STEP_MACS``;
    ``reason`` says why every pair would be computed."""
    macs = step_macs(k, d)
    if macs > MAX_STEP_MACS:
        raise ValueError(
            f"CAM's repeller over all K={k} anchors (d={d}): {reason}, so L_R would sum every anchor pair at every "
            f"step: ~3 K^2 d = {macs:.2e} multiply-adds per step (forward and backward), above "
            f"pml_anchors_cam.repeller.MAX_STEP_MACS = {MAX_STEP_MACS:.2e} (about "
            f"{int(math.sqrt(MAX_STEP_MACS / (3 * d))):,} anchors at this d). Use batch_classes_only=True (L_R "
            f"and L_N over the batch's classes only: O(B^2 d) per step)."
        )


def _max_k(d: int, macs: float) -> int:
    return int(math.sqrt(2 * macs / (d + 2)))


class NeighborList:
    """Pairs of anchors that may lie closer than 2m, kept valid as the anchors move (see module docstring).

    :param margin: m; pairs at distance >= 2m contribute nothing.
    :param skin: extra reach (> 0): the list holds pairs whose snapshots are closer than 2m + skin, and an anchor
        is re-snapshotted once it moves skin / 2 away from its snapshot.
    :param max_pairs: above this many listed pairs :meth:`pairs` returns ``None`` (use the blocked form); the
        search stops as soon as it finds more, so the list never holds more than ``max_pairs`` pairs.
    """

    def __init__(self, margin: float, skin: float, max_pairs: int | None = None):
        if not skin > 0:
            raise ValueError(f"skin must be > 0, got {skin!r}")
        self.two_m, self.skin = 2.0 * margin, float(skin)
        self.max_pairs = max_pairs
        self.snapshot: torch.Tensor | None = None
        self.list: torch.Tensor | None = None
        self.stats = {"rebuilds": 0, "partial": 0, "calls": 0, "overflows": 0}
        self._answered: tuple[weakref.ref, int, int] | None = None  # the tensor the last answer was for
        #: The list padded to a power-of-two length, (pairs (2, L), mask (L,)), or None (no list): see :meth:`padded`.
        self.padded: tuple[torch.Tensor, torch.Tensor] | None = None
        self._padded_from: torch.Tensor | None = None

    @property
    def reach(self) -> float:
        return self.two_m + self.skin

    def _snap(self, anchors: torch.Tensor, rows: torch.Tensor | None) -> None:
        if rows is None:
            self.snapshot = anchors.clone()
            self.center = _centre(anchors)
            self._sq = _sq_dist_to(anchors, self.center)
        else:
            assert self.snapshot is not None  # partial updates follow a full snapshot
            self.snapshot[rows] = anchors[rows]
            self._sq[rows] = _sq_dist_to(anchors, self.center, rows)

    def _search(self, rows: torch.Tensor | None = None) -> torch.Tensor | None:
        """Listed pairs (2, P), i < j, between snapshot ``rows`` (indices; None: all, each pair once) and every
        snapshot row; ``None`` beyond ``max_pairs``."""
        assert self.snapshot is not None  # searched only after _snap
        return close_pairs(self.snapshot, self.reach, rows, self.max_pairs, centre=self.center, sq=self._sq)

    @staticmethod
    def _unique(pairs: torch.Tensor) -> torch.Tensor:
        return pairs.unique(dim=1) if pairs.shape[1] else pairs

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

    def answers(self, anchors: torch.Tensor) -> bool:
        """Whether the list was last checked against this very tensor, unmodified since (same object, storage and
        version counter: an optimizer step changes the version). Read from the host's bookkeeping only."""
        answered = self._answered
        return answered is not None and answered[0]() is anchors and answered[1:] == self._key(anchors)

    @staticmethod
    def _key(anchors: torch.Tensor) -> tuple[int, int]:
        return anchors.data_ptr(), anchors._version

    @torch.no_grad()
    def pairs(self, anchors: torch.Tensor) -> torch.Tensor | None:
        """The pairs (2, P) containing every pair closer than 2m now, or ``None`` when there are too many.

        Asked again about the very same tensor, unmodified (:meth:`answers`), it answers the same without
        checking again: no host read (the loss asks twice in a step when the list overflows, and a step after
        ``ClassAnchorMarginLoss.refresh_neighbors`` finds the list checked)."""
        if self.answers(anchors):
            return self.list
        self._answered = None
        answer = self._pairs(anchors.detach())
        self._answered = (weakref.ref(anchors), *self._key(anchors))
        return answer

    def holds_for(self, anchors: torch.Tensor) -> torch.Tensor:
        """A 0-dim bool tensor, computed on the anchors' device without a host read: ``True`` when every anchor lies
        within 0.45 skin of its snapshot, so that the list holds every pair closer than 2m (module docstring)."""
        assert self.snapshot is not None  # asked only of a built list
        moved = torch.linalg.vector_norm(anchors.detach() - self.snapshot, dim=1)
        return (moved < 0.45 * self.skin).all()

    def _pad(self) -> None:
        """:attr:`padded`: the list in a (2, L) index tensor, L the next power of two >= max(P, ``MIN_PADDED``),
        and a (L,) mask of its P real pairs (the padding pairs row 0 with itself). A step over it has shapes that
        change only when L does: no data-dependent size, and a compiled step recompiles rarely."""
        if self.list is None:
            self.padded = None
            return
        if self.padded is not None and self._padded_from is self.list:
            return  # unchanged since the last step
        self._padded_from = self.list
        p = self.list.shape[1]
        length = max(MIN_PADDED, 1 << max(p - 1, 0).bit_length())
        pairs = self.list.new_zeros(2, length)
        pairs[:, :p] = self.list
        mask = torch.zeros(length, dtype=torch.bool, device=self.list.device)
        mask[:p] = True
        self.padded = (pairs, mask)

    def _pairs(self, anchors: torch.Tensor) -> torch.Tensor | None:
        self.stats["calls"] += 1
        stale = (
            self.snapshot is None
            or self.list is None  # the last search overflowed: search again (it stops early if still too many)
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
                self.stats["partial"] += 1
                if new is None:
                    self.list = None
                else:
                    self.list = self._unique(torch.cat([self.list[:, keep], new], dim=1))
                    if self.max_pairs is not None and self.list.shape[1] > self.max_pairs:
                        self.list = None
        if stale:
            check_search_cost(*anchors.shape)
            self._snap(anchors, None)
            self.list = None  # free the old list before the search
            self.list = self._search()
            self.stats["rebuilds"] += 1
        if self.list is None:
            self.stats["overflows"] += 1
        self._pad()
        return self.list
