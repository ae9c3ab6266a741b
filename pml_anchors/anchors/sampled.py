"""Random proxies and sub-centres: Proxy Anchor's Kaiming-normal proxies and F-SC's Gaussian sub-centres.

An int ``seed`` draws from a private ``torch.Generator`` (every DDP rank builds the same tensor; the global RNG is
untouched); ``seed=None`` draws from torch's global RNG.
"""

from __future__ import annotations

import math

import torch

from ..validators import check_real, positive_int
from .inputs import F64, check_geometry_args, seeded_generator

__all__ = ["gaussian_subcenters", "kaiming_normal"]


def gaussian_subcenters(
    num_classes, embedding_size, *, seed=None, dtype=None, sub_centers=4, variance=1e-3
) -> torch.Tensor:
    """F-SC fixed sub-centres, shape (K, s, d) (Zhang & Gong, arXiv 2203.12928, eq. 4-5).

    mu_i ~ U(-1/sqrt(d), 1/sqrt(d)) (= ``kaiming_uniform_(a=sqrt(5))`` on a K x d tensor, eq. 4), then
    w_{i,j} = mu_i + sqrt(variance) * N(0, I) for j = 1..s (eq. 5). ``variance`` is sigma^2 (paper default
    1e-3, std ~0.0316), not a standard deviation. mu is drawn first, then the noise, from the same generator.
    """
    k, d, dtype = check_geometry_args(num_classes, embedding_size, seed, dtype)
    s = positive_int(sub_centers, "sub_centers")
    variance = check_real(variance, "variance", minimum=0.0)
    gen = seeded_generator(seed)
    bound = 1.0 / math.sqrt(d)
    mu = (torch.rand(k, d, generator=gen, dtype=F64) * 2.0 - 1.0) * bound
    noise = torch.randn(k, s, d, generator=gen, dtype=F64)
    # in place: one float64 (K, s, d) buffer instead of three (1M classes x 4 x 128: 4 GB, not 12)
    return noise.mul_(math.sqrt(float(variance))).add_(mu.unsqueeze(1)).to(dtype)


def kaiming_normal(num_classes, embedding_size, *, seed=None, dtype=None) -> torch.Tensor:
    """Proxy Anchor proxies (Kim et al., CVPR 2020, official code; also PML's default), shape (K, d).

    N(0, 2/K): ``torch.nn.init.kaiming_normal_(t, mode="fan_out")`` on a K x d tensor (fan_out = K, gain
    sqrt(2)), drawn from the seeded generator. Only directions matter to the cosine loss.
    """
    k, d, dtype = check_geometry_args(num_classes, embedding_size, seed, dtype)
    std = math.sqrt(2.0 / k)
    return (torch.randn(k, d, generator=seeded_generator(seed), dtype=F64) * std).to(dtype)
