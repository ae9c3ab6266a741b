"""Fixed Sub-Center (F-SC) loss (Zhang & Gong, "The Fixed Sub-Center: A Better Way to Capture Data Complexity",
arXiv 2203.12928).

Each class i has s fixed sub-centres w_{i,j} = mu_i + sigma * N(0, I), mu_i ~ U(-1/sqrt(d), 1/sqrt(d))
(eq. 4-5), frozen (eq. 6). With raw dot-product logits z_{x,j,m} = w_{j,m}^T x (no normalisation, no scale,
no bias) and p~_{x,j,m} = softmax over all K*s sub-classes,

    L = -(1/n) sum_i log sum_k p~_{x_i, y_i, k}  +  beta * (1/2) sum_i ||x_i - w_{y_i, k*}||^2     (eq. 3, 7, 8)

where the compactness term L_sc-c is a SUM over the batch (eq. 7) and k* is the sample's own-class
sub-centre (``assign``).

The cross-entropy term, ``logsumexp(all K*s sub-logits) - logsumexp(own s sub-logits)`` (the same value and
gradient as the log-softmax over all K*s sub-classes), comes from
:func:`pml_anchors.losses.logsumexp.class_cross_entropy`: one GEMM reduced in place with a hand-written backward, no (B, K, s) log-probability copy; ``chunk_size=``
streams the sub-centres in chunks of whole classes.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from pytorch_metric_learning.distances import DotProductSimilarity

from pml_anchors.losses import AnchorLoss
from pml_anchors.losses.distances import is_dot_product
from pml_anchors.losses.logsumexp import LinearLogits, class_cross_entropy, cross_entropy_from_lse
from pml_anchors.validators import check_choice, check_real, positive_int

__all__ = ["ASSIGN_MODES", "FixedSubCenterLoss", "intra_class_cosine"]

#: How L_sc-c picks the sub-centre of each sample: the paper does not say (see ``FixedSubCenterLoss``).
ASSIGN_MODES = ("logit", "distance", "all")
DEFAULT_SUB_CENTERS = 4


def _initializer_options(anchors: Any) -> set[str]:
    """The keyword options a name/callable initializer accepts, of ``sub_centers`` and ``variance``."""
    if isinstance(anchors, str):
        from pml_anchors.plugin.api import get_initializer

        anchors = get_initializer(anchors)
    if torch.is_tensor(anchors) or not callable(anchors):
        return set()
    try:
        params = inspect.signature(anchors).parameters
    except (TypeError, ValueError):
        return set()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return {"sub_centers", "variance"}
    return {"sub_centers", "variance"} & set(params)


class FixedSubCenterLoss(AnchorLoss):
    """F-SC loss over fixed sub-centres stored as a (K, s, d) buffer ``anchors``.

    :param num_classes: number of classes K.
    :param embedding_size: embedding width d.
    :param sub_centers: s, sub-centres per class (paper 4). ``None``: 4, or the middle size of a
        (K, s, d) ``anchors`` tensor.
    :param variance: sigma^2 of eq. 5, a *variance* (paper 1e-3, i.e. std ~0.0316). With small d the
        sub-centres of a class nearly coincide (expected cosine (1/3)/(1/3 + d sigma^2)); consider
        sigma^2 ~ 8e-3 at d = 64. Used only when the anchors are generated.
    :param beta: weight of the compactness term L_sc-c (paper 1e-4); 0 disables it.
    :param assign: which own-class sub-centre L_sc-c pulls x_i to: ``"logit"`` (default) the most probable
        one, k* = argmax_k w_{y_i,k}^T x_i; ``"distance"`` the nearest, argmin_k ||x_i - w_{y_i,k}||;
        ``"all"`` the sum over all s sub-centres.
    :param anchors: default ``"gaussian_subcenters"`` (eq. 4-5, seeded by ``seed``); any initializer that
        returns (K, s, d), or a (K, s, d) tensor. Initializers that accept ``sub_centers``/``variance`` get
        them from this loss's options.
    :param centers_per_class: PML's ``SoftTripleLoss`` name for ``sub_centers`` (its ``la``, ``gamma``, ``margin``
        and ``reg_weight`` have no counterpart here and are refused with the reason).
    :param kwargs: :class:`~pml_anchors.losses.AnchorLoss` options (``seed``, ``learnable``,
        ``anchor_kwargs``, ``chunk_size`` (in sub-centre rows, rounded down to whole classes), PML's
        ``reducer``, ...). ``distance`` is ``DotProductSimilarity(normalize_embeddings=False)`` (raw logits,
        eq. 3); any other is a ``ValueError``. SoftTriple's ``state_dict`` (``fc``) loads as the sub-centres.

    Sub-losses (PML reducer protocol): ``"loss"`` the per-sample cross-entropy (mean-reduced by the default
    reducer) and ``"compactness"`` the already reduced beta * L_sc-c (a sum over the batch, as eq. 7).
    Miner weights (``indices_tuple``) multiply both per-sample terms.
    """

    default_anchors = "gaussian_subcenters"
    shape_arguments = ("num_classes", "embedding_size", "sub_centers")
    pml_counterpart = "SoftTripleLoss"
    refused_pml_arguments = {
        "la": "F-SC's logits are raw dot products w^T x with no scale (eq. 3), so SoftTriple's lambda has no "
        "counterpart",
        "gamma": "F-SC sums the sub-class probabilities of a class (eq. 3) instead of SoftTriple's relaxed max over "
        "its centres, so there is no gamma",
        "margin": "F-SC has no margin (eq. 3)",
        "reg_weight": "F-SC's second term is beta, the sub-class compactness weight (eq. 7-8), not SoftTriple's "
        "centre-merging regulariser",
    }

    def __init__(
        self,
        num_classes: int,
        embedding_size: int | None = None,
        sub_centers: int | None = None,
        variance: float = 1e-3,
        beta: float = 1e-4,
        assign: str = "logit",
        *,
        centers_per_class: int | None = None,
        **kwargs: Any,
    ):
        anchors = kwargs.get("anchors")
        if centers_per_class is not None:  # SoftTriple's name for the same number
            if sub_centers is not None and sub_centers != centers_per_class:
                raise ValueError(
                    f"sub_centers={sub_centers!r} and centers_per_class={centers_per_class!r} (SoftTriple's name for "
                    "it) disagree; pass one"
                )
            sub_centers = centers_per_class
        if sub_centers is None:
            if torch.is_tensor(anchors) and anchors.ndim == 3:
                sub_centers = int(anchors.shape[1])
            else:
                sub_centers = DEFAULT_SUB_CENTERS
        self.sub_centers = positive_int(sub_centers, "sub_centers")
        self.variance = check_real(variance, "variance (sigma^2 of eq. 5, a variance, not a std)", minimum=0.0)
        self.beta = check_real(beta, "beta", minimum=0.0)
        self.assign = check_choice(assign, "assign", ASSIGN_MODES)

        anchor_kwargs = dict(kwargs.pop("anchor_kwargs", None) or {})
        clash = sorted({"sub_centers", "variance"} & set(anchor_kwargs))
        if clash:
            raise ValueError(f"pass {', '.join(clash)} as FixedSubCenterLoss options, not in anchor_kwargs")
        accepted = _initializer_options(self.default_anchors if anchors is None else anchors)
        options = {"sub_centers": self.sub_centers, "variance": self.variance}
        anchor_kwargs.update({k: v for k, v in options.items() if k in accepted})
        super().__init__(num_classes, embedding_size, anchor_kwargs=anchor_kwargs, **kwargs)
        self.require_distance(
            is_dot_product(self.distance),
            "raw dot products w^T x (eq. 3)",
            "DotProductSimilarity(normalize_embeddings=False)",
        )
        self.add_to_recordable_attributes(list_of_names=["sub_centers", "variance", "beta"], is_stat=False)

    @property
    def centers_per_class(self) -> int:
        """SoftTriple's name for :attr:`sub_centers`."""
        return self.sub_centers

    def get_default_distance(self) -> DotProductSimilarity:
        return DotProductSimilarity(normalize_embeddings=False)

    def expected_anchor_shape(self) -> tuple[int, ...]:
        return (self.num_classes, self.sub_centers, self.embedding_size)

    def _sub_loss_names(self):
        return ["loss", "compactness"]

    # -- loss -----------------------------------------------------------------------------------
    def _sub_logits(self, embeddings: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """z = x W^T over all K*s sub-centres, viewed (B, K, s), in at least float32."""
        z = embeddings @ anchors.reshape(-1, anchors.shape[-1]).T  # the one GEMM
        z = z.to(torch.promote_types(z.dtype, torch.float32))
        return z.view(embeddings.shape[0], self.num_classes, self.sub_centers)

    def anchor_losses(self, embeddings, labels, anchors, weights):
        """Eq. 3/8 cross-entropy per sample plus beta * eq. 7 (summed over the batch)."""
        s = self.sub_centers
        # -log sum_k p~_{x,y,k} = logsumexp(all K*s sub-logits) - logsumexp(own s sub-logits), one autograd function;
        # own: (B, s) own-class sub-logits w_{y,k}^T x (constants, for the compactness term's argmax)
        ce, own = class_cross_entropy(
            embeddings,
            anchors.reshape(-1, anchors.shape[-1]),
            LinearLogits(),
            labels,
            group=s,
            chunk_size=self.chunk_size,
        )
        loss_dict = {"loss": self.element_loss(ce * weights.to(ce.dtype))}
        if self.beta == 0:
            compact = ce.new_zeros(())
        else:
            w = anchors.to(ce.dtype)
            x = embeddings.to(ce.dtype)
            if self.assign == "all":
                # sum_k ||x - w_k||^2 = s ||x - mean_k w_k||^2 + sum_k ||w_k - mean||^2 (exact), over the batch's
                # own classes only: O(B s d), not O(K s d)
                own_w = w[labels]  # (B, s, d)
                mean = own_w.mean(dim=1)  # (B, d)
                spread = (own_w - mean.unsqueeze(1)).square().sum(dim=(1, 2))  # (B,)
                sq = s * (x - mean).square().sum(dim=1) + spread
            else:
                with torch.no_grad():
                    own = own.detach()  # (B, s) own-class sub-logits w_{y,k}^T x
                    if self.assign == "logit":
                        k_star = own.argmax(dim=1)
                    else:  # ||x - w||^2 = ||x||^2 - 2 w.x + ||w||^2, and ||x||^2 is the same for every k
                        k_star = (w[labels].square().sum(dim=2) - 2 * own).argmin(dim=1)
                sq = (x - w[labels, k_star]).square().sum(dim=1)
            compact = self.beta * 0.5 * (sq * weights).sum()
        loss_dict["compactness"] = self.reduced_loss(compact)
        return loss_dict

    def class_parallel_losses(self, embeddings, labels, anchors, weights, shard):
        """Eq. 3/8 and 7 with the classes sharded over processes (:mod:`pml_anchors.losses.class_parallel`), each
        class with its s sub-centres: each block's log-sum-exp over the other classes' sub-logits, combined across
        processes, the own class's s sub-logits and the compactness distance from the block that holds that class.
        Same loss dict, value and gradients as :meth:`anchor_losses` on the whole batch."""
        s = self.sub_centers
        rows = anchors.reshape(-1, anchors.shape[-1])
        others, own = shard.others_logsumexp(
            embeddings, rows, LinearLogits(), labels, group=s, chunk_size=self.chunk_size
        )
        ce = cross_entropy_from_lse(others, torch.logsumexp(own, dim=1))
        loss_dict = {"loss": self.element_loss(ce * weights.to(ce.dtype))}
        if self.beta == 0:
            compact = ce.new_zeros(())
        else:
            owned, local = shard.owned(labels)
            w = anchors.to(ce.dtype)
            x = embeddings.to(ce.dtype)
            own_w = w[local]  # (B, s, d): the own class's sub-centres where owned
            if self.assign == "all":
                mean = own_w.mean(dim=1)
                spread = (own_w - mean.unsqueeze(1)).square().sum(dim=(1, 2))
                sq = s * (x - mean).square().sum(dim=1) + spread
            else:
                with torch.no_grad():
                    own_logits = own.detach()
                    if self.assign == "logit":
                        k_star = own_logits.argmax(dim=1)
                    else:
                        k_star = (own_w.square().sum(dim=2) - 2 * own_logits).argmin(dim=1)
                sq = (x - own_w[torch.arange(x.shape[0], device=x.device), k_star]).square().sum(dim=1)
            sq = shard.sum(torch.where(owned, sq, torch.zeros_like(sq)))
            compact = self.beta * 0.5 * (sq * weights).sum()
        loss_dict["compactness"] = self.reduced_loss(compact)
        return loss_dict

    # -- inference ------------------------------------------------------------------------------
    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Per-class scores log sum_k exp(w_{c,k}^T x), (B, K).

        softmax of these is the summed sub-class probability sum_k p~_{x,c,k}, so their argmax is the
        paper's prediction rule ("the sum of all sub-class probabilities of a class").
        """
        z = self._sub_logits(embeddings, self.cast_anchors(embeddings))
        return torch.logsumexp(z, dim=2)

    def sub_center_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The raw sub-class logits z = w_{c,k}^T x, shape (B, K, s)."""
        self.validate_embeddings(embeddings)
        return self._sub_logits(embeddings, self.cast_anchors(embeddings))

    @torch.no_grad()
    def geometry(self) -> dict[str, Any]:
        """The base diagnostics (F-SC has no target angle: its sub-centres are random) and ``intra_class_cos``,
        the mean cosine between sub-centres of the same class: whether sigma^2 keeps them apart (about
        (1/3) / (1/3 + d sigma^2) at initialisation, from eq. 4-5)."""
        return {**super().geometry(), "intra_class_cos": intra_class_cosine(self.anchors)}

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, sub_centers={self.sub_centers}, variance={self.variance:g}, "
            f"beta={self.beta:g}, assign={self.assign!r}"
        )


def intra_class_cosine(anchors: torch.Tensor) -> float:
    """Mean cosine between distinct sub-centres of the same class for (K, s, d) anchors; NaN if s = 1."""
    w = anchors.detach().to(torch.float64)
    if w.ndim != 3 or w.shape[1] < 2:
        return float("nan")
    s = w.shape[1]
    unit = torch.nn.functional.normalize(w, dim=2)
    summed = unit.sum(dim=1)  # sum_{j,k} cos_jk = ||sum_j u_j||^2; the diagonal contributes s (0 for zero rows)
    diagonal = unit.square().sum(dim=(1, 2))
    off = (summed.square().sum(dim=1) - diagonal) / (s * (s - 1))
    return float(off.mean())
