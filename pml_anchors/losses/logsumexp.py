"""Log-sum-exp and cross-entropy over the classes of a (B x R) logit matrix, optionally streamed over chunks.

Every softmax-style loss of this package is a log-sum-exp over the logits ``z = f(x, rows)`` of B samples
against R anchor rows, taken along the classes (cross-entropy: one value per sample) or along the batch
(Proxy Anchor: one value per proxy). :func:`class_logsumexp` and :func:`class_cross_entropy` compute it in one
custom autograd function:

* **unchunked** (``chunk_size=None``, or R <= chunk_size): the logits are one fresh B x R tensor that is
  turned into ``exp(z - max)`` in place and kept for backward, where it becomes the gradient in place: one
  B x R buffer serves forward and backward, with no masks, one-hot matrices or ``log_softmax`` copies.
* **chunked** (``chunk_size=c < R``): the rows are processed in chunks of c; the forward keeps only the
  per-chunk log-sum-exps (B values each, combined exactly with a log-sum-exp) and the backward recomputes
  each chunk's logits (one more GEMM per chunk). Memory is O(B * c + R * d) instead of O(B * R), so
  R = 1M classes fit; values and gradients equal the unchunked ones up to float rounding.

The logits come from a :class:`LogitMap` (a scaled product, a cosine against raw rows, a negative Euclidean
distance), which computes a block of logits and back-propagates a block of logit gradients into the inputs
by hand. ``exclude=labels`` leaves each sample's own class out of the log-sum-exp and returns those logits
separately (differentiably), so a loss can put a margin on the target logit or treat positives apart
(cross-entropy = ``softplus(lse_without_target - target)``, :func:`cross_entropy_from_lse`) without a B x R
mask.

The exponentials are taken in base 2: maps return their logits times log2(e) (folded into a scaling they
do anyway), and ``exp(z - m) = exp2(log2(e) z - log2(e) m)``. On CPU ``torch.exp2`` is about 3x faster than
``torch.exp`` and, unlike it, has no slow path for arguments below -87 (where ``exp`` underflows); the
result differs from ``exp`` by a few float rounding units of the largest terms.

Under ``torch.compile`` both functions run as the custom operators ``pml_anchors::class_lse`` and
``pml_anchors::class_lse_backward`` (``torch.library.custom_op``): the same kernels, opaque to the compiler, with
the logit map passed by kind and parameters and the backward recomputing the logits, so that a loss compiles
whole (``fullgraph=True``, no graph break). Without ``torch.compile`` the autograd function runs directly (the
saved ``exp(z - m)`` buffer, no ``torch._dynamo`` import). Only a third-party :class:`LogitMap` subclass still
runs under ``torch.compiler.disable`` (a graph break).

Small problems skip the custom function: with a linear or cosine map along the classes, unchunked, and B x R up
to ``NATIVE_MAX_ENTRIES`` (by device type), both functions compute the map's logits with differentiable torch
operations and reduce them with ``F.cross_entropy`` / ``torch.logsumexp``: the same values, fewer operations
(what bounds a step whose products take microseconds, above all on a GPU), and under ``torch.compile`` plain
operations the compiler fuses.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, overload

import torch

from ..validators import optional_int

__all__ = [
    "NATIVE_MAX_ENTRIES",
    "CosineRowsLogits",
    "LinearLogits",
    "LogitMap",
    "NegEuclideanLogits",
    "acc_dtype",
    "check_chunk_size",
    "class_cross_entropy",
    "class_logsumexp",
    "cross_entropy_from_lse",
    "once_differentiable",
]


def once_differentiable(backward: Callable) -> Callable:
    """Decorator for a hand-written ``backward``: torch's ``once_differentiable``, plus a clear error on double
    backward (``create_graph=True``, e.g. a gradient penalty).

    torch's decorator raises on double backward only when the incoming gradients require grad; otherwise it
    returns the gradients as constants, silently dropping the second-order terms that depend on the saved
    inputs (a wrong gradient penalty instead of an error). This one raises in every such case.
    """
    inner = torch.autograd.function.once_differentiable(backward)

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled():  # autograd enables grad mode in backward exactly when create_graph=True
            name = type(ctx).__name__
            raise RuntimeError(
                f"double backward (create_graph=True) through {name} is not supported: this pml_anchors loss "
                "computes its gradient by hand (first order only); a gradient penalty needs a loss built on "
                "differentiable torch operations"
            )
        return inner(ctx, *grads)

    return wrapper


def _eager_under_compile(fn: Callable) -> Callable:
    """``fn``, which dynamo never traces: under ``torch.compile`` it runs through ``torch.compiler.disable(fn)``
    (a graph break), made when first needed, since importing ``torch._dynamo`` takes about a second that code
    which never compiles should not pay (tests/test_compile.py checks both)."""
    disabled = None

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        nonlocal disabled
        if not torch.compiler.is_compiling():  # eager (dynamo folds this to True while it traces)
            return fn(*args, **kwargs)
        if disabled is None:
            disabled = torch.compiler.disable(fn)
        return disabled(*args, **kwargs)

    return wrapper


LOG2E = math.log2(math.e)
LN2 = math.log(2.0)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype logits are reduced in: float32 for float16/bfloat16, else the dtype itself."""
    return torch.promote_types(dtype, torch.float32)


def check_chunk_size(value: Any) -> int | None:
    """``None`` (no chunking) or a positive int."""
    return optional_int(value, "chunk_size", minimum=1)


def _as_acc(z: torch.Tensor) -> torch.Tensor:
    acc = acc_dtype(z.dtype)
    return z if z.dtype == acc else z.to(acc)


def _gemm_in_16_bits(x: torch.Tensor) -> bool:
    """Whether a product of ``x`` runs in 16 bits: half-precision inputs, or autocast on ``x``'s device."""
    return x.dtype != acc_dtype(x.dtype) or torch.is_autocast_enabled(x.device.type)


def _scaled_product(x: torch.Tensor, rows: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * x @ rows.T`` in at least float32, the scale applied on the (B x d) side."""
    return _as_acc(torch.mm(x if scale == 1.0 else x * scale, rows.T))


def _cast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == like.dtype else t.to(like.dtype)


class LogitMap:
    """A block of logits ``z[:, j] = f(x, rows[j])`` and its hand-written backward.

    ``forward(x, rows, start, unit)`` returns ``unit * z`` for the block as a *fresh* (B, len(rows)) tensor in
    at least float32 that the caller may overwrite (``unit`` is log2(e) for the log-sum-exp, 1 for plain
    logits); ``start`` is the index of ``rows[0]`` among all rows (to slice per-row side data).
    ``backward(x, rows, start, grad, need_x, need_rows, prescaled)`` gets ``d loss / d z`` for that block
    (which it may overwrite) and returns ``(d x, d rows)`` (``None`` where not needed), in the dtypes of ``x``
    and ``rows``. A map whose backward starts by scaling the gradient's columns returns that scale from
    :meth:`column_scale`; the log-sum-exp over the batch then folds it into its own column scaling and passes
    ``prescaled=True`` (one pass over the block saved). A map may keep state from its last ``forward`` for
    the ``backward`` of the same block (it must recompute it for another block).
    """

    def column_scale(self, rows: torch.Tensor, start: int) -> torch.Tensor | None:
        return None

    def forward(self, x: torch.Tensor, rows: torch.Tensor, start: int, unit: float = 1.0) -> torch.Tensor:
        raise NotImplementedError

    def backward(
        self,
        x: torch.Tensor,
        rows: torch.Tensor,
        start: int,
        grad: torch.Tensor,
        need_x: bool,
        need_rows: bool,
        prescaled: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        raise NotImplementedError


class LinearLogits(LogitMap):
    """``z = scale * x @ rows.T + bias`` (cosines when both are unit rows); ``bias`` (B,) is a constant."""

    def __init__(self, scale: float = 1.0, bias: torch.Tensor | None = None):
        self.scale = float(scale)
        self.bias = None if bias is None else _as_acc(bias.detach()).reshape(-1, 1)  # a constant, >= float32

    def forward(self, x, rows, start, unit=1.0):
        # The scale rides on the (B x d) side. A 16-bit GEMM rounds x * scale as :meth:`logits` does (so both
        # paths agree), and the base-2 unit is applied to its float32 result.
        pre = self.scale if _gemm_in_16_bits(x) else self.scale * unit
        z = _scaled_product(x, rows, pre)
        if pre != self.scale * unit:
            z.mul_(unit)
        if self.bias is not None:
            z.add_(self.bias if unit == 1.0 else self.bias * unit)
        return z

    def logits(self, x, rows):
        """The same (B, R) logits as differentiable torch operations (torch's own backward)."""
        z = _scaled_product(x, rows, self.scale)
        return z if self.bias is None else z + _cast(self.bias, z)

    def backward(self, x, rows, start, grad, need_x, need_rows, prescaled=False):
        dx = drows = None
        if need_x:
            dx = torch.mm(_cast(grad, rows), rows)
            if self.scale != 1.0:
                dx.mul_(self.scale)
        if need_rows:
            xs = x if self.scale == 1.0 else x * self.scale
            drows = torch.mm(_cast(grad, xs).T, xs)
        return dx, drows


class CosineRowsLogits(LogitMap):
    """``z[i, j] = scale * x_i . rows_j / max(||rows_j||, eps) + bias_i`` on raw (unnormalised) rows.

    The row normalisation is folded into a column scaling of the product, so no normalised copy of the
    (R x d) rows is made; the backward applies the normalisation's Jacobian to the (R x d) product
    ``grad.T @ x`` in place: ``d rows_j = M_j - (M_j . rows_j) rows_j / ||rows_j||^2`` (no projection term for
    rows shorter than ``eps``, which ``F.normalize`` divides by ``eps``). ``bias`` (B,) is a constant.
    """

    def __init__(self, scale: float = 1.0, bias: torch.Tensor | None = None, eps: float = 1e-12):
        self.scale = float(scale)
        self.bias = None if bias is None else _as_acc(bias.detach()).reshape(-1, 1)  # a constant, >= float32
        self.eps = eps
        self._norms: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # start -> (1 / norm, norm < eps)

    def _inv_norm(self, rows, start):
        hit = self._norms.get(start)
        if hit is None or hit[0].shape[0] != rows.shape[0]:
            norm = torch.linalg.vector_norm(rows, dim=1, dtype=acc_dtype(rows.dtype))
            hit = self._norms[start] = (norm.clamp_min(self.eps).reciprocal_(), norm < self.eps)
        return hit

    def column_scale(self, rows, start):
        return self._inv_norm(rows, start)[0] * self.scale

    def forward(self, x, rows, start, unit=1.0):
        z = _as_acc(torch.mm(x, rows.T))
        colscale = self.column_scale(rows, start)
        if unit != 1.0:
            colscale = colscale.mul_(unit)
        if self.bias is None:
            return z.mul_(colscale)
        bias = self.bias if unit == 1.0 else self.bias * unit
        return torch.addcmul(bias, z, colscale, out=z)  # z * scale / ||row|| + bias in one pass

    def logits(self, x, rows):
        """The same (B, R) logits as differentiable torch operations: the norm clamped at ``eps`` passes no
        gradient below it, as ``F.normalize``."""
        norm = torch.linalg.vector_norm(rows, dim=1, dtype=acc_dtype(rows.dtype)).clamp_min(self.eps)
        z = _as_acc(torch.mm(x, rows.T)) * (self.scale / norm)
        return z if self.bias is None else z + _cast(self.bias, z)

    def backward(self, x, rows, start, grad, need_x, need_rows, prescaled=False):
        inv, tiny = self._inv_norm(rows, start)
        if not prescaled:
            grad.mul_(inv * self.scale)  # now d loss / d (x . rows_j), column by column
        dx = torch.mm(_cast(grad, rows), rows) if need_x else None
        drows = None
        if need_rows:
            drows = torch.mm(_cast(grad, x).T, x)  # M = (grad * scale * inv).T @ x
            # row-wise dot products as a batched GEMM: no (R x d) temporary (vecdot makes one) and ~4x faster
            dot = torch.einsum("ij,ij->i", drows.to(inv.dtype), rows.to(inv.dtype))
            coef = (dot * inv * inv).neg_().masked_fill_(tiny, 0)
            drows.addcmul_(rows, coef.to(drows.dtype).unsqueeze(1))
        return dx, drows


class NegEuclideanLogits(LogitMap):
    """``z = -||x - a||`` or, with ``squared``, ``-||x - a||^2``, from one GEMM: ``d2 = ||x||^2 - 2 x.a + ||a||^2``.

    ``x_sq`` (B,) and ``rows_sq`` (R,) are the squared norms in the accumulation dtype (``rows_sq`` over
    *all* rows; a chunk is sliced from it). Without ``squared``, d2 is clamped at ``floor`` (B,) before the
    square root, and the gradient is 0 where it was clamped (the distance is flat there), as the loss's
    ``_NegSqrtFloor``. The forward keeps ``1 / sqrt(d2)`` (0 where clamped) of the block it computed last, which
    its backward multiplies in (no division, no B x R mask in the backward).
    """

    def __init__(self, x_sq: torch.Tensor, rows_sq: torch.Tensor, floor: torch.Tensor | None, squared: bool):
        self.x_sq = x_sq.reshape(-1, 1)
        self.rows_sq = rows_sq
        self.squared = squared
        if not squared:
            if floor is None:
                raise ValueError("NegEuclideanLogits needs a floor unless squared")
            self.floor = floor.reshape(-1, 1).clamp_min(torch.finfo(floor.dtype).tiny)
        self._slope: tuple[int, torch.Tensor] | None = None

    def forward(self, x, rows, start, unit=1.0):
        a_sq = self.rows_sq[start : start + rows.shape[0]]
        # One GEMM; at full precision the ||a||^2 term rides in its epilogue (addmm), under autocast or with
        # 16-bit inputs the product is promoted first (the squared norms stay in >= float32).
        fused = not _gemm_in_16_bits(x)
        if self.squared:  # unit * (2 x.a - ||x||^2 - ||a||^2)
            if fused:
                z = torch.addmm(a_sq.mul(-unit).unsqueeze(0), x, rows.T, alpha=2 * unit)
            else:
                z = _as_acc(torch.mm(x * (2 * unit), rows.T)).sub_(a_sq * unit)
            return z.sub_(self.x_sq * unit)
        if fused:
            d2 = torch.addmm(a_sq.unsqueeze(0), x, rows.T, alpha=-2)
        else:  # scaling x by -2 is exact
            d2 = _as_acc(torch.mm(x * -2, rows.T)).add_(a_sq)
        d2.add_(self.x_sq)
        clamped = None
        # d2 <= floor (a sample on, or within rounding noise of, an anchor) is rare: on CPU a row-min pass
        # (and a free sync) tells whether the clamp and its mask are needed at all.
        if d2.device.type != "cpu" or bool((d2.amin(dim=1, keepdim=True) <= self.floor).any()):
            clamped = d2 <= self.floor
            d2.clamp_(min=self.floor)
        slope = torch.rsqrt(d2)  # 1 / sqrt(d2) = -2 d z / d d2
        zero = torch.zeros((), dtype=d2.dtype, device=d2.device)
        z = torch.addcmul(zero, d2, slope, value=-unit, out=d2)  # -unit * d2 / sqrt(d2), one pass
        if clamped is not None:
            slope.masked_fill_(clamped, 0)
        self._slope = (start, slope)
        return z

    def backward(self, x, rows, start, grad, need_x, need_rows, prescaled=False):
        # With h = d loss / d d2:  d x_i = 2 (x_i sum_j h_ij - sum_j h_ij a_j),  d a_j = 2 (a_j sum_i h_ij - sum_i h_ij x_i).
        # Written as factor * (w @ rows - x * rowsum(w)) and factor * (w.T @ x - rows * colsum(w)) with
        # squared: d z / d d2 = -1, so h = -grad: w = grad, factor 2;
        # plain: d z / d d2 = -1 / (2 sqrt(d2)), so h = -grad * slope / 2 with slope = 1 / sqrt(d2) (0 where d2
        # was clamped): w = grad * slope, factor 1.
        if self.squared:
            w, factor = grad, 2.0
        else:
            slope = self._slope
            if slope is None or slope[0] != start or slope[1].shape != grad.shape:
                self.forward(x, rows, start)  # not the block computed last: recompute its slope
                slope = self._slope
                assert slope is not None  # set by forward when not squared
            w, factor = grad.mul_(slope[1]), 1.0
            self._slope = None
        dx = drows = None
        if need_x:  # factor * (w @ rows - x * rowsum(w)) in one addmm
            xs = x * w.sum(dim=1, keepdim=True).to(x.dtype)
            dx = torch.addmm(xs, _cast(w, rows), rows, beta=-factor, alpha=factor)
        if need_rows:
            rs = rows * w.sum(dim=0).unsqueeze(1).to(rows.dtype)
            drows = torch.addmm(rs, _cast(w, x).T, x, beta=-factor, alpha=factor)
        return dx, drows


# -- the log-sum-exp --------------------------------------------------------------------------------------


class _Spec:
    __slots__ = ("add_zero", "ce", "chunk_size", "dim", "group", "logit_map")

    def __init__(self, logit_map, dim: int, group: int, add_zero: bool, chunk_size: int | None, ce: bool = False):
        self.logit_map, self.dim, self.group = logit_map, dim, group
        self.add_zero, self.chunk_size, self.ce = add_zero, chunk_size, ce


def _bounds(rows: int, chunk_size: int | None, group: int) -> list[tuple[int, int]]:
    """Chunk boundaries over the rows, aligned to whole groups of ``group`` rows."""
    if chunk_size is None or chunk_size >= rows:
        return [(0, rows)]
    step = max(1, chunk_size // group) * group
    return [(s, min(rows, s + step)) for s in range(0, rows, step)]


class _Exclusion:
    """Where each sample's own class lies in one chunk [start, stop) of rows: index (B, 1[, group]), valid (B,).

    ``whole``: the chunk holds every class, so every sample's class is in it (no ``valid`` mask needed).
    """

    __slots__ = ("group", "index", "valid")

    def __init__(self, labels: torch.Tensor, start: int, stop: int, group: int, whole: bool):
        self.group = group
        if whole:
            self.valid, local = None, labels
        else:
            n = (stop - start) // group
            local = labels - start // group
            self.valid = (local >= 0) & (local < n)
            local = local.clamp(0, max(n - 1, 0))
        self.index = local.unsqueeze(1) if group == 1 else local.view(-1, 1, 1).expand(-1, 1, group)

    def view(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.group == 1 else z.view(z.shape[0], z.shape[1] // self.group, self.group)  # B may be 0

    def take(self, z: torch.Tensor, mask: bool = True) -> torch.Tensor:
        """The own-class entries (B, group) (garbage where not valid); with ``mask`` sets them to -inf in ``z``."""
        zv = self.view(z)
        values = zv.gather(1, self.index)
        if not mask:
            pass
        elif self.valid is None:
            zv.scatter_(1, self.index, float("-inf"))
        else:
            valid = self.valid.view(-1, *([1] * (values.ndim - 1)))
            zv.scatter_(1, self.index, torch.where(valid, float("-inf"), values))
        return values if self.group == 1 else values.squeeze(1)

    def put(self, z: torch.Tensor, values: torch.Tensor) -> None:
        """Write ``values`` (B, group) at the own-class places (valid rows only)."""
        zv = self.view(z)
        values = values.to(z.dtype) if self.group == 1 else values.to(z.dtype).unsqueeze(1)
        if self.valid is not None:
            valid = self.valid.view(-1, *([1] * (values.ndim - 1)))
            values = torch.where(valid, values, zv.gather(1, self.index))
        zv.scatter_(1, self.index, values)


def _stats2(z2: torch.Tensor, dim: int, add_zero: bool):
    """On base-2 logits ``z2``: ``(E, S, m, lse)``, E = 2^(z2 - m) in place, S = sum E (+ 2^-m), lse = ln2 (m + log2 S)."""
    m = z2.amax(dim=dim, keepdim=True)
    if add_zero:
        m.clamp_min_(0)
    m.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)  # all -inf: S = 0, lse = -inf
    e = z2.sub_(m).exp2_()
    s = e.sum(dim=dim, keepdim=True)
    if add_zero:
        s.add_(torch.exp2(-m))
    return e, s, m, (m + torch.log2(s)).mul_(LN2)


def _combine2(shifts: torch.Tensor, sums: torch.Tensor, add_zero: bool):
    """Per row, the chunks' ``(max, sum of 2^(z2 - max))`` (B, chunks) as one ``(lse, M, S)`` with
    ``lse = ln2 (M + log2 S)``, ``S = sum_c S_c 2^(m_c - M)`` (+ ``2^-M`` with ``add_zero``)."""
    shifts = torch.where(sums > 0, shifts, float("-inf"))  # a chunk with nothing in it (all excluded) adds nothing
    m = shifts.amax(dim=1, keepdim=True)
    if add_zero:
        m.clamp_min_(0)
    m.nan_to_num_(neginf=0.0)  # no chunk has anything: S = 0, lse = -inf
    s = (sums * torch.exp2(shifts - m)).sum(dim=1, keepdim=True)
    if add_zero:
        s.add_(torch.exp2(-m))
    return (m + torch.log2(s)).mul_(LN2), m, s


class _State:
    """What the forward hands its backward besides the saved tensors (an autograd ctx, or this for the custom op)."""

    saved: torch.Tensor | None = None
    sums: torch.Tensor | None = None
    shift2: torch.Tensor | None = None
    own_softmax: torch.Tensor | None = None
    bounds: list[tuple[int, int]]


def _lse_forward(st, x, rows, labels, spec: _Spec, keep: bool = True):
    """The forward of :class:`_ClassLogSumExp`: ``(out, own, lse)``; sets ``st.bounds``, ``st.shift2``, ``st.sums``,
    ``st.own_softmax`` and (``keep``, one chunk) ``st.saved``, the ``exp(z - m)`` buffer the backward reuses."""
    fmap, dim = spec.logit_map, spec.dim
    bounds = _bounds(rows.shape[0], spec.chunk_size, spec.group)
    single = len(bounds) == 1
    own2 = None  # the own-class (excluded) logits, base 2
    parts = []
    shifts, sums = [], []  # dim 1, several chunks: each chunk's (max, sum of 2^(z2 - max)), combined below
    st.saved = st.shift2 = st.sums = st.own_softmax = None
    for start, stop in bounds:
        z2 = fmap.forward(x, rows[start:stop], start, LOG2E)
        if labels is not None:
            ex = _Exclusion(labels, start, stop, spec.group, whole=single)
            values = ex.take(z2, mask=not spec.ce)
            if own2 is None or ex.valid is None:  # first chunk, or the only one (holds every class)
                own2 = values
            else:
                own2 = torch.where(ex.valid.unsqueeze(1), values, own2)
        add_zero = spec.add_zero and (dim == 0 or single)
        e, s, m, lse = _stats2(z2, dim, add_zero)
        if single:  # keep exp(z - m) and its sum for backward: it becomes the gradient in place
            st.sums, st.shift2 = s, m
            if keep:
                st.saved = e
        elif dim == 1:
            shifts.append(m)
            sums.append(s)
        del z2, e
        parts.append(lse)
    if dim == 0:
        lse = parts[0] if single else torch.cat(parts, dim=1)
    elif single:
        lse = parts[0]
    else:  # one (shift, sum) per row over every chunk, which backward normalises with exactly: a logsumexp
        # of the chunks' lse would put its rounding (an ulp of |lse|, large for large logits) into every weight
        lse, st.shift2, st.sums = _combine2(torch.cat(shifts, dim=1), torch.cat(sums, dim=1), spec.add_zero)
    lse = lse.squeeze(dim)
    st.bounds = bounds
    if labels is None:
        return lse, lse.new_empty(0), lse
    assert own2 is not None  # with labels, set by the first chunk (there is always one)
    own = own2 * LN2
    if not spec.ce:
        return lse, own, lse
    # cross-entropy: logsumexp over all rows minus logsumexp over the own class's rows
    if spec.group == 1:
        own_lse = own.squeeze(1)
    else:
        st.own_softmax, own_lse = torch.softmax(own, dim=1), torch.logsumexp(own, dim=1)
    return lse - own_lse, own, lse


def _lse_backward(st, x, rows, labels, lse, spec: _Spec, grad_lse, grad_own, need_x: bool, need_rows: bool):
    """The backward of :class:`_ClassLogSumExp`: ``(d x, d rows)`` (``None`` where not needed)."""
    fmap, dim = spec.logit_map, spec.dim
    if grad_lse is None:
        grad_lse = torch.zeros_like(lse)
    if spec.ce or (grad_own is not None and grad_own.numel() == 0):
        grad_own = None
    g = grad_lse.unsqueeze(dim)
    bounds = st.bounds
    single = len(bounds) == 1
    dx = None
    drows = None if single else (torch.zeros_like(rows) if need_rows else None)
    saved, st.saved = st.saved, None  # consumed: a second backward (retain_graph) recomputes
    for start, stop in bounds:
        chunk = rows[start:stop]
        ex = None if labels is None else _Exclusion(labels, start, stop, spec.group, whole=single)
        if single or dim == 1:  # exp(z - m) / S * g, in place (recomputed bit for bit after a first backward)
            if saved is not None:
                grad, saved = saved, None
            else:
                grad = fmap.forward(x, chunk, start, LOG2E)
                if ex is not None:
                    ex.take(grad, mask=not spec.ce)
                grad.sub_(st.shift2).exp2_()
            factor = torch.where(st.sums > 0, g / st.sums.clamp_min(torch.finfo(st.sums.dtype).tiny), 0.0)
        else:  # per-proxy lse of this chunk's own columns (dim 0): recompute its logits, exp(z - lse) * g
            grad = fmap.forward(x, chunk, start, LOG2E)
            if ex is not None:
                ex.take(grad, mask=not spec.ce)
            full = lse.unsqueeze(dim) if dim == 1 else lse[start:stop].unsqueeze(0)
            finite = torch.isfinite(full)
            grad.sub_(torch.where(finite, full * LOG2E, torch.zeros_like(full))).exp2_()
            gs = g if dim == 1 else g[:, start:stop]
            factor = torch.where(finite, gs, torch.zeros_like(gs))
        col = fmap.column_scale(chunk, start) if dim == 0 else None
        grad.mul_(factor if col is None else factor * col)
        if ex is not None and spec.ce:  # minus g * softmax over the own class's rows (1 for one row)
            own_grad = g if st.own_softmax is None else g * st.own_softmax
            ex.put(grad, ex.take(grad, mask=False) - own_grad)
        elif ex is not None and grad_own is not None:
            ex.put(grad, grad_own if col is None else grad_own * col[ex.index.squeeze(1)].unsqueeze(1))
        gx, grows = fmap.backward(x, chunk, start, grad, need_x, need_rows, prescaled=col is not None)
        del grad
        if gx is not None:
            dx = gx if dx is None else dx.add_(gx)
        if grows is not None:
            if single:
                drows = grows
            else:
                assert drows is not None  # allocated above when need_rows (several chunks)
                drows[start:stop] = grows
    return dx, drows


class _ClassLogSumExp(torch.autograd.Function):
    """The eager kernel: one B x R buffer for ``exp(z - m)`` kept from forward and turned into the gradient in place."""

    @staticmethod
    def forward(ctx, x, rows, labels, spec: _Spec):
        ctx.set_materialize_grads(False)
        out, own, lse = _lse_forward(ctx, x, rows, labels, spec)
        ctx.spec = spec
        ctx.save_for_backward(x, rows, labels, lse)
        if spec.ce:
            ctx.mark_non_differentiable(own)
        return out, own

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_lse, grad_own):
        need_x, need_rows = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_x or need_rows):
            return None, None, None, None
        x, rows, labels, lse = ctx.saved_tensors
        dx, drows = _lse_backward(ctx, x, rows, labels, lse, ctx.spec, grad_lse, grad_own, need_x, need_rows)
        return dx, drows, None, None


# -- the same kernel as a custom op, which torch.compile traces (no graph break) ---------------------------
#
# Under ``torch.compile`` the autograd function above cannot be traced: its forward hands Python objects (the
# logit map with its per-block caches, the ``exp(z - m)`` buffer) to its backward. The custom ops below run the
# same forward and backward code on the same kernels, opaque to the compiler, with everything the backward needs
# passed as tensors and numbers: the logit map by kind and parameters, and the per-row shift and sum of the
# exponentials. The backward recomputes the logits (one more GEMM, as a chunked forward does), so nothing is
# carried from forward to backward outside the graph.

_MAP_KINDS: dict[type, str] = {
    LinearLogits: "linear",
    CosineRowsLogits: "cosine_rows",
    NegEuclideanLogits: "neg_euclidean",
}


def _map_args(fmap: LogitMap) -> tuple[str, float, float, bool, tuple[torch.Tensor | None, ...]] | None:
    """``(kind, scale, eps, squared, (bias, x_sq, rows_sq, floor))`` of a built-in map, or None for any other."""
    kind = _MAP_KINDS.get(type(fmap))
    if kind is None:
        return None
    if isinstance(fmap, NegEuclideanLogits):
        floor = None if fmap.squared else fmap.floor
        return kind, 1.0, 0.0, fmap.squared, (None, fmap.x_sq, fmap.rows_sq, floor)
    assert isinstance(fmap, LinearLogits | CosineRowsLogits)
    eps = fmap.eps if isinstance(fmap, CosineRowsLogits) else 0.0
    return kind, fmap.scale, eps, False, (fmap.bias, None, None, None)


def _map_from_args(kind, scale, eps, squared, bias, x_sq, rows_sq, floor) -> LogitMap:
    if kind == "linear":
        return LinearLogits(scale, bias)
    if kind == "cosine_rows":
        return CosineRowsLogits(scale, bias, eps)
    assert x_sq is not None and rows_sq is not None
    return NegEuclideanLogits(x_sq, rows_sq, floor, squared)


def _op_spec(kind, scale, eps, squared, bias, x_sq, rows_sq, floor, dim, group, add_zero, chunk_size, ce) -> _Spec:
    fmap = _map_from_args(kind, scale, eps, squared, bias, x_sq, rows_sq, floor)
    return _Spec(fmap, dim, group, add_zero, chunk_size, ce)


@torch.library.custom_op("pml_anchors::class_lse", mutates_args=())
def _class_lse_op(
    x: torch.Tensor,
    rows: torch.Tensor,
    labels: torch.Tensor | None,
    kind: str,
    scale: float,
    eps: float,
    squared: bool,
    bias: torch.Tensor | None,
    x_sq: torch.Tensor | None,
    rows_sq: torch.Tensor | None,
    floor: torch.Tensor | None,
    dim: int,
    group: int,
    add_zero: bool,
    chunk_size: int | None,
    ce: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out, own, shift2, sums)``: :func:`_lse_forward`'s outputs and the per-row state its backward needs."""
    spec = _op_spec(kind, scale, eps, squared, bias, x_sq, rows_sq, floor, dim, group, add_zero, chunk_size, ce)
    st = _State()
    out, own, _ = _lse_forward(st, x, rows, labels, spec, keep=False)
    empty = out.new_empty(0)
    shift2 = empty if st.shift2 is None else st.shift2
    sums = empty.clone() if st.sums is None else st.sums
    return out.clone() if out._base is not None else out, own, shift2, sums


def _state_shape(rows: int, batch: int, dim: int, chunk_size: int | None, group: int) -> tuple[int, ...]:
    if dim == 1:
        return (batch, 1)
    return (1, rows) if len(_bounds(rows, chunk_size, group)) == 1 else (0,)


@_class_lse_op.register_fake
def _(x, rows, labels, kind, scale, eps, squared, bias, x_sq, rows_sq, floor, dim, group, add_zero, chunk_size, ce):
    acc = acc_dtype(torch.promote_types(x.dtype, rows.dtype))
    b, r = x.shape[0], rows.shape[0]
    out = x.new_empty((b,) if dim == 1 else (r,), dtype=acc)
    own = x.new_empty((b, group) if labels is not None else (0,), dtype=acc)
    state = _state_shape(r, b, dim, chunk_size, group)
    return out, own, x.new_empty(state, dtype=acc), x.new_empty(state, dtype=acc)


@torch.library.custom_op("pml_anchors::class_lse_backward", mutates_args=())
def _class_lse_backward_op(
    x: torch.Tensor,
    rows: torch.Tensor,
    labels: torch.Tensor | None,
    kind: str,
    scale: float,
    eps: float,
    squared: bool,
    bias: torch.Tensor | None,
    x_sq: torch.Tensor | None,
    rows_sq: torch.Tensor | None,
    floor: torch.Tensor | None,
    dim: int,
    group: int,
    add_zero: bool,
    chunk_size: int | None,
    ce: bool,
    out: torch.Tensor,
    own: torch.Tensor,
    shift2: torch.Tensor,
    sums: torch.Tensor,
    grad_out: torch.Tensor,
    grad_own: torch.Tensor | None,
    need_x: bool,
    need_rows: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d x, d rows)`` (empty where not needed) from :func:`_lse_backward`, the logits recomputed."""
    spec = _op_spec(kind, scale, eps, squared, bias, x_sq, rows_sq, floor, dim, group, add_zero, chunk_size, ce)
    st = _State()
    st.bounds = _bounds(rows.shape[0], chunk_size, group)
    st.shift2 = shift2 if shift2.numel() else None
    st.sums = sums if sums.numel() else None
    if ce and group > 1:
        st.own_softmax = torch.softmax(own, dim=1)
    dx, drows = _lse_backward(st, x, rows, labels, out, spec, grad_out, grad_own, need_x, need_rows)
    return (x.new_empty(0) if dx is None else dx), (rows.new_empty(0) if drows is None else drows)


@_class_lse_backward_op.register_fake
def _(
    x,
    rows,
    labels,
    kind,
    scale,
    eps,
    squared,
    bias,
    x_sq,
    rows_sq,
    floor,
    dim,
    group,
    add_zero,
    chunk_size,
    ce,
    out,
    own,
    shift2,
    sums,
    grad_out,
    grad_own,
    need_x,
    need_rows,
):
    return x.new_empty(x.shape if need_x else (0,)), rows.new_empty(rows.shape if need_rows else (0,))


_OP_ARGS = 16  # the forward op's inputs


def _class_lse_setup(ctx, inputs, output):
    out, own, shift2, sums = output
    ctx.args = inputs[3:_OP_ARGS]  # everything but x, rows, labels: (kind, ..., ce)
    x, rows, labels = inputs[:3]
    bias, x_sq, rows_sq, floor = inputs[7:11]
    ctx.save_for_backward(x, rows, labels, bias, x_sq, rows_sq, floor, out, own, shift2, sums)
    ce = inputs[_OP_ARGS - 1]
    ctx.mark_non_differentiable(shift2, sums, *((own,) if ce else ()))


def _class_lse_backward(ctx, grad_out, grad_own, _grad_shift2, _grad_sums):
    x, rows, labels, bias, x_sq, rows_sq, floor, out, own, shift2, sums = ctx.saved_tensors
    need_x, need_rows = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_x or need_rows):
        return (None,) * _OP_ARGS
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    inputs = (x, rows, labels, *ctx.args[:4], bias, x_sq, rows_sq, floor, *ctx.args[8:])  # the forward op's, in order
    dx, drows = _class_lse_backward_op(*inputs, out, own, shift2, sums, grad_out, grad_own, need_x, need_rows)
    return (dx if need_x else None, drows if need_rows else None) + (None,) * (_OP_ARGS - 2)


_class_lse_op.register_autograd(_class_lse_backward, setup_context=_class_lse_setup)


# -- small problems: torch's own operations ---------------------------------------------------------------
#
# Where the B x R logits are small, a step's time is the host's: each operation's dispatch, and the Python of the
# autograd function above (its forward and backward run some 20 operations and their bookkeeping). torch's own
# ``F.cross_entropy`` (log_softmax + nll) and ``torch.logsumexp``, with torch's C++ backward, do the same job with
# about half the operations and no Python in the backward: on one CPU thread at B = 8, d = 8, C = 10 a C-NCM step
# takes 0.22 ms instead of 0.29 (benchmarks/loss_speed.py --sizes 8x10 --batch 8 --threads 1). On the CPU the kernel
# catches up near B x R = 32k-64k (benchmarks/loss_speed.py --lse-path); on an accelerator, where every
# operation is a kernel launch of a few microseconds, torch's path should win up to millions of entries (the
# limit below is a prediction until a GPU run measures it: docs/gpu.md). Memory: torch's path holds up to three
# B x R float32 tensors at once (logits, log-probabilities, their gradient) where the kernel holds one: 48 MB at
# the accelerator's limit.

#: The largest B x R logit matrix computed with torch's own operations, by device type ("cpu" or any other):
#: beyond it, and always when chunked, the hand-written kernel (one B x R buffer, base-2 exponentials).
NATIVE_MAX_ENTRIES = {"cpu": 1 << 15, "accelerator": 1 << 22}
#: the maps with a ``logits`` method (the Euclidean one's torch form takes more operations than its kernel)
_NATIVE_MAPS = (LinearLogits, CosineRowsLogits)


def _torch_native(x: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor | None, spec: _Spec) -> bool:
    """Whether this log-sum-exp runs as torch's own operations (:func:`_native_lse`): along the classes, one chunk,
    a built-in linear or cosine map, at least one class left after the exclusion (else the kernel gives lse = -inf
    with a zero gradient, ``torch.logsumexp`` a NaN one), and B x R within ``NATIVE_MAX_ENTRIES`` for the device.
    (Along the batch, Proxy Anchor's sums, torch's form measured no faster.)"""
    if spec.dim != 1 or spec.add_zero or type(spec.logit_map) not in _NATIVE_MAPS:
        return False
    r = rows.shape[0]
    if len(_bounds(r, spec.chunk_size, spec.group)) > 1:
        return False
    if labels is not None and not spec.ce and r <= spec.group:
        return False
    limit = NATIVE_MAX_ENTRIES["cpu" if x.device.type == "cpu" else "accelerator"]
    return x.shape[0] * r <= limit


def _native_lse(x, rows, labels, spec: _Spec) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_apply`'s ``(out, own)`` from torch's operations: ``F.cross_entropy`` (``ce``; with sub-centres,
    -logsumexp of the own rows' log-softmax), else ``torch.logsumexp`` of the logits with the own rows at -inf."""
    z = spec.logit_map.logits(x, rows)
    if labels is None:
        return torch.logsumexp(z, dim=1), z.new_empty(0)
    b, group = z.shape[0], spec.group
    index = labels.view(-1, 1, 1).expand(-1, 1, group)
    grouped = z.view(b, z.shape[1] // group, group)  # B may be 0
    if spec.ce:
        own = grouped.detach().gather(1, index).squeeze(1)
        if group == 1:
            return torch.nn.functional.cross_entropy(z, labels, reduction="none"), own
        logp = torch.log_softmax(z, dim=1).view(grouped.shape)
        return torch.logsumexp(logp.gather(1, index).squeeze(1), dim=1).neg(), own
    own = grouped.gather(1, index).squeeze(1)
    others = grouped.scatter(1, index, float("-inf")).view(z.shape)
    return torch.logsumexp(others, dim=1), own


def _apply(x, rows, labels, spec: _Spec) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, own)``: torch's own operations (a small problem, :func:`_torch_native`), else the eager autograd
    function, or under ``torch.compile`` the custom op (a built-in map) or the autograd function behind
    ``torch.compiler.disable`` (any other map: a graph break)."""
    if _torch_native(x, rows, labels, spec):
        return _native_lse(x, rows, labels, spec)
    if not torch.compiler.is_compiling():
        return _ClassLogSumExp.apply(x, rows, labels, spec)
    args = _map_args(spec.logit_map)
    if args is None:
        return _disabled_apply(x, rows, labels, spec)
    kind, scale, eps, squared, tensors = args
    out, own, _, _ = _class_lse_op(
        x,
        rows,
        labels,
        kind,
        scale,
        eps,
        squared,
        *tensors,
        spec.dim,
        spec.group,
        spec.add_zero,
        spec.chunk_size,
        spec.ce,
    )
    return out, own


@_eager_under_compile
def _disabled_apply(x, rows, labels, spec):
    return _ClassLogSumExp.apply(x, rows, labels, spec)


def _long_labels(labels: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """``labels`` as ``long`` once checked to be ``batch`` integers (a shorter or 2-D tensor would exclude the wrong
    entries of some rows instead of failing)."""
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of class indices, got {labels.dtype}")
    if labels.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), one class per row of x, got {tuple(labels.shape)}")
    return labels.long()


@overload
def class_logsumexp(
    x: torch.Tensor,
    rows: torch.Tensor,
    logit_map: LogitMap,
    *,
    dim: int = 1,
    exclude: torch.Tensor,
    group: int = 1,
    add_zero: bool = False,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def class_logsumexp(
    x: torch.Tensor,
    rows: torch.Tensor,
    logit_map: LogitMap,
    *,
    dim: int = 1,
    exclude: None = None,
    group: int = 1,
    add_zero: bool = False,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, None]: ...


def class_logsumexp(
    x: torch.Tensor,
    rows: torch.Tensor,
    logit_map: LogitMap,
    *,
    dim: int = 1,
    exclude: torch.Tensor | None = None,
    group: int = 1,
    add_zero: bool = False,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-sum-exp of the logits ``z = logit_map(x, rows)`` (B x R) along ``dim``, streamed over row chunks.

    :param x: (B, d) samples (differentiable).
    :param rows: (R, d) anchor rows (differentiable), R = K * ``group``.
    :param logit_map: a :class:`LogitMap`.
    :param dim: 1: over the classes, one value per sample (B,); 0: over the batch, one per row (R,).
    :param exclude: labels (B,) in [0, K): leave ``z[i, y_i * group : (y_i + 1) * group]`` out of the sum.
    :param group: rows per class (sub-centres); chunks never split a class.
    :param add_zero: add an implicit logit 0 to every sum: ``log(1 + sum exp z)``.
    :param chunk_size: rows per chunk (rounded down to whole groups); ``None`` processes all rows at once.
    :returns: ``(lse, excluded)``: ``lse`` (B,) or (R,), in at least float32, and the excluded logits (B,
        ``group``) (``None`` without ``exclude``); both are differentiable (gradients flow into ``x`` and
        ``rows`` through the same hand-written backward).

    The backward is exact (no approximation): d lse / d z = softmax along ``dim``; chunked, every chunk's
    logits are recomputed once. A second backward (``retain_graph=True``) recomputes and gives the same
    result; double backward (``create_graph=True``) raises ``RuntimeError`` (see :func:`once_differentiable`).
    Small problems (B x R up to ``NATIVE_MAX_ENTRIES``, a linear or cosine map along the classes, unchunked) run
    as torch's own operations instead: the same values and gradients, fewer operations, exact double backward.
    """
    if dim not in (0, 1):
        raise ValueError(f"dim must be 0 or 1, got {dim}")
    if dim == 0 and group != 1:
        raise ValueError("group > 1 needs dim=1")
    if rows.shape[0] % group:
        raise ValueError(f"rows ({rows.shape[0]}) must be a multiple of group ({group})")
    spec = _Spec(logit_map, dim, int(group), bool(add_zero), check_chunk_size(chunk_size))
    labels = None if exclude is None else _long_labels(exclude, x.shape[0], "exclude")
    lse, excluded = _apply(x, rows, labels, spec)
    return lse, (excluded if labels is not None else None)


def class_cross_entropy(
    x: torch.Tensor,
    rows: torch.Tensor,
    logit_map: LogitMap,
    labels: torch.Tensor,
    *,
    group: int = 1,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample softmax cross-entropy over the logits ``z = logit_map(x, rows)`` (B x R), R = K * ``group``.

    ``ce_i = logsumexp_j z_ij - logsumexp_{k in class y_i} z_ik`` (with ``group=1`` the usual
    ``F.cross_entropy(z, labels, reduction="none")``; with sub-centres, -log of the summed probability of the
    own class's ``group`` rows), in one autograd function: d ce / d z = softmax(z) - softmax over the own
    rows, written in place into the saved ``exp(z - max)``. Same streaming (``chunk_size``) and exactness as
    :func:`class_logsumexp`.

    :returns: ``(ce, own)``: ``ce`` (B,) in at least float32 (differentiable), and the own class's logits
        (B, ``group``) as constants (e.g. for an argmax).

    Small problems (B x R up to ``NATIVE_MAX_ENTRIES``, unchunked) run as ``F.cross_entropy`` over the map's
    logits (torch's backward, exact double backward), which launches fewer operations.
    """
    if rows.shape[0] % group:
        raise ValueError(f"rows ({rows.shape[0]}) must be a multiple of group ({group})")
    spec = _Spec(logit_map, 1, int(group), False, check_chunk_size(chunk_size), ce=True)
    return _apply(x, rows, _long_labels(labels, x.shape[0], "labels"), spec)


def cross_entropy_from_lse(lse_others: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ``log(e^target + e^lse_others) - target`` = ``softplus(lse_others - target)``, exactly.

    ``lse_others`` is the log-sum-exp of the non-target logits (``class_logsumexp(..., exclude=labels)``),
    ``target`` the target logit (or the log-sum-exp of the target class's sub-logits). Computed as
    ``logaddexp(lse_others - target, 0)``: no overflow, no cancellation, non-negative.
    """
    diff = lse_others - target
    return torch.logaddexp(diff, torch.zeros_like(diff))
