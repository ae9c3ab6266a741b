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
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch

from .hookspecs import hookimpl

__all__ = [
    "INITIALIZERS",
    "cube",
    "gaussian_subcenters",
    "kaiming_normal",
    "min_pairwise_angle",
    "one_hot",
    "orthoplex",
    "pairwise_cosine",
    "polygon",
    "polytope_margin",
    "register_initializers",
    "required_embedding_size",
    "simplex",
    "spread",
]

_F64 = torch.float64

#: Flop budget (about K x candidates x d multiply-adds) for the farthest-point search of :func:`spread`.
SPREAD_FLOP_BUDGET = 2e9
#: Largest candidate matrix (entries) :func:`spread` builds, 2**25 float64 = 256 MiB.
_MAX_CANDIDATE_ENTRIES = 2**25
#: Rows per chunk when :func:`spread` draws its anchors directly (keeps float64 scratch memory small).
_DIRECT_CHUNK_ENTRIES = 2**21
#: Absolute tolerance on cosines for farthest-point ties: the first candidate within it wins, so that
#: last-bit differences between BLAS builds cannot change which point is picked.
_TIE_TOL = 1e-12


# ---------------------------------------------------------------------------------------------------------
# validation and random helpers


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def _check_common(num_classes, embedding_size, seed, dtype) -> tuple[int, int, torch.dtype]:
    k = _check_count(num_classes, "num_classes")
    d = _check_count(embedding_size, "embedding_size")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"seed must be None or an int, got {type(seed).__name__} {seed!r}")
    if dtype is None:
        dtype = torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return k, d, dtype


def _generator(seed) -> torch.Generator | None:
    """A private generator for an int seed; ``None`` means torch's global RNG."""
    return None if seed is None else torch.Generator().manual_seed(int(seed))


def _choice(value, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def _ceil_log2(k: int) -> int:
    return (k - 1).bit_length()


def _normalize_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-300)


# ---------------------------------------------------------------------------------------------------------
# fixed polytopes and simple geometries


def one_hot(num_classes, embedding_size, *, seed=None, dtype=None) -> torch.Tensor:
    """Standard basis anchors e_0..e_{K-1} in R^d (K <= d), shape (K, d); pairwise cos 0.

    Hao et al. (arXiv 1804.08087) §4: "we take 10 or 100 standard orthogonal bases". ``seed`` is ignored.
    """
    k, d, dtype = _check_common(num_classes, embedding_size, seed, dtype)
    if k > d:
        raise ValueError(f"one_hot anchors for num_classes={k} need embedding_size >= num_classes = {k}, got {d}")
    return torch.eye(k, d, dtype=_F64).to(dtype)


def polygon(num_classes, embedding_size, *, seed=None, dtype=None) -> torch.Tensor:
    """Regular K-gon on the unit circle, shape (K, 2): row c = (cos 2pi c/K, sin 2pi c/K).

    NCM's d = 2 anchors (Hao et al. §3, eq. 9-10) and RePoNet's ``polygonal2d``. ``seed`` is ignored.
    """
    k, d, dtype = _check_common(num_classes, embedding_size, seed, dtype)
    if d != 2:
        raise ValueError(f"polygon anchors for num_classes={k} need embedding_size = 2, got {d}")
    theta = torch.arange(k, dtype=_F64) * (2 * math.pi / k)
    return torch.stack([torch.cos(theta), torch.sin(theta)], dim=1).to(dtype)


def simplex(num_classes, embedding_size, *, seed=None, dtype=None) -> torch.Tensor:
    """Regular d-simplex with K = d + 1 unit vertices, shape (K, K-1).

    Margin-RePoNet (Pernici et al., CVPR-W 2019, eq. 3), built as the official ``prototypes.dsimplex``:
    columns e_1..e_d and alpha*1 with alpha = (1 - sqrt(d+1))/d, centred, scaled to unit norm, transposed.
    Every pairwise cos is -1/d, the rows sum to 0 and the last row is -1/sqrt(d). ``seed`` is ignored.
    """
    k, d, dtype = _check_common(num_classes, embedding_size, seed, dtype)
    if k < 2:
        raise ValueError(f"simplex anchors need num_classes >= 2, got {k}")
    if d != k - 1:
        raise ValueError(
            f"simplex anchors for num_classes={k} need embedding_size = num_classes - 1 = {k - 1}, got {d}"
        )
    m = k - 1
    x = torch.zeros(m, m + 1, dtype=_F64)
    x[:, :m] = torch.eye(m, dtype=_F64)
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
    k, d, dtype = _check_common(num_classes, embedding_size, seed, dtype)
    _choice(vertices, "vertices", ("all", "classes"))
    _choice(order, "order", ("blocks", "interleaved"))
    need = (k + 1) // 2
    if d != need:
        raise ValueError(
            f"orthoplex anchors for num_classes={k} need embedding_size = ceil(num_classes / 2) = {need}, got {d}"
        )
    eye = torch.eye(d, dtype=_F64)
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
    k, d, dtype = _check_common(num_classes, embedding_size, seed, dtype)
    _choice(vertices, "vertices", ("all", "classes"))
    if k < 2:
        raise ValueError(f"cube anchors need num_classes >= 2, got {k}")
    need = _ceil_log2(k)
    if d != need:
        raise ValueError(
            f"cube anchors for num_classes={k} need embedding_size = ceil(log2(num_classes)) = {need}, got {d}"
        )
    rows = k if vertices == "classes" else 2**d
    bits = (torch.arange(rows).unsqueeze(1) >> torch.arange(d).unsqueeze(0)) & 1
    x = (1 - 2 * bits).to(_F64) / math.sqrt(d)
    return x.to(dtype)


# ---------------------------------------------------------------------------------------------------------
# spread: deterministic well-spread points on S^{d-1}


def _meshgrid_size(n: int, d: int) -> int:
    return 2 * n ** (d - 1)


def _meshgrid_resolution(target: int, d: int) -> int:
    """Smallest n >= 1 whose hyperspherical meshgrid has at least ``target`` points."""
    n = max(1, int((target / 2) ** (1.0 / (d - 1))))
    while _meshgrid_size(n, d) < target:
        n += 1
    while n > 1 and _meshgrid_size(n - 1, d) >= target:
        n -= 1
    return n


def _hyperspherical_meshgrid(n: int, d: int) -> torch.Tensor:
    """Hao et al. §3.2 meshgrid extended to S^{d-1}: polar angles pi(i+1/2)/n, azimuth 2pi i/(2n).

    x_j = (prod_{l<j} sin phi_l) cos phi_j for j < d and x_d = prod_l sin phi_l: 2 n^{d-1} distinct unit
    points, in ``meshgrid(..., indexing="ij")`` order (azimuth fastest).
    """
    polar = (torch.arange(n, dtype=_F64) + 0.5) * (math.pi / n)
    azimuth = torch.arange(2 * n, dtype=_F64) * (math.pi / n)
    grids = torch.meshgrid(*([polar] * (d - 2) + [azimuth]), indexing="ij")
    angles = [g.reshape(-1) for g in grids]
    out = torch.empty(angles[0].numel(), d, dtype=_F64)
    sin_prod = torch.ones(angles[0].numel(), dtype=_F64)
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
    max_cos = torch.full((candidates.shape[0],), -math.inf, dtype=_F64)
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
        a = _normalize_rows(a + step)
    return best


def _spread_plan(k: int, d: int, oversample: int, budget: float) -> tuple[str, int, int]:
    """Which tier :func:`spread` uses: ``(tier, meshgrid_n, n_gaussian_candidates)``."""
    if d == 2:
        return "polygon", 0, 0
    n_gauss = min(oversample * k, int(budget // (k * d)), _MAX_CANDIDATE_ENTRIES // d)
    if n_gauss < 2 * k:
        return "random", 0, 0
    if d > (4 * oversample * k).bit_length():  # even n = 2 gives 2^d points: far too many
        return "gaussian", 0, n_gauss
    n = _meshgrid_resolution(oversample * k, d)
    m = _meshgrid_size(n, d)
    if m <= 4 * oversample * k and k * (m + n_gauss) * d <= budget and (m + n_gauss) * d <= _MAX_CANDIDATE_ENTRIES:
        return "meshgrid", n, n_gauss
    return "gaussian", 0, n_gauss


def _gaussian_directions(rows: int, d: int, gen: torch.Generator) -> torch.Tensor:
    return _normalize_rows(torch.randn(rows, d, generator=gen, dtype=_F64))


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
    describe d = 2 and K <= d; this follows METHODS.md §3.2 case 5 and is meant for K > d (use ``one_hot``,
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
    k, d, dtype = _check_common(num_classes, embedding_size, seed, dtype)
    if d < 2:
        raise ValueError(f"spread anchors for num_classes={k} need embedding_size >= 2, got {d}")
    oversample = _check_count(oversample, "oversample")
    if oversample < 2:
        raise ValueError(f"oversample must be >= 2, got {oversample}")
    if isinstance(refine_steps, bool) or not isinstance(refine_steps, numbers.Integral) or refine_steps < 0:
        raise ValueError(f"refine_steps must be a non-negative int, got {refine_steps!r}")
    if not isinstance(budget, numbers.Real) or not budget > 0:
        raise ValueError(f"budget must be a positive number, got {budget!r}")

    tier, n, n_gauss = _spread_plan(k, d, oversample, float(budget))
    if tier == "polygon":
        x = polygon(k, 2, dtype=_F64)
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
            cands = torch.cat([_hyperspherical_meshgrid(n, d), cands], dim=0)
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
            x = _thomson_refine(x if x is not None else out.to(_F64), int(refine_steps))
    return out if x is None else x.to(dtype)


# ---------------------------------------------------------------------------------------------------------
# random proxies and sub-centres


def gaussian_subcenters(
    num_classes, embedding_size, *, seed=None, dtype=None, sub_centers=4, variance=1e-3
) -> torch.Tensor:
    """F-SC fixed sub-centres, shape (K, s, d) (Zhang & Gong, arXiv 2203.12928, eq. 4-5).

    mu_i ~ U(-1/sqrt(d), 1/sqrt(d)) (= ``kaiming_uniform_(a=sqrt(5))`` on a K x d tensor, eq. 4), then
    w_{i,j} = mu_i + sqrt(variance) * N(0, I) for j = 1..s (eq. 5). ``variance`` is sigma^2 (paper default
    1e-3, std ~0.0316), not a standard deviation. mu is drawn first, then the noise, from the same generator.
    """
    k, d, dtype = _check_common(num_classes, embedding_size, seed, dtype)
    s = _check_count(sub_centers, "sub_centers")
    if not isinstance(variance, numbers.Real) or not math.isfinite(variance) or variance < 0:
        raise ValueError(f"variance must be a finite number >= 0, got {variance!r}")
    gen = _generator(seed)
    bound = 1.0 / math.sqrt(d)
    mu = (torch.rand(k, d, generator=gen, dtype=_F64) * 2.0 - 1.0) * bound
    noise = torch.randn(k, s, d, generator=gen, dtype=_F64)
    # in place: one float64 (K, s, d) buffer instead of three (1M classes x 4 x 128: 4 GB, not 12)
    return noise.mul_(math.sqrt(float(variance))).add_(mu.unsqueeze(1)).to(dtype)


def kaiming_normal(num_classes, embedding_size, *, seed=None, dtype=None) -> torch.Tensor:
    """Proxy Anchor proxies (Kim et al., CVPR 2020, official code; also PML's default), shape (K, d).

    N(0, 2/K): ``torch.nn.init.kaiming_normal_(t, mode="fan_out")`` on a K x d tensor (fan_out = K, gain
    sqrt(2)), drawn from the seeded generator. Only directions matter to the cosine loss.
    """
    k, d, dtype = _check_common(num_classes, embedding_size, seed, dtype)
    std = math.sqrt(2.0 / k)
    return (torch.randn(k, d, generator=_generator(seed), dtype=_F64) * std).to(dtype)


# ---------------------------------------------------------------------------------------------------------
# diagnostics


def _as_rows(anchors) -> torch.Tensor:
    a = torch.as_tensor(anchors)
    if a.ndim < 2:
        raise ValueError(f"anchors must have at least 2 dims (rows x embedding), got shape {tuple(a.shape)}")
    return a.detach().reshape(-1, a.shape[-1]).to(device="cpu", dtype=_F64)


def pairwise_cosine(anchors) -> torch.Tensor:
    """K x K cosine matrix of the (L2-normalised) rows; (K, s, d) sub-centres are flattened to K*s rows.

    Computed in float64 and returned in the input's floating dtype (float64 for integer input). Zero rows
    get cosine 0 with everything.
    """
    a = _normalize_rows(_as_rows(anchors))
    in_dtype = torch.as_tensor(anchors).dtype
    out_dtype = in_dtype if in_dtype.is_floating_point else _F64
    return (a @ a.T).clamp(-1.0, 1.0).to(out_dtype)


def min_pairwise_angle(anchors) -> float:
    """Smallest angle (radians) between two distinct rows; (K, s, d) sub-centres are flattened to rows.

    Works in row blocks, so memory stays O(block x K) for large K.
    """
    a = _normalize_rows(_as_rows(anchors))
    k = a.shape[0]
    if k < 2:
        raise ValueError(f"min_pairwise_angle needs at least 2 rows, got {k}")
    block = max(1, 2**22 // k)
    max_cos = -1.0
    for start in range(0, k, block):
        stop = min(k, start + block)
        g = a[start:stop] @ a.T
        rows = torch.arange(stop - start)
        g[rows, rows + start] = -2.0
        max_cos = max(max_cos, float(g.max()))
    return math.acos(min(1.0, max(-1.0, max_cos)))


#: Multiply-adds (K^2 d) up to which :func:`min_pairwise_angle_if_cheap` measures (about 0.1 s on one core).
CHEAP_ANGLE_BUDGET = 1e9


def min_pairwise_angle_if_cheap(anchors, budget: float = CHEAP_ANGLE_BUDGET) -> float | None:
    """:func:`min_pairwise_angle` when it costs at most ``budget`` multiply-adds (K^2 d), else ``None``.

    For recording the angle anchors were built with at construction without making huge-K losses slow to build.
    """
    rows = _as_rows(anchors)
    k, d = rows.shape
    return min_pairwise_angle(rows) if k > 1 and k * k * d <= budget else None


_POLYTOPES = ("simplex", "orthoplex", "cube")


def polytope_margin(polytope: str, d) -> float:
    """Margin-RePoNet margin m = phi in radians (Pernici et al., CVPR-W 2019): angle to the nearest vertex.

    simplex arccos(-1/d), orthoplex pi/2 (pi for d = 1: its two vertices are +-1), cube arccos((d-2)/d).
    PML's ``ArcFaceLoss`` takes degrees.
    """
    d = _check_count(d, "d")
    if polytope == "simplex":
        return math.acos(-1.0 / d)
    if polytope == "orthoplex":
        return math.pi if d == 1 else math.pi / 2
    if polytope == "cube":
        return math.acos((d - 2) / d)
    raise ValueError(f"unknown polytope {polytope!r}; expected one of {', '.join(map(repr, _POLYTOPES))}")


def required_embedding_size(polytope: str, num_classes) -> int:
    """Embedding size a polytope needs for K classes: simplex K-1, orthoplex ceil(K/2), cube ceil(log2 K).

    (Paper eq. 7 swaps the orthoplex and cube entries; the official code and Fig. 2 agree with these.)
    """
    k = _check_count(num_classes, "num_classes")
    if polytope == "simplex":
        if k < 2:
            raise ValueError(f"simplex anchors need num_classes >= 2, got {k}")
        return k - 1
    if polytope == "orthoplex":
        return (k + 1) // 2
    if polytope == "cube":
        if k < 2:
            raise ValueError(f"cube anchors need num_classes >= 2, got {k}")
        return _ceil_log2(k)
    raise ValueError(f"unknown polytope {polytope!r}; expected one of {', '.join(map(repr, _POLYTOPES))}")


# ---------------------------------------------------------------------------------------------------------
# registry

INITIALIZERS = {
    "one_hot": one_hot,
    "polygon": polygon,
    "simplex": simplex,
    "orthoplex": orthoplex,
    "cube": cube,
    "spread": spread,
    "gaussian_subcenters": gaussian_subcenters,
    "kaiming_normal": kaiming_normal,
}


@hookimpl
def register_initializers(register):
    """Register every geometry in :data:`INITIALIZERS` under its name."""
    for name, fn in INITIALIZERS.items():
        register(name, fn)
