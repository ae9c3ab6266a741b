"""Class Anchor Margin (CAM) loss (Ghita & Ionescu, "Class Anchor Margin Loss for Content-Based Image Retrieval").

Learnable class anchors C = {c_1..c_K} live in the (raw, unnormalised) embedding space; eq. 1-4::

    L_A(x_i, C) = 1/2 ||e_i - c_{y_i}||^2                                   (1, attractor)
    L_R(C)      = 1/2 sum_{y != y'} max(0, 2m - ||c_y - c_{y'}||)^2         (2, repeller)
    L_N(C)      = 1/2 sum_y max(0, p - ||c_y||)^2                           (3, minimum norm)
    L_CAM       = L_A + L_R + L_N                                           (4), m = 2, p = 1

Over a batch we use mean_i L_A(x_i) + L_R + L_N: the per-example objective (4) averaged over the batch,
the anchor-only terms added once. The sum over y != y' counts every unordered pair twice and the 1/2
cancels that, so L_R is the sum over unordered pairs.

Cost: the attractor is O(B d) (no B x K matrix at all); L_N is O(K d). L_R over all K anchors is O(K^2 d) if
computed directly: for K <= 256 it is (a search in row blocks, then the close pairs from their differences,
:func:`~pml_anchors_cam.repeller.repeller_blocked`);
above, an exact Verlet neighbour list (:class:`~pml_anchors_cam.repeller.NeighborList`) keeps the pairs that
can be closer than 2m and re-searches only anchors that moved, so a step costs O(K d + pairs * d) between
(rare) rebuilds. With ``batch_classes_only`` the terms run over the batch's classes only (O(B^2 d)).
On an accelerator and under ``torch.compile`` the step reads nothing back to the host (:meth:`_device_terms`):
the same terms in forms of fixed shape, the neighbour list checked between steps by :meth:`refresh_neighbors`.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from typing import Any

import torch
from pytorch_metric_learning.distances import LpDistance

from pml_anchors.losses import AnchorLoss
from pml_anchors.losses.distances import is_euclidean
from pml_anchors.validators import check_bool, check_real, optional_bool, optional_real

from .initializers import standard_normal
from .repeller import (
    DENSE_ENTRIES,
    NeighborList,
    _centred,
    _gram_d2,
    check_search_cost,
    check_step_cost,
    repeller_blocked,
    repeller_dense,
    repeller_on_pairs,
)

#: Above this many anchors L_R uses the neighbour list by default.
NEIGHBOR_LIST_MIN_CLASSES = 256


_NOT_REFRESHED = (
    "CAM's neighbour list has not been searched on {device}: with K = {k} anchors (above 4096) a compiled step "
    "reads the list that loss.refresh_neighbors() leaves; call it once before the first compiled step and after "
    "every optimizer step (CAM's trainer hooks, pml_anchors.get_trainer_hooks('cam'), do)"
)
_OVERFLOWED = (
    "CAM's neighbour list overflowed: more than {max_pairs:,} anchor pairs lie closer than 2m + skin = {reach:g}, so "
    "L_R has no fixed-shape form to compile; run the loss eagerly (it then sums every pair in row blocks), or use a "
    "smaller margin, wider initial anchors or batch_classes_only=True"
)
_STALE = (
    "CAM's neighbour list is stale: an anchor moved {skin:g} or more since loss.refresh_neighbors() last ran, so "
    "the list may miss a pair closer than 2m; call loss.refresh_neighbors() after every optimizer step"
)


def _on_host(anchors: torch.Tensor) -> bool:
    """Whether the step may read values back to the host for free: eager, on the CPU (on an accelerator a read
    stalls the host until the device catches up; under ``torch.compile`` it breaks the graph)."""
    return anchors.device.type == "cpu" and not torch.compiler.is_compiling()


def _no_autocast(device_type: str) -> AbstractContextManager:
    """Run the small anchor computations in their own dtype: autocast would do the K x K Gram in bf16."""
    return torch.autocast(device_type=device_type, enabled=False)


class ClassAnchorMarginLoss(AnchorLoss):
    """CAM loss: attractor to the own class anchor, anchor repeller with margin 2m, anchor minimum norm p.

    :param num_classes: number of classes K (one learnable anchor each).
    :param embedding_size: embedding width n (the paper leaves it open).
    :param margin: m (paper: 2); anchors closer than 2m repel each other. ``0`` switches the repeller off.
    :param min_norm: p (paper: 1); anchors with norm below p are pushed away from the origin. ``0`` switches
        the norm term off.
    :param batch_classes_only: ``False`` (default): L_R and L_N run over all K anchors, as eq. 2-3 define
        them on the whole anchor set C. ``True``: only over the classes present in the batch.
    :param neighbor_list: how L_R over all K anchors is computed (same value and gradient either way):
        ``None`` (default) uses the exact neighbour list when K > 256, ``True`` always, ``False`` never
        (every pair searched, in row blocks of the K x K Gram matrix: O(K^2 d) per step, O(K) memory per row).
    :param neighbor_skin: extra reach of the neighbour list (default: ``margin``): it lists pairs closer than
        2m + skin and re-searches an anchor once it moved 0.45 skin.
    :param kwargs: :class:`~pml_anchors.losses.AnchorLoss` options: ``anchors`` (default
        ``standard_normal``, i.e. ``torch.randn`` under ``seed``; the paper does not state its init; any
        registered name, callable or (K, n) tensor), ``seed``, ``learnable``, and PML's ``reducer``,
        ``weight_regularizer``, ``embedding_regularizer``, ...

    Sub-losses (PML reducer protocol): ``attractor_loss`` (per sample, "element": the default
    ``MeanReducer`` averages it; miner weights multiply it), ``repeller_loss`` and ``norm_loss``
    ("already_reduced" scalars). ``anchors`` is an ``nn.Parameter`` (K, n): step it with PML's
    ``metric_loss_optimizer`` (paper: Adam, lr 1e-3, the same optimizer as the network).
    """

    learnable_anchors = True
    default_anchors = staticmethod(standard_normal)

    def __init__(
        self,
        num_classes: int,
        embedding_size: int | None = None,
        margin: float = 2.0,
        min_norm: float = 1.0,
        *,
        batch_classes_only: bool = False,
        neighbor_list: bool | None = None,
        neighbor_skin: float | None = None,
        **kwargs: Any,
    ):
        self.margin = check_real(margin, "margin (m of eq. 2; paper: 2)", minimum=0.0)
        self.min_norm = check_real(min_norm, "min_norm (p of eq. 3; paper: 1)", minimum=0.0)
        check_bool(batch_classes_only, "batch_classes_only")
        optional_bool(neighbor_list, "neighbor_list")
        neighbor_skin = optional_real(neighbor_skin, "neighbor_skin (None: the margin)", minimum=0.0, open_min=True)
        self.batch_classes_only = batch_classes_only
        self.neighbor_list = neighbor_list
        self.neighbor_skin = neighbor_skin
        self._neighbors: NeighborList | None = None
        if type(num_classes) is int and type(embedding_size) is int:  # refuse before drawing K x n anchors
            self._check_repeller_cost(num_classes, embedding_size)
        super().__init__(num_classes, embedding_size, **kwargs)
        self.require_distance(
            is_euclidean(self.distance), "raw Euclidean distances (eq. 1-3)", "LpDistance(normalize_embeddings=False)"
        )
        self.add_to_recordable_attributes(list_of_names=["margin", "min_norm"], is_stat=False)
        if self.anchors.dim() == 2:
            self._check_repeller_cost(*self.anchors.shape)

    def get_default_distance(self) -> LpDistance:
        return LpDistance(normalize_embeddings=False, p=2, power=1)

    def _sub_loss_names(self) -> list[str]:
        return ["attractor_loss", "repeller_loss", "norm_loss"]

    def cast_anchors(self, embeddings: torch.Tensor) -> torch.Tensor:
        """A differentiable copy on the embeddings' device, in their dtype but at least float32."""
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        return self.anchors.to(device=embeddings.device, dtype=dtype)

    # -- loss -----------------------------------------------------------------------------------
    def anchor_terms(
        self, anchors: torch.Tensor, present: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_R, L_N) of eq. 2-3 for the (K, n) ``anchors``; ``present`` (K,) bool restricts both to those classes.

        Eq. 2 and 3 as written: 1/2 sum over ordered pairs y != y' (= the sum over unordered pairs), 1/2 sum_y.
        L_R comes from :mod:`~pml_anchors_cam.repeller` (row blocks of the distance matrix of the centred
        anchors, or the exact neighbour list for large K); coincident anchors get a finite (zero) gradient.
        """
        if present is not None:
            anchors = anchors[present.nonzero().flatten()]
            repeller = repeller_blocked(anchors, self.margin)
        elif self._use_neighbor_list(anchors.shape[0]) and (pairs := self._close_pairs(anchors)) is not None:
            repeller = repeller_on_pairs(anchors, pairs, self.margin)
        else:
            repeller = repeller_blocked(anchors, self.margin)
        return repeller, self._norm_term(anchors)

    def _norm_term(self, anchors: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """L_N (eq. 3) over the anchors, or over the ``rows`` (bool mask) of them; no K x n temporary and a zero
        gradient at the origin."""
        shortfall = (self.min_norm - torch.linalg.vector_norm(anchors, dim=1)).clamp_min(0).square()
        if rows is not None:
            shortfall = torch.where(rows, shortfall, torch.zeros_like(shortfall))
        return 0.5 * shortfall.sum()

    def _device_terms(self, x, labels, weights, anchors):
        """(attractor, L_R, L_N) with no host read and no data-dependent shape, or None where no such form exists.

        Used on an accelerator and under ``torch.compile`` (a host read would stall the device or break the
        graph). ``batch_classes_only``: the B x B distances of the batch's anchor rows, each class counted at its
        first row in the batch. K^2 <= ``DENSE_ENTRIES``: the dense K x K form. Above: the neighbour list, padded
        to a fixed length (:meth:`_listed_pairs`). None (the host form, which reads sizes) for
        ``neighbor_list=False`` at large K, an overflowing list, or B^2 > ``DENSE_ENTRIES``.
        """
        attractor = 0.5 * (x - anchors[labels]).square().sum(dim=1) * weights
        k = anchors.shape[0]
        if self.batch_classes_only:
            if labels.shape[0] ** 2 > DENSE_ENTRIES:
                return None
            rows = anchors[labels]
            same = labels.unsqueeze(0) == labels.unsqueeze(1)
            first = ~torch.tril(same, diagonal=-1).any(dim=1)  # each present class once: at its first row
            return attractor, repeller_dense(rows, self.margin, first), self._norm_term(rows, first)
        if not self._lists_pairs(k):
            if k * k <= DENSE_ENTRIES or self.margin == 0:
                return attractor, repeller_dense(anchors, self.margin), self._norm_term(anchors)
            return None  # neighbor_list=False above 4096 anchors: every pair, in row blocks on the host
        listed = self._listed_pairs(anchors)
        if listed is None:
            return None
        return attractor, repeller_on_pairs(anchors, listed[0], self.margin, listed[1]), self._norm_term(anchors)

    def _listed_pairs(self, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The neighbour list padded to a fixed length, (pairs, mask), for a step without a host read.

        Eager: checked against these anchors unless :meth:`refresh_neighbors` already did since their last
        change (then nothing is read back); None if it overflows. Under ``torch.compile``: the list
        :meth:`refresh_neighbors` left, with a device-side assertion that it still holds every pair closer than
        2m (no anchor moved 0.45 skin since it was searched), so a stale list fails the step instead of
        leaving a pair out.
        """
        if not torch.compiler.is_compiling():
            return None if self._close_pairs(anchors) is None else self._neighbor_list().padded
        neighbors = self._neighbors
        snapshot = None if neighbors is None else neighbors.snapshot
        if neighbors is None or snapshot is None or snapshot.device != anchors.device:
            raise RuntimeError(_NOT_REFRESHED.format(k=anchors.shape[0], device=anchors.device))
        if neighbors.padded is None:
            raise RuntimeError(_OVERFLOWED.format(max_pairs=neighbors.max_pairs, reach=neighbors.reach))
        torch._assert_async(neighbors.holds_for(anchors), _STALE.format(skin=0.45 * neighbors.skin))
        return neighbors.padded

    @torch.no_grad()
    def refresh_neighbors(self) -> None:
        """Check the neighbour list against the anchors as they are now, outside the training step.

        Call it after every optimizer step (and once before the first) when K^2 > ``DENSE_ENTRIES`` (K > 4096)
        on an accelerator or under ``torch.compile``: it re-searches the anchors that moved (reading sizes back
        to the host), so that the step itself reads nothing back and keeps fixed shapes (one compiled graph,
        one CUDA graph). CAM's trainer hooks call it before training and after every iteration. A no-op where
        the step does not use the list (``batch_classes_only``, ``margin=0``, ``neighbor_list=False``, K <= 4096).
        """
        if self._lists_pairs(self.anchors.shape[0]):
            self._close_pairs(self.anchors)

    def _lists_pairs(self, k: int) -> bool:
        """Whether the step off the host sums L_R over the padded neighbour list (which :meth:`refresh_neighbors`
        keeps checked): all K anchors, K^2 above ``DENSE_ENTRIES``, the list in use."""
        return not self.batch_classes_only and k * k > DENSE_ENTRIES and self._use_neighbor_list(k)

    def _neighbor_list(self) -> NeighborList:
        if self._neighbors is None:
            skin = self.margin if self.neighbor_skin is None else self.neighbor_skin
            self._neighbors = NeighborList(self.margin, skin, max_pairs=max(1 << 20, 4 * self.anchors.shape[0]))
        return self._neighbors

    def _close_pairs(self, anchors: torch.Tensor) -> torch.Tensor | None:
        """Pairs (2, P) holding every anchor pair closer than 2m (neighbour list), or None if too many (then L_R
        sums every pair: refused where that costs more than ``MAX_STEP_MACS`` per step)."""
        neighbors = self._neighbor_list()
        pairs = neighbors.pairs(anchors)
        if pairs is None:
            k, d = anchors.shape
            reason = (
                f"more than {neighbors.max_pairs:,} anchor pairs lie closer than 2m + skin = "
                f"{neighbors.reach:g}, too many for the neighbour list (anchors much closer together than 2m "
                f"= {2 * self.margin:g}: a smaller margin or wider initial anchors also avoid it)"
            )
            check_step_cost(k, d, reason)
        return pairs

    def _check_repeller_cost(self, k: int, d: int) -> None:
        """Refuse at construction a repeller over all K anchors that cannot finish: a first neighbour-list search
        above ``MAX_SEARCH_MACS``, or (``neighbor_list=False``) every pair each step above ``MAX_STEP_MACS``."""
        if self.batch_classes_only or self.margin == 0:
            return
        if self._use_neighbor_list(k):
            check_search_cost(k, d)
        else:
            reason = "neighbor_list=False" if self.neighbor_list is False else f"K <= {NEIGHBOR_LIST_MIN_CLASSES}"
            check_step_cost(k, d, reason)

    def _sparse_terms(self, x, labels, weights, anchors):
        """(attractor, L_R, L_N) touching only the anchor rows that can contribute, or None (use the dense form).

        The rows: the batch's classes, both ends of every listed close pair, anchors shorter than p. One
        gather of those rows, so the backward allocates the (K, n) anchor gradient once; every other anchor's
        terms are exactly 0 with a zero gradient.
        """
        pairs = self._close_pairs(anchors)
        if pairs is None:
            return None
        with torch.no_grad():
            short = (torch.linalg.vector_norm(anchors.detach(), dim=1) < self.min_norm).nonzero().flatten()
        rows, where = torch.unique(torch.cat([labels, short, pairs.flatten()]), return_inverse=True)
        sub = anchors[rows]
        b, s = labels.shape[0], short.shape[0]
        attractor = 0.5 * (x - sub[where[:b]]).square().sum(dim=1) * weights
        repeller = repeller_on_pairs(sub, where[b + s :].view(2, -1), self.margin)
        shortfall = (self.min_norm - torch.linalg.vector_norm(sub[where[b : b + s]], dim=1)).clamp_min(0).square()
        return attractor, repeller, 0.5 * shortfall.sum()

    def _use_neighbor_list(self, k: int) -> bool:
        if self.margin == 0 or k < 2:
            return False
        return k > NEIGHBOR_LIST_MIN_CLASSES if self.neighbor_list is None else self.neighbor_list

    def anchor_losses(self, embeddings, labels, anchors, weights):
        with _no_autocast(embeddings.device.type):
            work = anchors.dtype
            x, w = embeddings.to(work), weights.to(work)
            terms = None if _on_host(anchors) else self._device_terms(x, labels, w, anchors)
            if terms is None and not self.batch_classes_only and self._use_neighbor_list(anchors.shape[0]):
                terms = self._sparse_terms(x, labels, w, anchors)
            if terms is not None:
                attractor, repeller, norm = terms
            else:
                diff = x - anchors[labels]  # B x n: no B x K temporary
                attractor = 0.5 * diff.pow(2).sum(dim=1) * w
                present = None
                if self.batch_classes_only:
                    present = torch.zeros(self.num_classes, dtype=torch.bool, device=labels.device)
                    present[labels] = True
                repeller, norm = self.anchor_terms(anchors, present)
        return {
            "attractor_loss": self.element_loss(attractor),
            "repeller_loss": self.reduced_loss(repeller),
            "norm_loss": self.reduced_loss(norm),
        }

    # -- inference and diagnostics ----------------------------------------------------------------
    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Negative Euclidean distance to every anchor (B x K); the argmax is the nearest anchor."""
        with _no_autocast(embeddings.device.type):
            anchors = self.cast_anchors(embeddings)
            return -torch.cdist(embeddings.to(anchors.dtype), anchors)

    @torch.no_grad()
    def geometry(self) -> dict[str, Any]:
        """The base diagnostics plus what eq. 2-3 constrain: the smallest inter-anchor distance against 2m, the
        smallest anchor norm against p, and the anchor pairs still inside 2m (CAM has no target angle)."""
        anchors = self.anchors.detach().to(torch.float64)
        norms = anchors.norm(dim=1)
        out = {
            **super().geometry(),
            "min_anchor_norm": float(norms.min()),
            "target_min_norm": self.min_norm,
            "target_min_distance": 2.0 * self.margin,
        }
        if anchors.shape[0] > 1:
            min_d2, within = _pair_distance_stats(anchors, 2.0 * self.margin)
            out["min_anchor_distance"] = math.sqrt(min_d2)
            out["pairs_within_margin"] = within
        return out

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, margin={self.margin:g}, min_norm={self.min_norm:g}, "
            f"batch_classes_only={self.batch_classes_only}"
            + ("" if self.neighbor_list is None else f", neighbor_list={self.neighbor_list}")
        )


def _pair_distance_stats(anchors: torch.Tensor, reach: float, block_entries: int = 1 << 22) -> tuple[float, int]:
    """(smallest squared distance between two rows, number of pairs closer than ``reach``) of float64 ``anchors``,
    in row blocks of the Gram matrix of the centred rows: memory O(block_entries), not O(K^2 d)."""
    k = anchors.shape[0]
    centred, sq = _centred(anchors)
    cols = torch.arange(k, device=anchors.device)
    min_d2, within = math.inf, 0
    step = max(1, block_entries // k)
    for start in range(0, k, step):
        stop = min(k, start + step)
        d2 = _gram_d2(centred, sq, slice(start, stop))
        d2 = d2[cols > torch.arange(start, stop, device=anchors.device).unsqueeze(1)].clamp_min_(0)  # i < j
        if d2.numel():
            min_d2 = min(min_d2, float(d2.min()))
            within += int((d2 < reach * reach).sum())
    return min_d2, within
