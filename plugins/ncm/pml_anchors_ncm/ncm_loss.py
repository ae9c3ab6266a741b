"""Anchor-based Nearest Class Mean losses E-NCM and C-NCM (Hao et al., arXiv 1804.08087).

p(c|x) = exp(-M(f(x), a_c)) / sum_c' exp(-M(f(x), a_c'))  (eq. 4),  L = -(1/N) sum_i log p(y_i|x_i)  (eq. 5)

with fixed anchors a_c and

* E-NCM: M(f, a) = ||f - a||, the plain (not squared) Euclidean distance (eq. 7); ``squared=True`` uses
  ||f - a||^2, the Gaussian-mixture reading of §3.3;
* C-NCM: M(f, a) = 1 - cos(f, a) (eq. 8). Softmax is shift invariant, so this is cross-entropy on cos (scale 1).

No scale, no margin, no bias. Prediction is the nearest anchor (eq. 3).

The loss runs on :func:`pml_anchors.losses.logsumexp.class_cross_entropy` (C-NCM) or
:func:`~pml_anchors.losses.logsumexp.class_logsumexp` over the other classes plus the own class's exact distance
(E-NCM): one GEMM, the logits transformed and reduced in place, the backward written out (in the same buffer), and the fixed anchors'
normalised copy (C-NCM) or squared norms (E-NCM) computed once and cached. ``chunk_size=`` streams the
classes in chunks (same values and gradients) for very large K.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import BaseDistance, CosineSimilarity, LpDistance

from pml_anchors.anchors import min_pairwise_angle, min_pairwise_angle_if_cheap
from pml_anchors.losses import AnchorLoss
from pml_anchors.losses.distances import is_cosine, is_euclidean
from pml_anchors.losses.logsumexp import (
    LinearLogits,
    NegEuclideanLogits,
    class_cross_entropy,
    class_logsumexp,
    cross_entropy_from_lse,
)
from pml_anchors.validators import check_choice, check_real, optional_bool

from .tiered import ncm_tier, ncm_tiered

__all__ = ["CNCMLoss", "ENCMLoss", "NCMLoss"]

METRICS = ("euclidean", "cosine")


class _NegSqrtFloor(torch.autograd.Function):
    """-sqrt(max(d2, floor)) computed in place on ``d2``; saves only its output.

    The gradient is 0 where d2 <= floor (a feature on, or within rounding noise of, an anchor), so the
    undefined derivative of sqrt at 0 never produces NaN or a spike.
    """

    @staticmethod
    def forward(ctx, d2: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
        ctx.mark_dirty(d2)
        out = d2.clamp_(min=floor).sqrt_().neg_()
        ctx.save_for_backward(out, floor)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out, floor = ctx.saved_tensors
        # d(-sqrt(t))/dt = 1 / (2 * out), out <= -sqrt(floor) < 0; zero on the clamped region.
        return torch.div(grad, out).mul_(0.5).masked_fill_(out >= -floor.sqrt(), 0), None


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bfloat16, the dtype itself for float32/float64."""
    return torch.promote_types(dtype, torch.float32)


def _design_min_angle(anchors: torch.Tensor, tiered: bool) -> float | None:
    """Smallest pairwise angle of freshly built anchors: closed form for tiers 1-4, else measured if cheap
    (``None``: measured when first asked)."""
    k, d = anchors.shape
    if k < 2:
        return None
    if tiered:
        tier = ncm_tier(k, d)
        if tier in ("one_hot", "orthoplex"):
            return math.pi / 2
        if tier == "polygon":
            return 2 * math.pi / k
        if tier == "simplex":
            return math.acos(-1.0 / (k - 1))
    return min_pairwise_angle_if_cheap(anchors)


class NCMLoss(AnchorLoss):
    """Anchor-based NCM loss with a choice of metric; see :class:`ENCMLoss` and :class:`CNCMLoss`.

    :param num_classes: number of classes K.
    :param embedding_size: embedding width d.
    :param metric: ``"euclidean"`` (E-NCM, eq. 7) or ``"cosine"`` (C-NCM, eq. 8).
    :param squared: E-NCM only: use the squared distance (the GMM reading of §3.3) instead of the plain
        distance of eq. 7. ``None`` (default): from ``distance`` when one is given (``power=2``), else ``False``.
    :param temperature: C-NCM only: the logits are cos / temperature. The paper's C-NCM is 1 (eq. 8, the default);
        PML's ``NormalizedSoftmaxLoss(temperature=t)`` is this loss with the same ``t`` on learned instead of
        fixed anchors (its default is 0.05).
    :param eps: smallest resolved norm/distance. C-NCM divides by ``max(||x||, eps)`` (as ``F.normalize``), so a
        zero feature gives cos 0 and finite gradients. E-NCM computes the own class's distance from ``x - a_y``
        itself (exact at any distance; clamped at ``eps``, so a feature exactly on its anchor gets a zero
        gradient from it, not NaN) and the other classes' from one GEMM, ``d^2 = ||x||^2 - 2 x.a + ||a||^2``,
        clamped at ``eps^2 + 4u (||x||^2 + max_c ||a_c||^2)`` (``u`` the unit roundoff of the GEMM's dtype, e.g.
        bf16 under autocast): below that floor d^2 is rounding noise, so the distance to *another* anchor is flat
        there (gradient 0) instead of spiking.
    :param anchors: default the tiered rule :func:`~pml_anchors_ncm.tiered.ncm_tiered` (seeded random
        class assignment); any registered geometry name, callable or (K, d) tensor works.
    :param kwargs: :class:`~pml_anchors.losses.AnchorLoss` options (``anchors``, ``seed``, ``learnable``,
        ``anchor_kwargs``, ``chunk_size``, PML's ``reducer``, regularizers, ...). ``distance``: E-NCM computes raw
        Euclidean distances, ``LpDistance(normalize_embeddings=False)`` (``power=2``: squared); C-NCM cosines,
        ``CosineSimilarity()``; any other is a ``ValueError``.
    """

    default_anchors = staticmethod(ncm_tiered)  # fixed anchors (the base default): "fixed during training", §3.2

    def __init__(
        self,
        num_classes: int,
        embedding_size: int | None = None,
        metric: str = "euclidean",
        squared: bool | None = None,
        eps: float = 1e-12,
        temperature: float = 1.0,
        **kwargs: Any,
    ):
        check_choice(metric, "metric", METRICS)
        squared = optional_bool(squared, "squared")
        if squared and metric != "euclidean":
            raise ValueError("squared=True applies to the Euclidean metric (E-NCM) only, not to metric='cosine'")
        distance = kwargs.get("distance")
        if squared is None:  # from the distance a PML user passes: LpDistance(power=2) is the squared distance
            squared = metric == "euclidean" and getattr(distance, "power", 1) == 2
        self.temperature = check_real(temperature, "temperature", minimum=0.0, open_min=True)
        if self.temperature != 1.0 and metric != "cosine":
            raise ValueError("temperature applies to C-NCM (metric='cosine') only: E-NCM's logits are -distances")
        self.metric, self.squared = metric, squared  # before PML's __init__, which asks get_default_distance
        self.eps = check_real(eps, "eps", minimum=0.0, open_min=True)
        super().__init__(num_classes, embedding_size, **kwargs)
        if metric == "cosine":
            self.require_distance(is_cosine(self.distance), "cosines (eq. 8)", "CosineSimilarity()")
        else:
            power = 2 if squared else 1
            self.require_distance(
                is_euclidean(self.distance, (power,)),
                f"raw Euclidean distances{' squared' if squared else ''} (eq. 7)",
                f"LpDistance(normalize_embeddings=False, p=2, power={power})",
            )
            self.add_to_recordable_attributes(name="eps", is_stat=False)
        if metric == "cosine":
            self.add_to_recordable_attributes(name="temperature", is_stat=False)
        self._design_angle = _design_min_angle(self.anchors, tiered=kwargs.get("anchors") is None)

    def get_default_distance(self) -> BaseDistance:
        if self.metric == "cosine":
            return CosineSimilarity()
        return LpDistance(normalize_embeddings=False, p=2, power=2 if self.squared else 1)

    # -- scores ---------------------------------------------------------------------------------
    def _unit_features(self, embeddings: torch.Tensor) -> torch.Tensor:
        acc = _accumulate_dtype(embeddings.dtype)
        return F.normalize(embeddings.to(acc), dim=1, eps=self.eps).to(embeddings.dtype)

    def _unit_anchors(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The L2-normalised anchors in the embeddings' dtype (computed once while they are fixed)."""

        def unit(a: torch.Tensor) -> torch.Tensor:
            return F.normalize(a.to(_accumulate_dtype(a.dtype)), dim=1, eps=self.eps).to(a.dtype)

        return self.cached_anchors("unit", embeddings, unit)

    def _logits(self, embeddings: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """-M(f(x), a_c) for every sample and class (B x K), in at least float32 (the plain formula)."""
        acc = _accumulate_dtype(embeddings.dtype)
        if self.metric == "cosine":
            x = self._unit_features(embeddings)
            a = F.normalize(anchors.to(acc), dim=1, eps=self.eps).to(anchors.dtype)
            return (x @ a.T).to(acc) / self.temperature
        x_sq = embeddings.to(acc).square().sum(dim=1, keepdim=True)  # B x 1
        a_sq = anchors.to(acc).square().sum(dim=1)  # K
        xa = embeddings @ anchors.T  # the one GEMM (autocast may run it in bf16)
        unit_roundoff = torch.finfo(xa.dtype).eps
        if xa.dtype != acc:
            xa = xa.to(acc)
        if self.squared:
            return xa.mul_(2).sub_(x_sq).sub_(a_sq)  # -||x - a||^2
        d2 = xa.mul_(-2).add_(x_sq).add_(a_sq)
        with torch.no_grad():
            floor = (x_sq.detach() + a_sq.detach().max()).mul_(4 * unit_roundoff).add_(self.eps**2)
        return _NegSqrtFloor.apply(d2, floor)

    def anchor_losses(self, embeddings, labels, anchors, weights):
        """Eq. 5 per sample: cross-entropy of softmax(-M) (eq. 4), times miner weights; mean by PML's reducer.

        Same value and gradient as ``F.cross_entropy(self._logits(...), labels)`` (one GEMM, reduced in place,
        hand-written backward); E-NCM takes the own class's distance from ``x - a_y`` (see ``eps``), so it is
        more accurate than that formula near the anchor.
        """
        acc = _accumulate_dtype(embeddings.dtype)
        if self.metric == "cosine":
            if anchors.requires_grad:  # learnable anchors: normalise the (differentiable) cast copy
                rows = F.normalize(anchors.to(acc), dim=1, eps=self.eps).to(anchors.dtype)
            else:
                rows = self._unit_anchors(embeddings)
            x = self._unit_features(embeddings)
            logits = LinearLogits(1.0 / self.temperature)
            ce, _ = class_cross_entropy(x, rows, logits, labels, chunk_size=self.chunk_size)
        else:
            x_sq = embeddings.detach().to(acc).square().sum(dim=1)  # its gradient is in the map's backward
            a_sq, a_sq_max = self._anchor_sq_norms(embeddings, anchors)
            floor = None
            if not self.squared:
                gemm_dtype = embeddings.dtype
                if torch.is_autocast_enabled(embeddings.device.type):  # the GEMM's dtype sets the rounding floor
                    with torch.no_grad():
                        gemm_dtype = torch.mm(embeddings[:1].detach(), anchors[:1].detach().T).dtype
                floor = (x_sq + a_sq_max).mul_(4 * torch.finfo(gemm_dtype).eps).add_(self.eps**2)
            fmap = NegEuclideanLogits(x_sq, a_sq, floor, self.squared)
            # The own class's term from x - a_y itself, the others from the GEMM: near its anchor, where E-NCM
            # drives every feature, the GEMM's d^2 = ||x||^2 - 2 x.a + ||a||^2 is rounding noise.
            others, _ = class_logsumexp(embeddings, anchors, fmap, exclude=labels, chunk_size=self.chunk_size)
            ce = cross_entropy_from_lse(others, self._own_logits(embeddings, anchors, labels))
        return {"loss": self.element_loss(ce * weights.to(ce.dtype))}

    def _own_logits(self, embeddings: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """-M(f(x_i), a_{y_i}) (B,) for E-NCM from the differences themselves (exact at any distance).

        The distance is clamped at ``eps``: a feature exactly on its anchor gets a zero gradient from it, not NaN.
        """
        acc = _accumulate_dtype(embeddings.dtype)
        d2 = (embeddings.to(acc) - anchors.to(acc)[labels]).square().sum(dim=1)
        return d2.neg() if self.squared else d2.clamp_min(self.eps**2).sqrt().neg()

    def _anchor_sq_norms(self, embeddings, anchors) -> tuple[torch.Tensor, torch.Tensor]:
        """||a_c||^2 (K,) in the accumulation dtype and their max (constants; cached while anchors are fixed)."""

        def sq_norms(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            sq = a.detach().to(_accumulate_dtype(a.dtype)).square().sum(dim=1)
            return sq, sq.max()

        if anchors.requires_grad:
            return sq_norms(anchors)
        return self.cached_anchors("sq_norms", embeddings, sq_norms)

    def class_parallel_losses(self, embeddings, labels, anchors, weights, shard):
        """Eq. 5 with the classes sharded over processes (:mod:`pml_anchors.losses.class_parallel`): each block's
        log-sum-exp of the other classes, combined across processes; the own class's logit from the block that
        holds it (E-NCM: from ``x - a_y`` itself, as :meth:`anchor_losses`); E-NCM's rounding floor from the largest
        anchor norm of all blocks. Same value and gradients as :meth:`anchor_losses` on the whole batch."""
        acc = _accumulate_dtype(embeddings.dtype)
        if self.metric == "cosine":
            if anchors.requires_grad:
                rows = F.normalize(anchors.to(acc), dim=1, eps=self.eps).to(anchors.dtype)
            else:
                rows = self._unit_anchors(embeddings)
            x = self._unit_features(embeddings)
            others, own = shard.others_logsumexp(
                x, rows, LinearLogits(1.0 / self.temperature), labels, chunk_size=self.chunk_size
            )
            ce = cross_entropy_from_lse(others, own.squeeze(1))
        else:
            x_sq = embeddings.detach().to(acc).square().sum(dim=1)
            a_sq, a_sq_max = self._anchor_sq_norms(embeddings, anchors)
            floor = None
            if not self.squared:
                gemm_dtype = embeddings.dtype
                if torch.is_autocast_enabled(embeddings.device.type):
                    with torch.no_grad():
                        gemm_dtype = torch.mm(embeddings[:1].detach(), anchors[:1].detach().T).dtype
                a_max = shard.amax(a_sq_max.reshape(1))
                floor = (x_sq + a_max).mul_(4 * torch.finfo(gemm_dtype).eps).add_(self.eps**2)
            fmap = NegEuclideanLogits(x_sq, a_sq, floor, self.squared)
            others, _ = shard.others_logsumexp(embeddings, anchors, fmap, labels, chunk_size=self.chunk_size)
            owned, local = shard.owned(labels)
            own = self._own_logits(embeddings, anchors, local)
            ce = cross_entropy_from_lse(others, shard.sum(torch.where(owned, own, torch.zeros_like(own))))
        return {"loss": self.element_loss(ce * weights.to(ce.dtype))}

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """-M(f(x), a_c): minus the (squared) distance for E-NCM, the cosine / temperature for C-NCM (B x K), as
        PML's ``NormalizedSoftmaxLoss.get_logits``."""
        if self.metric == "cosine" and not self.anchors.requires_grad:  # reuse the cached unit anchors
            cosines = self._unit_features(embeddings) @ self._unit_anchors(embeddings).T
            return cosines.to(_accumulate_dtype(embeddings.dtype)) / self.temperature
        return self._logits(embeddings, self.cast_anchors(embeddings))

    def target_min_angle(self) -> float | None:
        """The smallest pairwise angle the anchors were built with (radians); None for a single class.

        The tiered rule's first four tiers have it in closed form; other anchors are measured as built (or, when
        K^2 d > 1e9, when first asked). Anchors that moved since (``learnable=True``) or were replaced by another
        checkpoint's show as a measured ``min_anchor_angle_deg`` that differs from this.
        """
        if self.anchors.shape[0] < 2:
            return None
        if self._design_angle is None:
            self._design_angle = min_pairwise_angle(self.anchors)
        return self._design_angle

    def extra_repr(self) -> str:
        extra = f", squared={self.squared}" if self.metric == "euclidean" else f", temperature={self.temperature:g}"
        return f"{super().extra_repr()}, metric={self.metric!r}{extra}, eps={self.eps:g}"


class ENCMLoss(NCMLoss):
    """E-NCM (Hao et al., arXiv 1804.08087, eq. 4, 5, 7): softmax over minus the Euclidean distance.

    ``squared=True`` uses the squared distance (GMM reading, §3.3). See :class:`NCMLoss` for ``eps``.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int | None = None,
        squared: bool | None = None,
        eps: float = 1e-12,
        **kwargs: Any,
    ):
        if "metric" in kwargs:
            raise TypeError("ENCMLoss uses the Euclidean metric; use NCMLoss(metric=...) to choose")
        if "temperature" in kwargs:
            raise TypeError("ENCMLoss takes no temperature: its logits are -distances (eq. 7); C-NCM has one")
        super().__init__(num_classes, embedding_size, metric="euclidean", squared=squared, eps=eps, **kwargs)


class CNCMLoss(NCMLoss):
    """C-NCM (Hao et al., arXiv 1804.08087, eq. 4, 5, 8): softmax cross-entropy on cos(f(x), a_c), scale 1.

    The drop-in for PML's ``NormalizedSoftmaxLoss(num_classes, embedding_size, temperature)`` with fixed anchors:
    the same arguments (``temperature`` defaults to the paper's 1, PML's to 0.05), and its ``state_dict`` (``W``)
    loads as the anchors.
    """

    pml_counterpart = "NormalizedSoftmaxLoss"

    def __init__(
        self,
        num_classes: int,
        embedding_size: int | None = None,
        temperature: float = 1.0,
        eps: float = 1e-12,
        **kwargs: Any,
    ):
        if "metric" in kwargs or "squared" in kwargs:
            raise TypeError("CNCMLoss uses the cosine metric and takes no 'metric' or 'squared' option")
        super().__init__(num_classes, embedding_size, metric="cosine", eps=eps, temperature=temperature, **kwargs)
