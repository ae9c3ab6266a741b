"""Default NCM anchors: a tiered rule for any K and d, randomly assigned to classes.

Hao et al. (arXiv 1804.08087, §3.2) ask for unit anchors (eq. 9) that are as far apart as possible (eq. 10),
"each of which is randomly assigned to one category". The paper only constructs them for d = 2 (a regular
polygon) and K <= d (its experiments use "10 or 100 standard orthogonal bases"). :func:`ncm_tier` picks:

1. ``one_hot``   K <= d         e_1..e_K (the paper's experiments; pairwise cos 0);
2. ``polygon``   d = 2          the regular K-gon (the paper's d = 2 meshgrid);
3. ``simplex``   K = d + 1      the regular simplex (pairwise cos -1/d, the optimum of eq. 10);
4. ``orthoplex`` d+1 < K <= 2d  the first K of e_1, -e_1, e_2, -e_2, ... (max cos 0), zero-padded to d;
5. ``spread``    otherwise      :func:`pml_anchors.anchors.spread` (meshgrid + farthest-point sampling).

Tiers 3-5 are our extension: the paper does not say what to do for K > d >= 3.
"""

from __future__ import annotations

import torch

from pml_anchors import anchors as geometry
from pml_anchors.validators import check_seed, positive_int

__all__ = ["NCM_TIERS", "ncm_tier", "ncm_tiered"]

#: Tier names in rule order.
NCM_TIERS = ("one_hot", "polygon", "simplex", "orthoplex", "spread")


def ncm_tier(num_classes, embedding_size) -> str:
    """Which geometry the tiered NCM rule uses for K = ``num_classes`` anchors in d = ``embedding_size``."""
    k = positive_int(num_classes, "num_classes")
    d = positive_int(embedding_size, "embedding_size")
    if k <= d:
        return "one_hot"
    if d == 2:
        return "polygon"
    if k == d + 1:
        return "simplex"
    if k <= 2 * d:
        return "orthoplex"
    if d < 2:
        raise ValueError(
            f"NCM anchors for num_classes={k} need embedding_size >= 2 (1-D space holds at most 2 "
            f"well-separated unit anchors), got embedding_size={d}"
        )
    return "spread"


def ncm_tiered(num_classes, embedding_size, *, seed=None, dtype=None, permute=True, **spread_options) -> torch.Tensor:
    """Unit NCM anchors from the tiered rule (see module docstring), rows permuted by a seeded permutation.

    :param seed: seeds the class permutation (and the random candidates of ``spread``). An int makes every
        process build the same anchors; ``None`` draws the permutation from torch's global RNG.
    :param dtype: output dtype (default ``torch.get_default_dtype()``).
    :param permute: assign anchors to classes by a random permutation, as the paper does ("randomly
        assigned to one category"). ``False`` keeps the geometry's row order (class c gets row c).
    :param spread_options: passed to :func:`pml_anchors.anchors.spread` (``oversample``, ``refine_steps``,
        ``budget``); used only by tier 5 and ignored otherwise.
    :returns: a (K, d) tensor of unit rows; row c is the anchor of class c.
    """
    tier = ncm_tier(num_classes, embedding_size)
    k, d = int(num_classes), int(embedding_size)
    check_seed(seed)
    if tier == "one_hot":
        rows = geometry.one_hot(k, d, dtype=dtype)
    elif tier == "polygon":
        rows = geometry.polygon(k, d, dtype=dtype)
    elif tier == "simplex":
        rows = geometry.simplex(k, d, dtype=dtype)
    elif tier == "orthoplex":
        half = (k + 1) // 2
        rows = geometry.orthoplex(k, half, dtype=dtype, order="interleaved", vertices="classes")
        rows = torch.nn.functional.pad(rows, (0, d - half))
    else:
        rows = geometry.spread(k, d, seed=seed, dtype=dtype, **spread_options)
    if not permute:
        return rows.contiguous()
    generator = None if seed is None else torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(k, generator=generator)
    return rows[perm].contiguous()
