"""``spread``: deterministic, well-spread unit anchors for any K and d >= 2 (our extension of NCM's principles).

Hao et al. (arXiv 1804.08087) ask for unit anchors (eq. 9) that are as far apart as possible (eq. 10) but construct
them only for d = 2 and K <= d. :func:`spread` covers K > d: a hyperspherical meshgrid (§3.2, extended to
S^{d-1}) and seeded Gaussian candidates, greedy farthest-point sampling, and an optional Thomson-energy refinement.
"""

from __future__ import annotations

import math
import warnings

import torch

from ..validators import check_int, check_real
from .inputs import F64, check_geometry_args, normalize_rows
from .polytopes import polygon

__all__ = ["SPREAD_FLOP_BUDGET", "hyperspherical_meshgrid", "meshgrid_resolution", "spread", "spread_plan"]

#: Flop budget (about K x candidates x d multiply-adds) for the farthest-point search of :func:`spread`.
SPREAD_FLOP_BUDGET = 2e9
#: Largest candidate matrix (entries) :func:`spread` builds, 2**25 float64 = 256 MiB.
_MAX_CANDIDATE_ENTRIES = 2**25
#: Rows per chunk when :func:`spread` draws its anchors directly (keeps float64 scratch memory small).
_DIRECT_CHUNK_ENTRIES = 2**21
#: Absolute tolerance on cosines for farthest-point ties: the first candidate within it wins, so that
#: last-bit differences between BLAS builds cannot change which point is picked.
_TIE_TOL = 1e-12


def _meshgrid_size(n: int, d: int) -> int:
    return 2 * n ** (d - 1)


def meshgrid_resolution(target: int, d: int) -> int:
    """Smallest n >= 1 whose hyperspherical meshgrid has at least ``target`` points."""
    n = max(1, int((target / 2) ** (1.0 / (d - 1))))
    while _meshgrid_size(n, d) < target:
        n += 1
    while n > 1 and _meshgrid_size(n - 1, d) >= target:
        n -= 1
    return n


def hyperspherical_meshgrid(n: int, d: int) -> torch.Tensor:
    """Hao et al. §3.2 meshgrid extended to S^{d-1}: polar angles pi(i+1/2)/n, azimuth 2pi i/(2n).

    x_j = (prod_{l<j} sin phi_l) cos phi_j for j < d and x_d = prod_l sin phi_l: 2 n^{d-1} distinct unit
    points, in ``meshgrid(..., indexing="ij")`` order (azimuth fastest).
    """
    polar = (torch.arange(n, dtype=F64) + 0.5) * (math.pi / n)
    azimuth = torch.arange(2 * n, dtype=F64) * (math.pi / n)
    grids = torch.meshgrid(*([polar] * (d - 2) + [azimuth]), indexing="ij")
    angles = [g.reshape(-1) for g in grids]
    out = torch.empty(angles[0].numel(), d, dtype=F64)
    sin_prod = torch.ones(angles[0].numel(), dtype=F64)
    for j, phi in enumerate(angles):
        out[:, j] = sin_prod * torch.cos(phi)
        sin_prod = sin_prod * torch.sin(phi)
    out[:, d - 1] = sin_prod
    return out


def _farthest_point_sampling(candidates: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy farthest-point sampling on 1 - cos over unit ``candidates``, starting from row 0.

    Each step picks the candidate whose largest cosine to the chosen set is smallest (the first one within
    ``_TIE_TOL`` of the best). Cost about k x len(candidates) x d.
    """
    chosen = torch.empty(k, dtype=torch.long)
    max_cos = torch.full((candidates.shape[0],), -math.inf, dtype=F64)
    idx = 0
    for t in range(k):
        chosen[t] = idx
        max_cos = torch.maximum(max_cos, candidates @ candidates[idx])
        max_cos[idx] = math.inf
        if t + 1 < k:
            best = max_cos.min()
            idx = int((max_cos <= best + _TIE_TOL).to(torch.uint8).argmax())
    return candidates[chosen]


def _thomson_refine(x: torch.Tensor, steps: int) -> torch.Tensor:
    """Projected gradient descent on the Thomson energy sum_{i<j} 1/||a_i - a_j|| with unit rows.

    Steps follow the tangent force, scaled to move the mean point ``tau * min_dist`` (tau decaying linearly
    from 0.5 to 0), never more than half the minimum distance. Returns the iterate with the smallest
    maximum pairwise cosine, so refinement never makes the anchors less spread than its input.
    """
    k = x.shape[0]
    if k < 2:
        return x
    a = x.clone()
    best, best_max = a.clone(), math.inf
    eye = torch.eye(k, dtype=torch.bool)
    for t in range(steps + 1):
        gram = a @ a.T
        max_cos = float(gram.masked_fill(eye, -2.0).max())
        if max_cos < best_max:
            best, best_max = a.clone(), max_cos
        if t == steps:
            break
        inv_r3 = (2.0 - 2.0 * gram).clamp_min(1e-12).pow(-1.5).masked_fill(eye, 0.0)
        force = a * inv_r3.sum(dim=1, keepdim=True) - inv_r3 @ a  # -dE/da_i
        force = force - (force * a).sum(dim=1, keepdim=True) * a  # tangent part
        min_dist = math.sqrt(max(2.0 - 2.0 * max_cos, 1e-12))
        norms = force.norm(dim=1, keepdim=True)
        tau = 0.5 * (1.0 - t / steps)
        step = force * (tau * min_dist / float(norms.mean().clamp_min(1e-300)))
        step = step * (0.5 * min_dist / step.norm(dim=1, keepdim=True).clamp_min(1e-300)).clamp(max=1.0)
        a = normalize_rows(a + step)
    return best


def spread_plan(k: int, d: int, oversample: int, budget: float) -> tuple[str, int, int]:
    """Which tier :func:`spread` uses: ``(tier, meshgrid_n, n_gaussian_candidates)``."""
    if d == 2:
        return "polygon", 0, 0
    n_gauss = min(oversample * k, int(budget // (k * d)), _MAX_CANDIDATE_ENTRIES // d)
    if n_gauss < 2 * k:
        return "random", 0, 0
    if d > (4 * oversample * k).bit_length():  # even n = 2 gives 2^d points: far too many
        return "gaussian", 0, n_gauss
    n = meshgrid_resolution(oversample * k, d)
    m = _meshgrid_size(n, d)
    if m <= 4 * oversample * k and k * (m + n_gauss) * d <= budget and (m + n_gauss) * d <= _MAX_CANDIDATE_ENTRIES:
        return "meshgrid", n, n_gauss
    return "gaussian", 0, n_gauss


def _gaussian_directions(rows: int, d: int, gen: torch.Generator) -> torch.Tensor:
    return normalize_rows(torch.randn(rows, d, generator=gen, dtype=F64))


def spread(
    num_classes,
    embedding_size,
    *,
    seed=None,
    dtype=None,
    oversample=16,
    refine_steps=0,
    budget=SPREAD_FLOP_BUDGET,
) -> torch.Tensor:
    """Deterministic, well-spread unit anchors for any K and d >= 2, shape (K, d). Our extension.

    Hao et al. (arXiv 1804.08087) ask for unit anchors (eq. 9) with small pairwise cosines (eq. 10) but only
    describe d = 2 and K <= d; this extends their eq. 9-10 to K > d (use ``one_hot``,
    ``simplex`` or ``orthoplex`` when they fit). Tiers, by cost (``budget`` ~ multiply-adds, default 2e9):

    1. ``d == 2``: the regular polygon (the optimum).
    2. *meshgrid*: candidates are the hyperspherical meshgrid of §3.2 (polar angles pi(i+1/2)/n, azimuth
       2pi i/(2n), smallest n giving >= ``oversample * K`` points) plus ``oversample * K`` seeded Gaussian
       directions, then greedy farthest-point sampling on 1 - cos from the first grid point. Used when the
       grid has at most ``4 * oversample * K`` points and ``K * candidates * d <= budget``. (The meshgrid
       crowds near its poles in d >= 6, where the Gaussian half does the work.) K=20, d=3 gives max cos
       0.83; K=100, d=8 gives 0.65.
    3. *gaussian*: farthest-point sampling on ``min(oversample * K, budget / (K d))`` seeded Gaussian
       directions (at least 2K of them; the candidate matrix is capped at 2**25 entries).
    4. *random*: when even that is too expensive (``2 K^2 d > budget``, e.g. K = 100 000, d = 128) the
       anchors are seeded normalised Gaussian vectors, drawn in chunks (cost O(K d), memory = the output);
       in high d they are nearly orthogonal (|cos| ~ 1/sqrt(d)).

    The random parts use ``seed`` (0 when None), never the global RNG, so the result is deterministic even
    for ``seed=None``. Farthest-point ties are broken towards the first candidate within 1e-12.

    :param oversample: candidates per anchor (int >= 2).
    :param refine_steps: optional Thomson-energy refinement (projected gradient descent on
        sum 1/||a_i - a_j|| keeping unit norm), returning the iterate with the smallest max cosine. Default 0:
        it costs ~``refine_steps * K^2 * d`` and K^2 memory, and a long chaotic iteration may differ in the
        last bits between BLAS builds. Skipped with a ``RuntimeWarning`` when over ``budget`` or K > 4096.
        About 200 steps give K=20, d=3 max cos 0.69 and K=12, d=3 the icosahedron (0.447).
    :param budget: flop budget that selects the tier and caps refinement.
    """
    k, d, dtype = check_geometry_args(num_classes, embedding_size, seed, dtype)
    if d < 2:
        raise ValueError(f"spread anchors for num_classes={k} need embedding_size >= 2, got {d}")
    oversample = check_int(oversample, "oversample", minimum=2)
    refine_steps = check_int(refine_steps, "refine_steps", minimum=0)
    budget = check_real(budget, "budget", minimum=0.0, open_min=True)

    tier, n, n_gauss = spread_plan(k, d, oversample, float(budget))
    if tier == "polygon":
        x = polygon(k, 2, dtype=F64)
    elif tier == "random":
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        out = torch.empty(k, d, dtype=dtype)
        chunk = max(1, _DIRECT_CHUNK_ENTRIES // d)
        for start in range(0, k, chunk):
            stop = min(k, start + chunk)
            out[start:stop] = _gaussian_directions(stop - start, d, gen).to(dtype)
        x = None
    else:
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        cands = _gaussian_directions(n_gauss, d, gen)
        if tier == "meshgrid":
            cands = torch.cat([hyperspherical_meshgrid(n, d), cands], dim=0)
        x = _farthest_point_sampling(cands, k)

    if refine_steps:
        if k > 4096 or refine_steps * 4 * k * k * d > budget:
            warnings.warn(
                f"spread: skipping refine_steps={refine_steps} for num_classes={k}, embedding_size={d}: "
                f"about {refine_steps * 4 * k * k * d:.2g} flops exceed budget={budget:.2g} (or K > 4096)",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            x = _thomson_refine(x if x is not None else out.to(F64), int(refine_steps))
    return out if x is None else x.to(dtype)
