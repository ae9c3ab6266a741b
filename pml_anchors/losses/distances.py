"""Which of PML's distances a loss's math is, so that ``loss.distance`` tells the truth.

A method whose formula fixes its similarity (a cosine, a raw dot product, a raw Euclidean distance) accepts the PML
distance objects that compute exactly that and refuses the others with a ``ValueError`` naming the one it uses
(:meth:`~pml_anchors.losses.AnchorLoss.require_distance`), instead of ignoring ``distance=``.
"""

from __future__ import annotations

from pytorch_metric_learning.distances import BaseDistance, DotProductSimilarity, LpDistance

__all__ = ["is_cosine", "is_dot_product", "is_euclidean"]


def is_cosine(distance: BaseDistance) -> bool:
    """``CosineSimilarity()``, or the same maths as ``DotProductSimilarity(normalize_embeddings=True)``."""
    return (
        isinstance(distance, DotProductSimilarity)
        and bool(distance.normalize_embeddings)
        and distance.p == 2
        and distance.power == 1
    )


def is_dot_product(distance: BaseDistance) -> bool:
    """``DotProductSimilarity(normalize_embeddings=False)``: raw inner products."""
    return isinstance(distance, DotProductSimilarity) and not distance.normalize_embeddings and distance.power == 1


def is_euclidean(distance: BaseDistance, powers: tuple[int, ...] = (1,)) -> bool:
    """``LpDistance(normalize_embeddings=False, p=2, power=...)`` with a power in ``powers`` (1: the distance,
    2: its square), on the raw embeddings."""
    return (
        isinstance(distance, LpDistance)
        and not distance.normalize_embeddings
        and distance.p == 2
        and distance.power in powers
    )
