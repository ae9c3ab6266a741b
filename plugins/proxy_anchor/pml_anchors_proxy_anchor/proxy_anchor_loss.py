"""Proxy Anchor loss (Kim et al., "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020), eq. (4).

.. math::

    \\ell(X) = \\frac{1}{|P^+|} \\sum_{p \\in P^+} \\log\\Big(1 + \\sum_{x \\in X_p^+} e^{-\\alpha (s(x,p) - \\delta)}\\Big)
             + \\frac{1}{|P|} \\sum_{p \\in P} \\log\\Big(1 + \\sum_{x \\in X_p^-} e^{\\alpha (s(x,p) + \\delta)}\\Big)

with s the cosine similarity, P all K proxies and P+ the proxies with at least one positive in the batch.

A drop-in replacement for PML's ``losses.ProxyAnchorLoss`` (same constructor, sub-losses ``pos_loss``/``neg_loss``
with ``DivisorReducer`` divisors, ``.proxies`` read/assign, PML state dicts load), equal to it in value and gradient,
but:

* one (B x d) @ (d x K) GEMM per batch against the *raw* proxies, their normalisation folded into a column
  scaling (no normalised K x d copy; its Jacobian is applied to the K x d weight gradient in place), and one
  B x K tensor in all, which the backward turns into the gradient in place: the negative term is one
  column-wise log-sum-exp with the positives left out (:func:`pml_anchors.losses.logsumexp.class_logsumexp`); the
  positive term only touches the B positive entries (a segment log-sum-exp over classes with
  ``scatter_reduce`` / ``index_add``), its gradient entering the same B x K gradient. The backward (eq. 6)
  is written out. No one-hot B x K masks, no concatenated zero column (PML materialises about ten B x K
  temporaries); ``chunk_size=`` streams the proxies in chunks (O(B * chunk) memory, same values and
  gradients), e.g. for a million classes;
* ``log(1 + sum exp)`` is a log-sum-exp with an implicit zero logit, so fp16/bf16 stay finite at alpha = 32;
* the stored proxies keep their dtype under fp64 inputs or autocast (PML's ``cast_types`` rewrites them).
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity
from pytorch_metric_learning.reducers import DivisorReducer

from pml_anchors.losses import AnchorLoss
from pml_anchors.losses.logsumexp import (
    CosineRowsLogits,
    LinearLogits,
    acc_dtype,
    class_logsumexp,
    once_differentiable,
)
from pml_anchors.validators import check_real

__all__ = ["ProxyAnchorLoss", "proxy_anchor_from_cosine"]


class _L2Normalize(torch.autograd.Function):
    """``F.normalize(x, dim=1)`` (eps 1e-12) with a hand-written backward: ``(g - n (n . g)) / max(|x|, eps)``.

    Same values to rounding; about half the time of autograd's version for the K x d proxies (a cost comparable to
    the GEMM itself when d ~ B). Row norms are taken in at least float32.
    """

    @staticmethod
    def forward(ctx, x):
        acc = torch.promote_types(x.dtype, torch.float32)
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=acc)
        tiny = norm < 1e-12  # rows divided by eps: no projection term in the gradient (as F.normalize)
        inv = norm.clamp_min_(1e-12).reciprocal_()
        out = (x * inv).to(x.dtype)
        ctx.save_for_backward(out, inv, tiny)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        out, inv, tiny = ctx.saved_tensors
        dot = torch.linalg.vecdot(out, grad, dim=1).unsqueeze(1).masked_fill_(tiny, 0)
        return ((grad - out * dot) * inv).to(out.dtype)


def _l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return _L2Normalize.apply(x)


class _ValueWithGradient(torch.autograd.Function):
    """Returns ``value`` (a constant); its gradient goes to ``source`` times ``slope``.

    The positive logits alpha * (delta - s(x, p_y)) + w - 1 take their value from a precise row-wise dot product
    and their gradient through the GEMM's entry z[i, y_i] = alpha * (s + delta) + w - 1 (slope -1).
    """

    @staticmethod
    def forward(ctx, value, source, slope):
        ctx.slope = slope
        ctx.dtype = source.dtype
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return None, (grad * ctx.slope).to(ctx.dtype), None


class _ProxyAnchorTerms(torch.autograd.Function):
    """Per-proxy positive and negative terms of eq. (4) from the logits, with the eq. (6) gradient.

    Inputs: ``neg_logits`` (B x K) = alpha * (s + delta) + (w - 1), overwritten (a fresh tensor nobody else needs); ``pos_logits`` (B) = alpha * (delta - s(x, p_y))
    + (w - 1), i.e. ``2 * (alpha * delta + w - 1) - neg_logits[i, y_i]``, given separately so that it can be
    computed more precisely than the (possibly bf16) B x K matrix; its gradient is returned through
    ``neg_logits[i, y_i]`` (d pos_logits / d neg_logits[i, y_i] = -1), so the whole backward is one B x K tensor
    feeding the GEMM's backward. Outputs: ``pos`` (K) = log(1 + sum_{x in X+_p} e^{pos_logit}) (0 without
    positives) and ``neg`` (K) = log(1 + sum_{x in X-_p} e^{neg_logit}); both are stable log-sum-exps with an
    implicit zero logit (finite in fp16/bf16 at alpha = 32), accumulated and returned in float32 for fp16/bf16
    logits (the loss itself is float32 for 16-bit embeddings, see ``AnchorLoss.forward``).
    """

    @staticmethod
    def forward(ctx, neg_logits, pos_logits, labels):
        num_classes = neg_logits.shape[1]
        acc = torch.promote_types(neg_logits.dtype, torch.float32)  # K-sized results: fp32 for fp16/bf16 inputs
        # Negative term: column-wise log(1 + sum exp) with the positives masked out, IN PLACE: ``neg_logits``
        # becomes ``hard`` (h-(x) e^{-shift}, 0 at the positives), the only B x K tensor, kept for backward.
        hard = neg_logits.scatter_(1, labels.unsqueeze(1), float("-inf"))
        col_shift = hard.amax(dim=0).clamp_min_(0)
        hard.sub_(col_shift).exp_()
        ctx.mark_dirty(hard)
        ctx.set_materialize_grads(False)
        col_shift = col_shift.to(acc)
        neg_norm = hard.sum(dim=0, dtype=acc).add_(torch.exp(-col_shift))
        neg = col_shift + torch.log(neg_norm)
        # Positive term: a segment log(1 + sum exp) over the B positive entries, grouped by class.
        pos_logits = pos_logits.to(acc)
        seg_shift = torch.zeros(num_classes, dtype=acc, device=pos_logits.device)
        seg_shift = seg_shift.scatter_reduce(0, labels, pos_logits, reduce="amax", include_self=True)
        pos_exp = torch.exp(pos_logits - seg_shift[labels])
        pos_norm = torch.exp(-seg_shift).index_add_(0, labels, pos_exp)
        pos = seg_shift + torch.log(pos_norm)
        ctx.save_for_backward(hard, neg_norm, pos_exp / pos_norm[labels], labels)
        return pos, neg, hard

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_pos, grad_neg, _grad_hard):
        hard, neg_norm, pos_weight, labels = ctx.saved_tensors
        if grad_neg is None:
            grad_neg = torch.zeros_like(neg_norm)
        if grad_pos is None:
            grad_pos = torch.zeros_like(neg_norm)
        # Eq. (6): d neg_p / d logit = h-(x) / (1 + sum h-), d pos_p / d logit = h+(x) / (1 + sum h+).
        grad = hard * (grad_neg / neg_norm).to(hard.dtype)
        grad.scatter_(1, labels.unsqueeze(1), (-grad_pos[labels] * pos_weight).to(grad.dtype).unsqueeze(1))
        return grad, None, None


def _proxy_anchor_terms(
    neg_logits: torch.Tensor, pos_logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-proxy positive and negative terms of eq. (4) (see :class:`_ProxyAnchorTerms`; ``neg_logits`` is
    overwritten) and |P+|."""
    pos, neg, _ = _ProxyAnchorTerms.apply(neg_logits, pos_logits, labels)
    num_with_pos = torch.bincount(labels, minlength=neg_logits.shape[1]).count_nonzero()
    return pos, neg, num_with_pos


def proxy_anchor_from_cosine(
    cos: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 32.0,
    margin: float = 0.1,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (4) from a B x K cosine matrix: returns ``(positive term, negative term)``; the loss is their sum.

    ``weights`` are per-sample miner weights (constants) entering as ``+ (w - 1)`` in every exponent (PML's
    convention).
    Differentiable w.r.t. ``cos`` (the gradient is the paper's eq. 6). Used to test the loss against closed forms.
    """
    labels = labels.long()
    shift = torch.zeros_like(cos[:, 0]) if weights is None else weights.detach().to(cos.dtype) - 1
    neg_logits = alpha * (cos + margin) + shift.unsqueeze(1)
    pos_logits = alpha * (margin - cos.detach().gather(1, labels.unsqueeze(1)).squeeze(1)) + shift
    pos, neg, num_with_pos = _proxy_anchor_terms(neg_logits, pos_logits, labels)
    return pos.sum() / num_with_pos, neg.sum() / cos.shape[1]


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by max(norm, 1e-12), as ``F.normalize`` (no gradient needed)."""
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)


class _SegmentLog1pSumExp(torch.autograd.Function):
    """Per class p: log(1 + sum_{i: y_i = p} e^{logits_i}) (0 for classes without samples), shifted by the
    per-class max (stable); d / d logits_i = e^{logits_i} / (1 + sum_{j: y_j = y_i} e^{logits_j})."""

    @staticmethod
    def forward(ctx, logits, labels, num_classes):
        seg_shift = logits.new_zeros(num_classes).scatter_reduce_(0, labels, logits, reduce="amax", include_self=True)
        pos_exp = torch.exp(logits - seg_shift[labels])
        pos_norm = torch.exp(-seg_shift).index_add_(0, labels, pos_exp)
        ctx.save_for_backward(pos_exp.div_(pos_norm[labels]), labels)
        return seg_shift.add_(pos_norm.log_())

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        weight, labels = ctx.saved_tensors
        return grad[labels] * weight, None, None


def _segment_log1p_sum_exp(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per class p: log(1 + sum_{i: y_i = p} e^{logits_i}) (0 for classes without samples), differentiable."""
    return _SegmentLog1pSumExp.apply(logits, labels, num_classes)


class _DivisorReducer(DivisorReducer):
    """PML's ``DivisorReducer`` (sum / divisor, 0 for a zero divisor) without its host reads: PML's tests
    ``divisor != 0`` and ``isnan(output)`` in Python, a device sync per call and a graph break under
    ``torch.compile``. Here a tensor divisor stays on the device; the float16 retry PML does on NaN is not needed
    (the losses arrive in at least float32)."""

    def sum_and_divide(self, losses, embeddings, divisor):
        if not torch.is_tensor(divisor):
            return self.zero_loss(embeddings) if divisor == 0 else torch.sum(losses) / divisor
        total = torch.sum(losses) / divisor.clamp_min(1)  # clamped: no 0 / 0 in the gradient of the branch not taken
        return torch.where(divisor != 0, total, 0.0)


class ProxyAnchorLoss(AnchorLoss):
    """Proxy Anchor loss (Kim et al., CVPR 2020, eq. 4); drop-in for PML's ``ProxyAnchorLoss``.

    Switch from PML with one line::

        # from pytorch_metric_learning.losses import ProxyAnchorLoss
        from pml_anchors_proxy_anchor import ProxyAnchorLoss   # or pml_anchors.get_loss("proxy_anchor", K, d)

    :param num_classes: number of classes K (one proxy each).
    :param embedding_size: embedding width d.
    :param margin: delta in eq. (4), >= 0 (paper: 0.1).
    :param alpha: scale alpha in eq. (4), > 0 (paper: 32).
    :param kwargs: :class:`~pml_anchors.losses.AnchorLoss` options (``anchors`` default ``"kaiming_normal"``,
        i.e. N(0, 2/K) like the official code and PML; ``seed``; ``learnable``) and PML's (``reducer``, default
        ``DivisorReducer``; ``distance``, default ``CosineSimilarity``; ``weight_regularizer``; ``chunk_size``
        to stream the proxies in chunks; ...).

    Proxies are a K x d ``nn.Parameter`` available as ``.anchors`` and, PML's name, ``.proxies`` (assignable).
    Train them with their own lr, 100x the base lr in the paper: ``pml_anchors.param_groups(loss, lr,
    {"anchors": 100.0})``. With an ``indices_tuple`` each sample's miner weight w adds ``w - 1`` to its exponents.
    """

    learnable_anchors = True
    default_anchors = "kaiming_normal"
    pml_counterpart = "ProxyAnchorLoss"  # same arguments; its state_dict (``proxies``) loads as the anchors

    def __init__(self, num_classes: int, embedding_size: int, margin: float = 0.1, alpha: float = 32, **kwargs: Any):
        margin = check_real(margin, "margin (delta of eq. 4)", minimum=0.0)
        alpha = check_real(alpha, "alpha (eq. 4)", minimum=0.0, open_min=True)
        super().__init__(num_classes, embedding_size, **kwargs)
        self.require_distance(
            isinstance(self.distance, DotProductSimilarity) and self.distance.power == 1,
            "a cosine similarity (eq. 4) (or, as PML allows, a raw dot product)",
            "CosineSimilarity()",
        )
        self.margin = margin
        self.alpha = alpha
        self.add_to_recordable_attributes(list_of_names=["alpha", "margin"], is_stat=False)

    # -- PML compatibility: ``proxies`` is another name for ``anchors`` ------------------------------------
    @property
    def proxies(self) -> torch.Tensor:
        """The proxies (K x d), PML's name for :attr:`anchors`."""
        return self.anchors

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "proxies":  # ``loss.proxies = param`` replaces the anchors, as in PML
            if torch.is_tensor(value):
                self.check_anchor_shape(value)
            name = "anchors"
        super().__setattr__(name, value)

    # -- PML protocol -----------------------------------------------------------------------------------
    def get_default_reducer(self):
        return _DivisorReducer()

    def get_default_distance(self):
        return CosineSimilarity()

    def _sub_loss_names(self):
        return ["pos_loss", "neg_loss"]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The distance's normalisation (L2 rows for the default cosine similarity)."""
        if not self.distance.normalize_embeddings:
            return x
        return _l2_normalize(x) if self.distance.p == 2 else self.distance.normalize(x)

    def _logits(self, embeddings, anchors, weights):
        """``(embeddings, rows, logit map, shift, bias)`` of z = alpha * (s(x, p) + delta) + (w - 1), B x K, from one
        GEMM (shift = w - 1, w: PML's miner weights, 1 without a miner; bias = shift + alpha * delta). Cosine: against
        the raw proxies with their normalisation folded in (CosineRowsLogits), so no normalised K x d copy is made."""
        shift = (weights - 1).to(acc_dtype(embeddings.dtype))
        bias = shift + self.alpha * self.margin
        if self.distance.normalize_embeddings and self.distance.p == 2:
            return _l2_normalize(embeddings), anchors, CosineRowsLogits(self.alpha, bias), shift, bias
        return self.normalize(embeddings), self.normalize(anchors), LinearLogits(self.alpha, bias), shift, bias

    def anchor_losses(self, embeddings, labels, anchors, weights):
        acc = acc_dtype(embeddings.dtype)
        emb, rows, fmap, shift, bias = self._logits(embeddings, anchors, weights)
        # Negative term, per proxy: log(1 + sum_{x in X-_p} e^{z}), the positives left out; also returns z[i, y_i].
        neg, z_pos = class_logsumexp(emb, rows, fmap, dim=0, exclude=labels, add_zero=True, chunk_size=self.chunk_size)
        # Positive term: alpha * (delta - s(x, p_y)) + (w - 1) = 2 * bias - z[i, y_i], its gradient through
        # z[i, y_i]. When the GEMM ran in 16 bits (half inputs, autocast) the value comes from a row-wise dot
        # product in at least fp32 instead.
        if emb.dtype == acc and not torch.is_autocast_enabled(emb.device.type):
            pos_logits = 2 * bias - z_pos.squeeze(1)
        else:
            with torch.no_grad():
                pos_rows = rows[labels].to(acc)
                if isinstance(fmap, CosineRowsLogits):
                    pos_rows = _unit_rows(pos_rows)
                pos_cos = (emb.detach().to(acc) * pos_rows).sum(dim=1)
                pos_value = self.alpha * (self.margin - pos_cos) + shift
            pos_logits = _ValueWithGradient.apply(pos_value, z_pos.squeeze(1), -1.0)
        pos = _segment_log1p_sum_exp(pos_logits, labels, self.num_classes)
        # |P+| (PML's ``len(with_pos_proxies)``) as a tensor: no host read, no graph break (see _DivisorReducer)
        with_pos = torch.zeros(self.num_classes, dtype=pos.dtype, device=pos.device).index_fill_(0, labels, 1)
        return {
            "pos_loss": self.element_loss(pos, divisor=with_pos.sum()),
            "neg_loss": self.element_loss(neg, divisor=self.num_classes),
        }

    def class_parallel_losses(self, embeddings, labels, anchors, weights, shard):
        """Eq. (4) with the proxies sharded over processes (:mod:`pml_anchors.losses.class_parallel`): each process
        computes the per-proxy positive and negative terms of its block (the negative one with the same kernel as
        :meth:`anchor_losses`), the K-vectors are gathered and |P+| counted on the global batch: the same loss dict,
        value and gradients as :meth:`anchor_losses` on the whole batch."""
        acc = acc_dtype(embeddings.dtype)
        emb, rows, fmap, shift, bias = self._logits(embeddings, anchors, weights)
        neg, z_pos, owned, local = shard.batch_logsumexp(
            emb, rows, fmap, labels, add_zero=True, chunk_size=self.chunk_size
        )
        mine = owned.nonzero().squeeze(1)  # the samples whose proxy is in this block
        if emb.dtype == acc and not torch.is_autocast_enabled(emb.device.type):
            pos_logits = 2 * bias[mine] - z_pos[mine]
        else:
            with torch.no_grad():
                pos_rows = rows[local[mine]].to(acc)
                if isinstance(fmap, CosineRowsLogits):
                    pos_rows = _unit_rows(pos_rows)
                pos_cos = (emb.detach()[mine].to(acc) * pos_rows).sum(dim=1)
                pos_value = self.alpha * (self.margin - pos_cos) + shift[mine]
            pos_logits = _ValueWithGradient.apply(pos_value, z_pos[mine], -1.0)
        pos = shard.cat(_segment_log1p_sum_exp(pos_logits, local[mine], shard.size))
        neg = shard.cat(neg)
        with_pos = torch.zeros(shard.rows, dtype=pos.dtype, device=pos.device).index_fill_(0, labels, 1)
        return {
            "pos_loss": self.element_loss(pos, divisor=with_pos.sum()),
            "neg_loss": self.element_loss(neg, divisor=shard.rows),
        }

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine similarities to the proxies (B x K), as PML's ``get_logits``."""
        return self.distance(embeddings, self.cast_anchors(embeddings))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, alpha={self.alpha}"
