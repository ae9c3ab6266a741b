"""The regular polytopes and simple fixed geometries: one-hot, polygon, simplex, orthoplex, cube.

Margin-RePoNet (Pernici et al., CVPR-W 2019) fixes its classifier to the vertices of the d-simplex, d-orthoplex or
d-cube (eq. 3-7) with the margin m = phi, the angle between neighbouring vertices (:func:`polytope_margin`); NCM
(Hao et al., arXiv 1804.08087) uses one-hot and polygon anchors (§3.2, §4). Every function returns a CPU tensor of
the anchors as rows, computed in float64; ``seed`` is accepted and ignored (they are deterministic).
"""

from __future__ import annotations

import math

import torch

from ..validators import check_choice, positive_int
from .inputs import F64, ceil_log2, check_geometry_args

__all__ = [
    "POLYTOPES",
    "cube",
    "one_hot",
    "orthoplex",
    "polygon",
    "polytope_margin",
    "required_embedding_size",
    "simplex",
]


def one_hot(num_classes, embedding_size, *, seed=None, dtype=None) -> torch.Tensor:
    """Standard basis anchors e_0..e_{K-1} in R^d (K <= d), shape (K, d); pairwise cos 0.

    Hao et al. (arXiv 1804.08087) §4: "we take 10 or 100 standard orthogonal bases". ``seed`` is ignored.
    """
    k, d, dtype = check_geometry_args(num_classes, embedding_size, seed, dtype)
    if k > d:
        raise ValueError(f"one_hot anchors for num_classes={k} need embedding_size >= num_classes = {k}, got {d}")
    return torch.eye(k, d, dtype=F64).to(dtype)


def polygon(num_classes, embedding_size, *, seed=None, dtype=None) -> torch.Tensor:
    """Regular K-gon on the unit circle, shape (K, 2): row c = (cos 2pi c/K, sin 2pi c/K).

    NCM's d = 2 anchors (Hao et al. §3, eq. 9-10) and RePoNet's ``polygonal2d``. ``seed`` is ignored.
    """
    k, d, dtype = check_geometry_args(num_classes, embedding_size, seed, dtype)
    if d != 2:
        raise ValueError(f"polygon anchors for num_classes={k} need embedding_size = 2, got {d}")
    theta = torch.arange(k, dtype=F64) * (2 * math.pi / k)
    return torch.stack([torch.cos(theta), torch.sin(theta)], dim=1).to(dtype)


def simplex(num_classes, embedding_size, *, seed=None, dtype=None) -> torch.Tensor:
    """Regular d-simplex with K = d + 1 unit vertices, shape (K, K-1).

    Margin-RePoNet (Pernici et al., CVPR-W 2019, eq. 3), built as the official ``prototypes.dsimplex``:
    columns e_1..e_d and alpha*1 with alpha = (1 - sqrt(d+1))/d, centred, scaled to unit norm, transposed.
    Every pairwise cos is -1/d, the rows sum to 0 and the last row is -1/sqrt(d). ``seed`` is ignored.
    """
    k, d, dtype = check_geometry_args(num_classes, embedding_size, seed, dtype)
    if k < 2:
        raise ValueError(f"simplex anchors need num_classes >= 2, got {k}")
    if d != k - 1:
        raise ValueError(
            f"simplex anchors for num_classes={k} need embedding_size = num_classes - 1 = {k - 1}, got {d}"
        )
    m = k - 1
    x = torch.zeros(m, m + 1, dtype=F64)
    x[:, :m] = torch.eye(m, dtype=F64)
    x[:, m] = (1.0 - math.sqrt(1.0 + m)) / m
    x = x - x.mean(dim=1, keepdim=True)
    x = x / x[:, 0].norm()
    return x.T.contiguous().to(dtype)


def orthoplex(num_classes, embedding_size, *, seed=None, dtype=None, vertices="all", order="blocks") -> torch.Tensor:
    """Regular d-orthoplex (cross-polytope) {+-e_i}, d = ceil(K/2); pairwise cos in {0, -1}.

    Margin-RePoNet (Pernici et al., CVPR-W 2019), official ``prototypes.orthoplex``.

    :param vertices: ``"all"`` (default, as the official code) returns all 2d vertices, so for odd K the last
        row is an unused, pre-allocated vertex; ``"classes"`` returns only the first K rows.
    :param order: ``"blocks"`` (default, official) is ``vstack(I_d, -I_d)``: classes c and c+d are antipodal;
        ``"interleaved"`` is e_1, -e_1, e_2, -e_2, ...: classes 2i and 2i+1 are antipodal.
    ``seed`` is ignored.
    """
    k, d, dtype = check_geometry_args(num_classes, embedding_size, seed, dtype)
    check_choice(vertices, "vertices", ("all", "classes"))
    check_choice(order, "order", ("blocks", "interleaved"))
    need = (k + 1) // 2
    if d != need:
        raise ValueError(
            f"orthoplex anchors for num_classes={k} need embedding_size = ceil(num_classes / 2) = {need}, got {d}"
        )
    eye = torch.eye(d, dtype=F64)
    neg = torch.zeros_like(eye) - eye  # -I without negative zeros
    if order == "blocks":
        x = torch.cat([eye, neg], dim=0)
    else:
        x = torch.stack([eye, neg], dim=1).reshape(2 * d, d)
    if vertices == "classes":
        x = x[:k]
    return x.contiguous().to(dtype)


def cube(num_classes, embedding_size, *, seed=None, dtype=None, vertices="all") -> torch.Tensor:
    """Regular d-cube {+-1}^d / sqrt(d), d = ceil(log2 K); vertices at Hamming distance h have cos (d-2h)/d.

    Margin-RePoNet (Pernici et al., CVPR-W 2019), official ``prototypes.dcube`` order: vertex t has
    coordinate i = +1 if bit i of t is 0, else -1 (row 0 all-plus, row 1 = (-, +, +, ...)).

    :param vertices: ``"all"`` (default, as the official code) returns all 2^d vertices; rows K..2^d-1 are
        unused, pre-allocated classes that stay in the softmax. ``"classes"`` returns only the first K rows.
    ``seed`` is ignored.
    """
    k, d, dtype = check_geometry_args(num_classes, embedding_size, seed, dtype)
    check_choice(vertices, "vertices", ("all", "classes"))
    if k < 2:
        raise ValueError(f"cube anchors need num_classes >= 2, got {k}")
    need = ceil_log2(k)
    if d != need:
        raise ValueError(
            f"cube anchors for num_classes={k} need embedding_size = ceil(log2(num_classes)) = {need}, got {d}"
        )
    rows = k if vertices == "classes" else 2**d
    bits = (torch.arange(rows).unsqueeze(1) >> torch.arange(d).unsqueeze(0)) & 1
    x = (1 - 2 * bits).to(F64) / math.sqrt(d)
    return x.to(dtype)


POLYTOPES = ("simplex", "orthoplex", "cube")


def polytope_margin(polytope: str, d) -> float:
    """Margin-RePoNet margin m = phi in radians (Pernici et al., CVPR-W 2019): angle to the nearest vertex.

    simplex arccos(-1/d), orthoplex pi/2 (pi for d = 1: its two vertices are +-1), cube arccos((d-2)/d).
    PML's ``ArcFaceLoss`` takes degrees.
    """
    d = positive_int(d, "d")
    if polytope == "simplex":
        return math.acos(-1.0 / d)
    if polytope == "orthoplex":
        return math.pi if d == 1 else math.pi / 2
    if polytope == "cube":
        return math.acos((d - 2) / d)
    raise ValueError(f"unknown polytope {polytope!r}; expected one of {', '.join(map(repr, POLYTOPES))}")


def required_embedding_size(polytope: str, num_classes) -> int:
    """Embedding size a polytope needs for K classes: simplex K-1, orthoplex ceil(K/2), cube ceil(log2 K).

    (Paper eq. 7 swaps the orthoplex and cube entries; the official code and Fig. 2 agree with these.)
    """
    k = positive_int(num_classes, "num_classes")
    if polytope == "simplex":
        if k < 2:
            raise ValueError(f"simplex anchors need num_classes >= 2, got {k}")
        return k - 1
    if polytope == "orthoplex":
        return (k + 1) // 2
    if polytope == "cube":
        if k < 2:
            raise ValueError(f"cube anchors need num_classes >= 2, got {k}")
        return ceil_log2(k)
    raise ValueError(f"unknown polytope {polytope!r}; expected one of {', '.join(map(repr, POLYTOPES))}")
