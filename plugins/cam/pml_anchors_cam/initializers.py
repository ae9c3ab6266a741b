"""Anchor initializers of the CAM plugin (torch is imported only when one is called)."""

from __future__ import annotations

from pml_anchors.validators import check_real, check_seed, positive_int


def standard_normal(num_classes, embedding_size, *, seed=None, dtype=None, std=1.0):
    """Anchors drawn from N(0, std^2 I), shape (K, d); the CAM default (std = 1, i.e. ``torch.randn``).

    The CAM paper does not say how its anchors are initialised. A standard normal puts them at norm about
    sqrt(d) (outside the minimum norm p = 1) and pairs about sqrt(2 d) apart (beyond 2m = 4 once d > 8),
    so for usual widths the repeller and norm terms start near zero. Drawn in float64 from a private generator (``seed`` int) or
    torch's global RNG (``seed=None``) and returned in ``dtype`` (default: torch's default dtype), like the
    core initializers.
    """
    import torch

    k, d = positive_int(num_classes, "num_classes"), positive_int(embedding_size, "embedding_size")
    seed = check_seed(seed)
    std = check_real(std, "std", minimum=0.0, open_min=True)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    draw = torch.randn(k, d, generator=generator, dtype=torch.float64)
    return (draw * std).to(dtype or torch.get_default_dtype())
