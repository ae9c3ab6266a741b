"""Anchor and proxy geometries ("initializers"), pure torch.

Every initializer has the signature ``f(num_classes, embedding_size, *, seed=None, dtype=None, **options)``
and returns a CPU tensor whose rows are the anchors (``gaussian_subcenters`` returns ``(K, s, d)``).
Values are computed in float64 and returned in ``dtype`` (default ``torch.get_default_dtype()``).
``seed=None`` draws from torch's global RNG; an int seed uses a private ``torch.Generator`` so that every
process (e.g. every DDP rank) builds the same tensor and the global RNG is left untouched. Deterministic
geometries accept ``seed`` and ignore it.

Geometries (K = ``num_classes``, d = ``embedding_size``):

* ``one_hot``: e_0..e_{K-1}, K <= d. NCM anchors as used in the experiments of Hao et al. (arXiv 1804.08087).
* ``polygon``: d = 2, a_c = (cos 2pi c/K, sin 2pi c/K). NCM's d = 2 anchors; RePoNet ``polygonal2d``.
* ``simplex``: d = K - 1, the regular d-simplex of Margin-RePoNet (Pernici et al., CVPR-W 2019, eq. 3) in the
  vertex order of the official ``prototypes.dsimplex``; pairwise cos = -1/d.
* ``orthoplex``: d = ceil(K/2), the d-orthoplex ``vstack(I_d, -I_d)`` (all 2d vertices by default).
* ``cube``: d = ceil(log2 K), the d-cube {+-1}^d / sqrt(d) (all 2^d vertices by default, official order).
* ``spread``: deterministic well-spread unit vectors for any K and d >= 2 (NCM principles eq. 9-10 for
  K > d): meshgrid/Gaussian candidates + farthest-point sampling, optional Thomson refinement. Our extension.
* ``gaussian_subcenters``: F-SC fixed sub-centres (Zhang & Gong, arXiv 2203.12928, eq. 4-5), shape (K, s, d).
* ``kaiming_normal``: Proxy Anchor / PML default proxies, N(0, 2/K) (``kaiming_normal_(mode="fan_out")``).

Diagnostics: :func:`pairwise_cosine`, :func:`min_pairwise_angle`, :func:`polytope_margin` (Margin-RePoNet's
margin m = phi) and :func:`required_embedding_size`.

One module per family: :mod:`~pml_anchors.anchors.polytopes`, :mod:`~pml_anchors.anchors.well_spread`,
:mod:`~pml_anchors.anchors.sampled`, :mod:`~pml_anchors.anchors.diagnostics`; they are registered by the core's
own plugin, :mod:`~pml_anchors.anchors.default_plugin`.
"""

from .default_plugin import INITIALIZERS
from .diagnostics import min_pairwise_angle, min_pairwise_angle_if_cheap, pairwise_cosine
from .polytopes import (
    POLYTOPES,
    cube,
    one_hot,
    orthoplex,
    polygon,
    polytope_margin,
    required_embedding_size,
    simplex,
)
from .sampled import gaussian_subcenters, kaiming_normal
from .well_spread import SPREAD_FLOP_BUDGET, spread

__all__ = [
    "INITIALIZERS",
    "POLYTOPES",
    "SPREAD_FLOP_BUDGET",
    "cube",
    "gaussian_subcenters",
    "kaiming_normal",
    "min_pairwise_angle",
    "min_pairwise_angle_if_cheap",
    "one_hot",
    "orthoplex",
    "pairwise_cosine",
    "polygon",
    "polytope_margin",
    "required_embedding_size",
    "simplex",
    "spread",
]
