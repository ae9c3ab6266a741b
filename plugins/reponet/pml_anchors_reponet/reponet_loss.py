"""Margin Regular Polytope Network loss (Pernici, Bruni, Baecchi & Del Bimbo, CVPR-W 2019).

Paper: "Maximally Compact and Separated Features with Regular Polytope Networks". The classifier is fixed
to the unit vertices w_j of a regular polytope (eq. 3-5: d-Simplex, d-Orthoplex, d-Cube), features are
L2-normalised and scaled by kappa (eq. 8, kappa = 30) and the target logit gets the additive angular margin
of ArcFace (eq. 9)::

    L = -1/N sum_i log( e^{kappa cos(theta_yi + m)} / (e^{kappa cos(theta_yi + m)} + sum_{j != yi} e^{kappa cos theta_j}) )

with m = phi, the angle between a vertex and its nearest neighbours (eq. 10-12): simplex arccos(-1/d),
orthoplex pi/2, cube arccos((d-2)/d).

The loss is one GEMM of the normalised features against the cached normalised (fixed) classifier, the
cross-entropy taken as ``softplus(logsumexp_{j != y} kappa cos theta_j - kappa cos(theta_y + m))`` by
:func:`pml_anchors.losses.logsumexp.class_logsumexp` (hand-written backward, no B x rows patch or mask);
``chunk_size=`` streams the rows in chunks for very large classifiers.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import CosineSimilarity

from pml_anchors import anchors as geometry
from pml_anchors.losses import AnchorLoss
from pml_anchors.losses.distances import is_cosine
from pml_anchors.losses.logsumexp import LinearLogits, class_logsumexp, cross_entropy_from_lse
from pml_anchors.validators import check_bool, check_choice, check_real

POLYTOPES = geometry.POLYTOPES
FALLBACKS = ("arcface", "easy", "none")


class RePoNetLoss(AnchorLoss):
    """Margin-RePoNet: cross-entropy over a fixed regular-polytope classifier with an ArcFace margin.

    :param num_classes: number of classes K; labels use the first K polytope vertices.
    :param embedding_size: feature width d. ``None`` uses the width w the polytope needs (paper eq. 7, with
        the orthoplex and cube entries as in the official code): simplex K-1, orthoplex ceil(K/2),
        cube ceil(log2 K). A wider d holds the same w-dimensional polytope zero-padded (its vertices span the
        first w coordinates), so the rows, their angles and phi are those of width w; a narrower d is a
        ``ValueError`` naming w.
    :param polytope: ``"simplex"`` (default), ``"orthoplex"`` or ``"cube"``. Vertex order follows the
        official ``prototypes.py`` (see :mod:`pml_anchors.anchors`). ``anchors="cube"`` (a polytope name)
        selects the polytope too.
    :param margin: additive angular margin in **radians**. ``"auto"`` (default) is m = phi of the geometry
        (eq. 10-12; for custom anchors the smallest angle between two of their rows); ``0`` gives the plain
        RePoNet/NormFace loss (eq. 8).
    :param scale: kappa, the feature scale (paper: 30).
    :param fallback: what the target logit is once theta_y > pi - m, where cos(theta + m) stops decreasing:
        ``"arcface"`` (default, as PML's ``ArcFaceLoss`` and insightface): cos theta - m sin m;
        ``"easy"`` (insightface ``easy_margin``): the margin only where cos theta > 0;
        ``"none"``: cos(theta + m) everywhere, eq. 9 literally (not monotone for large theta).
    :param drop_unused: ``False`` (default, as the official code) keeps every polytope vertex in the softmax
        (2^d rows for the cube, 2 ceil(K/2) for the orthoplex): the vertices past K act as pre-allocated
        "virtual" classes, and predicting one counts as an error. ``True`` keeps only the first K rows.
    :param kwargs: :class:`~pml_anchors.losses.AnchorLoss` options (``anchors`` to override the polytope
        with any geometry: a registered name, a callable or a (rows >= K, d) tensor; ``learnable=True``
        gives the paper's learnable-classifier baseline; ``chunk_size``) and PML's (``reducer``,
        ``weight_regularizer``, ...). With custom anchors and ``margin="auto"`` the margin is their smallest
        pairwise angle, an O(rows^2 d) computation at construction; give a number to skip it.

    ``anchors`` is a persistent buffer of shape (rows, d), rows >= K. Miner ``indices_tuple`` weights
    multiply the per-sample cross-entropy, as in PML's classification losses.
    """

    pml_counterpart = "ArcFaceLoss"  # same argument names, but margin in radians here (degrees in PML)

    def __init__(
        self,
        num_classes: int,
        embedding_size: int | None = None,
        margin: float | str = "auto",
        scale: float = 30.0,
        *,
        polytope: str | None = None,
        fallback: str = "arcface",
        drop_unused: bool = False,
        **kwargs: Any,
    ):
        anchors = kwargs.get("anchors")
        named = anchors if isinstance(anchors, str) and anchors in POLYTOPES else None
        if polytope is None:
            polytope = named or "simplex"
        check_choice(polytope, "polytope", POLYTOPES)
        if named is not None and named != polytope:
            raise ValueError(f"anchors={named!r} contradicts polytope={polytope!r}; give one of them")
        if named is not None:
            kwargs.pop("anchors")
            anchors = None
        check_choice(fallback, "fallback", FALLBACKS)
        check_bool(drop_unused, "drop_unused")
        self.scale = check_real(scale, "scale (paper: 30)", minimum=0.0, open_min=True)
        margin_value = _check_margin(margin)
        # Set before AnchorLoss.__init__, which derives the width and builds the anchors through our overrides.
        self.polytope = polytope
        self.fallback = fallback
        self.drop_unused = drop_unused
        self.uses_polytope = anchors is None
        self.polytope_width: int | None = None  # w, the polytope's own width (None for custom anchors)
        if self.uses_polytope:
            self.polytope_width = geometry.required_embedding_size(polytope, num_classes)
            _check_width(embedding_size, polytope, num_classes, self.polytope_width)
        elif embedding_size is None and torch.is_tensor(anchors):
            embedding_size = anchors.shape[-1]
        super().__init__(num_classes, embedding_size, **kwargs)
        self.require_distance(
            is_cosine(self.distance), "cosines (eq. 9-12), like PML's ArcFaceLoss", "CosineSimilarity()"
        )
        self.num_rows = self.anchors.shape[0]
        self._phi: float | None
        if self.uses_polytope:
            self._phi = geometry.polytope_margin(polytope, self.polytope_width)
        else:  # custom anchors: measured as built (when first asked if that is expensive, K^2 d > 1e9)
            self._phi = geometry.min_pairwise_angle_if_cheap(self.anchors)
        self.margin = self.phi if margin_value is None else margin_value
        self.add_to_recordable_attributes(list_of_names=["margin", "scale", "num_rows"], is_stat=False)

    # -- geometry -------------------------------------------------------------------------------
    @property
    def phi(self) -> float:
        """The smallest angle between two classifier rows (radians) as built; custom anchors are measured."""
        if self._phi is None:
            self._phi = geometry.min_pairwise_angle(self.anchors) if self.num_rows > 1 else math.pi
        return self._phi

    def derive_embedding_size(self, num_classes: int) -> int:
        """The polytope's own width w (paper eq. 7, orthoplex and cube entries as in the official code):
        K-1, ceil(K/2), ceil(log2 K); computed once in ``__init__``."""
        if not self.uses_polytope:
            raise ValueError("RePoNetLoss with custom anchors (a name or callable) needs embedding_size")
        assert self.polytope_width is not None  # set in __init__ whenever uses_polytope
        return self.polytope_width

    def default_anchors(
        self, num_classes: int, embedding_size: int, *, seed: int | None = None, **anchor_kwargs: Any
    ) -> torch.Tensor:
        """The initializer used when ``anchors=None``: the vertices of ``self.polytope`` (all of them;
        ``drop_unused`` trims them afterwards) at its own width w, zero-padded to ``embedding_size`` columns if wider."""
        width = self.polytope_width
        assert width is not None  # anchors=None means uses_polytope, which sets the width
        builder = getattr(geometry, self.polytope)
        vertices = builder(num_classes, width, seed=seed, **anchor_kwargs)
        return F.pad(vertices, (0, embedding_size - width))

    def polytope_rows(self) -> int:
        """Rows of the polytope classifier: K (simplex or ``drop_unused``), 2w = 2 ceil(K/2) or 2^w."""
        if self.drop_unused or self.polytope == "simplex":
            return self.num_classes
        width = self.polytope_width
        if width is None:  # custom anchors: the rows the polytope would have (named in shape errors)
            width = geometry.required_embedding_size(self.polytope, self.num_classes)
        return 2 * width if self.polytope == "orthoplex" else 2**width

    def expected_anchor_shape(self) -> tuple[int, ...]:
        return (self.polytope_rows(), self.embedding_size)

    def check_anchor_shape(self, tensor: torch.Tensor) -> None:
        """Any (rows >= K, d) tensor; rows past K are virtual classes (``drop_unused=True`` removes them)."""
        d, k = self.embedding_size, self.num_classes
        if tensor.ndim != 2 or tensor.shape[1] != d or tensor.shape[0] < k:
            raise ValueError(
                f"RePoNetLoss(num_classes={k}, embedding_size={d}) needs anchors of shape (rows, {d}) with "
                f"rows >= {k} (the polytope gives {self.expected_anchor_shape()}), got {tuple(tensor.shape)}"
            )

    def build_anchors(self, anchors, seed, anchor_kwargs) -> torch.Tensor:
        tensor = super().build_anchors(anchors, seed, anchor_kwargs)
        if self.drop_unused:
            tensor = tensor[: self.num_classes].contiguous()
        if not (tensor.norm(dim=1) > 0).all():
            raise ValueError("RePoNetLoss anchors must be non-zero rows (they are L2-normalised)")
        return tensor

    def target_min_angle(self) -> float:
        """phi in radians: the smallest angle between two classifier rows (eq. 10-12)."""
        return self.phi

    @torch.no_grad()
    def geometry(self) -> dict[str, Any]:
        """The base diagnostics (with ``target_min_angle_deg`` = phi), ``geometry_ok`` (the smallest angle is >= phi
        up to 1e-4 degrees; false only if custom or learnable rows drifted below phi) and ``margin_deg`` (m)."""
        out = super().geometry()
        out["geometry_ok"] = bool(out["min_anchor_angle_deg"] >= out["target_min_angle_deg"] - 1e-4)
        out["margin_deg"] = math.degrees(self.margin)
        return out

    def get_default_distance(self) -> CosineSimilarity:
        return CosineSimilarity()

    # -- loss -----------------------------------------------------------------------------------
    def _cosines(self, embeddings: torch.Tensor, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit features and unit classifier rows (cached while the rows are fixed)."""
        features = F.normalize(embeddings, dim=1)
        if anchors.requires_grad:
            return features, F.normalize(anchors, dim=1)
        return features, self.cached_anchors("unit", embeddings, lambda a: F.normalize(a, dim=1))

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        """Unscaled target logit cos(theta + m) with the chosen fallback (input and output in [-1, 1]).

        Written as cos theta cos m - sin theta sin m with sin theta = sqrt(max(1 - cos^2, tiny)), so a feature
        exactly on its vertex (theta = 0, where d theta / d cos is infinite) gets a finite gradient.
        """
        m = self.margin
        c = cos_target.clamp(-1.0, 1.0)
        sin = (1.0 - c * c).clamp_min(torch.finfo(c.dtype).tiny).sqrt()
        with_margin = c * math.cos(m) - sin * math.sin(m)
        if self.fallback == "arcface":  # theta <= pi - m  <=>  cos theta >= -cos m
            return torch.where(c >= -math.cos(m), with_margin, c - m * math.sin(m))
        if self.fallback == "easy":
            return torch.where(c > 0, with_margin, c)
        return with_margin

    def anchor_losses(self, embeddings, labels, anchors, weights):
        """Per-sample cross-entropy of eq. 9: ``F.cross_entropy`` of kappa cos theta with the target logit
        replaced by kappa cos(theta_y + m), computed as ``softplus(lse_{j != y} - target)`` (same value and
        gradient): one (B x d) @ (d x rows) product, reduced in place, hand-written backward."""
        features, rows = self._cosines(embeddings, anchors)
        lse, logit_y = class_logsumexp(
            features, rows, LinearLogits(self.scale), exclude=labels, chunk_size=self.chunk_size
        )
        target = logit_y.squeeze(1)
        if self.margin != 0:
            work = lse.dtype
            if features.dtype == work and not torch.is_autocast_enabled(features.device.type):
                cos_target = target / self.scale  # the GEMM's own entry, in full precision
            else:  # from a row-wise dot product (B x d), in full precision even under autocast
                cos_target = (features.to(work) * rows.to(work)[labels]).sum(dim=1)
            target = self.scale * self.target_logit(cos_target)
        losses = cross_entropy_from_lse(lse, target) * weights.to(lse.dtype)
        return {"loss": self.element_loss(losses)}

    def class_parallel_losses(self, embeddings, labels, anchors, weights, shard):
        """Eq. 9 with the classifier rows (virtual vertices included) sharded over processes
        (:mod:`pml_anchors.losses.class_parallel`): each block's log-sum-exp of the non-target rows, combined across
        processes, and the target row's cosine from the block that holds it; same value and gradients as
        :meth:`anchor_losses` on the whole batch."""
        features, rows = self._cosines(embeddings, anchors)
        others, own = shard.others_logsumexp(
            features, rows, LinearLogits(self.scale), labels, chunk_size=self.chunk_size
        )
        target = own.squeeze(1)
        if self.margin != 0:
            work = others.dtype
            if features.dtype == work and not torch.is_autocast_enabled(features.device.type):
                cos_target = target / self.scale
            else:
                owned, local = shard.owned(labels)
                dot = (features.to(work) * rows.to(work)[local]).sum(dim=1)
                cos_target = shard.sum(torch.where(owned, dot, torch.zeros_like(dot)))
            target = self.scale * self.target_logit(cos_target)
        losses = cross_entropy_from_lse(others, target) * weights.to(others.dtype)
        return {"loss": self.element_loss(losses)}

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Margin-free scaled cosines kappa cos theta_j to every row (B x rows, virtual vertices included)."""
        features, rows = self._cosines(embeddings, self.cast_anchors(embeddings))
        return self.scale * (features @ rows.T)

    # The vertex rows (2^d for a cube, 2*ceil(K/2) for an orthoplex) do not determine K, so a checkpoint records it.
    def get_extra_state(self) -> dict[str, int]:
        return {"num_classes": int(self.num_classes)}

    def set_extra_state(self, state: Any) -> None:
        saved = state.get("num_classes") if isinstance(state, dict) else None
        if saved is not None and saved != self.num_classes:
            raise ValueError(
                f"checkpoint was saved by a {type(self).__name__} with num_classes={saved}, but this one has "
                f"num_classes={self.num_classes}; build the loss with the checkpoint's num_classes"
            )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        extra = prefix + "_extra_state"
        if extra in missing_keys:  # checkpoints written before num_classes was recorded
            missing_keys.remove(extra)

    def extra_repr(self) -> str:
        geometry_name = self.polytope if self.uses_polytope else "custom"
        if self.uses_polytope and self.polytope_width != self.embedding_size:
            geometry_name += f" (width {self.polytope_width}, zero-padded)"
        return (
            f"{super().extra_repr()}, polytope={geometry_name}, margin={self.margin:.6g} rad "
            f"({math.degrees(self.margin):.4g} deg), scale={self.scale:g}, fallback={self.fallback}, "
            f"drop_unused={self.drop_unused}"
        )


_WIDTH_RULE = {"simplex": "num_classes - 1", "orthoplex": "ceil(num_classes / 2)", "cube": "ceil(log2(num_classes))"}


def _check_width(embedding_size: Any, polytope: str, num_classes: int, width: int) -> None:
    """A polytope of width w fits any embedding_size >= w (zero-padded); ``None`` means w."""
    if isinstance(embedding_size, numbers.Integral) and not isinstance(embedding_size, bool) and embedding_size < width:
        raise ValueError(
            f"RePoNetLoss with polytope={polytope!r} and num_classes={num_classes} needs "
            f"embedding_size >= {_WIDTH_RULE[polytope]} = {width}, got {embedding_size}; "
            "pass embedding_size=None to use exactly that width"
        )


def _check_margin(margin: Any) -> float | None:
    """``None`` for ``"auto"``; else the margin in radians, which must lie in [0, pi]."""
    if isinstance(margin, str):
        if margin != "auto":
            raise ValueError(f"margin must be 'auto' or a number of radians in [0, pi], got {margin!r}")
        return None
    name = "margin ('auto' or radians in [0, pi]; PML's ArcFaceLoss takes degrees, this loss radians)"
    return check_real(margin, name, minimum=0.0, maximum=math.pi)
