"""Anchor initializers of the CAM plugin (torch is imported only when one is called)."""

from __future__ import annotations

import math
import numbers


def standard_normal(num_classes, embedding_size, *, seed=None, dtype=None, std=1.0):
    """Anchors drawn from N(0, std^2 I), shape (K, d); the CAM default (std = 1, i.e. ``torch.randn``).

    The CAM paper does not say how its anchors are initialised. A standard normal puts them at norm about
    sqrt(d) (outside the minimum norm p = 1) and pairs about sqrt(2 d) apart (beyond 2m = 4 once d > 8),
    so for usual widths the repeller and norm terms start near zero. Drawn in float64 from a private generator (``seed`` int) or
    torch's global RNG (``seed=None``) and returned in ``dtype`` (default: torch's default dtype), like the
    core initializers.
    """
    import torch

    for value, name in ((num_classes, "num_classes"), (embedding_size, "embedding_size")):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"seed must be None or an int, got {type(seed).__name__} {seed!r}")
    if isinstance(std, bool) or not isinstance(std, numbers.Real) or not math.isfinite(std) or std <= 0:
        raise ValueError(f"std must be a finite number > 0, got {std!r}")
    generator = None if seed is None else torch.Generator().manual_seed(int(seed))
    draw = torch.randn(int(num_classes), int(embedding_size), generator=generator, dtype=torch.float64)
    return (draw * float(std)).to(dtype or torch.get_default_dtype())
