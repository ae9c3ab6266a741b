"""Tests for pml_anchors.anchors: closed-form oracles (the polytopes of Pernici et al., CVPR-W 2019, eq. 3-7), determinism, errors, dtypes."""

from __future__ import annotations

import math
import re
from collections import Counter

import pytest
import torch

import pml_anchors
from pml_anchors import anchors as A
from pml_anchors.anchors import default_plugin
from pml_anchors.anchors import well_spread as spread_module

F64 = torch.float64
RANDOM = ["spread", "gaussian_subcenters", "kaiming_normal"]
# (name, K, d) that every initializer accepts
VALID = [
    ("one_hot", 5, 8),
    ("polygon", 7, 2),
    ("simplex", 10, 9),
    ("orthoplex", 10, 5),
    ("cube", 10, 4),
    ("spread", 20, 3),
    ("gaussian_subcenters", 6, 16),
    ("kaiming_normal", 10, 32),
]


def gram(x):
    return x @ x.T


def assert_unit_rows(x, atol=1e-12):
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(x.shape[:-1], dtype=x.dtype), atol=atol, rtol=0)


# ------------------------------------------------------------------------------------------------- polytopes


@pytest.mark.parametrize("k", [2, 3, 4, 10, 17])
def test_simplex_oracles(k):
    d = k - 1
    x = A.simplex(k, d, dtype=F64)
    assert x.shape == (k, d) and x.dtype == F64
    assert_unit_rows(x)
    g = gram(x)
    off = g[~torch.eye(k, dtype=torch.bool)]
    torch.testing.assert_close(off, torch.full_like(off, -1.0 / d), atol=1e-6, rtol=0)
    torch.testing.assert_close(x.sum(0), torch.zeros(d, dtype=F64), atol=1e-6, rtol=0)
    torch.testing.assert_close(x[-1], torch.full((d,), -1 / math.sqrt(d), dtype=F64), atol=1e-6, rtol=0)


def test_simplex_k3_rows_and_k4_first_row():
    expected = torch.tensor([[0.965926, -0.258819], [-0.258819, 0.965926], [-0.707107, -0.707107]], dtype=F64)
    torch.testing.assert_close(A.simplex(3, 2, dtype=F64), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        A.simplex(4, 3, dtype=F64)[0],
        torch.tensor([0.962250, -0.192450, -0.192450], dtype=F64),
        atol=1e-6,
        rtol=0,
    )


@pytest.mark.parametrize("k", [2, 5, 10, 11])
def test_orthoplex_oracles(k):
    d = math.ceil(k / 2)
    x = A.orthoplex(k, d, dtype=F64)
    assert x.shape == (2 * d, d)
    assert_unit_rows(x)
    g = gram(x)
    assert set(g.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert ((g + 1).abs() < 1e-12).sum(1).tolist() == [1] * (2 * d)
    for c in range(d):  # class c and c + d are antipodal
        torch.testing.assert_close(x[c + d], -x[c])
    torch.testing.assert_close(x[:d], torch.eye(d, dtype=F64))


def test_orthoplex_options():
    x = A.orthoplex(5, 3, order="interleaved", dtype=F64)
    eye = torch.eye(3, dtype=F64)
    torch.testing.assert_close(x, torch.stack([eye[0], -eye[0], eye[1], -eye[1], eye[2], -eye[2]]))
    assert A.orthoplex(5, 3, vertices="classes").shape == (5, 3)
    torch.testing.assert_close(A.orthoplex(5, 3, vertices="classes"), A.orthoplex(5, 3)[:5])
    torch.testing.assert_close(A.orthoplex(5, 3, vertices="classes", order="interleaved"), x[:5].float())
    with pytest.raises(ValueError, match="vertices"):
        A.orthoplex(4, 2, vertices="some")
    with pytest.raises(ValueError, match="order"):
        A.orthoplex(4, 2, order="random")


@pytest.mark.parametrize("d", [2, 3, 4, 6])
def test_cube_oracles(d):
    k = 2 ** (d - 1) + 1  # smallest K needing this d
    x = A.cube(k, d, dtype=F64)
    assert x.shape == (2**d, d)
    assert_unit_rows(x)
    g = gram(x)
    signs = (x > 0).to(torch.int64)
    hamming = (signs[:, None, :] != signs[None, :, :]).sum(-1)
    torch.testing.assert_close(g, (d - 2 * hamming).to(F64) / d, atol=1e-12, rtol=0)
    counts = Counter(torch.round(g[0] * d).to(torch.int64).tolist())
    assert counts == {d - 2 * h: math.comb(d, h) for h in range(d + 1)}


def test_cube_d4_cosines_and_d3_order():
    g = gram(A.cube(16, 4, dtype=F64))
    assert Counter(torch.round(g[0], decimals=6).tolist()) == {1.0: 1, 0.5: 4, 0.0: 6, -0.5: 4, -1.0: 1}
    s = [[1, 1, 1], [-1, 1, 1], [1, -1, 1], [-1, -1, 1], [1, 1, -1], [-1, 1, -1], [1, -1, -1], [-1, -1, -1]]
    expected = torch.tensor(s, dtype=F64) / math.sqrt(3)
    torch.testing.assert_close(A.cube(5, 3, dtype=F64), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(A.cube(5, 3, vertices="classes", dtype=F64), expected[:5])
    torch.testing.assert_close(A.cube(2, 1, dtype=F64), torch.tensor([[1.0], [-1.0]], dtype=F64))


def test_polygon_and_one_hot():
    x = A.polygon(6, 2, dtype=F64)
    theta = torch.arange(6, dtype=F64) * (2 * math.pi / 6)
    torch.testing.assert_close(x, torch.stack([theta.cos(), theta.sin()], 1), atol=1e-12, rtol=0)
    torch.testing.assert_close(x[1], torch.tensor([0.5, math.sqrt(3) / 2], dtype=F64), atol=1e-12, rtol=0)
    assert_unit_rows(x)
    torch.testing.assert_close(A.polygon(1, 2, dtype=F64), torch.tensor([[1.0, 0.0]], dtype=F64))
    h = A.one_hot(3, 5, dtype=F64)
    torch.testing.assert_close(h, torch.eye(5, dtype=F64)[:3])
    torch.testing.assert_close(A.one_hot(4, 4), torch.eye(4))


# ----------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "name, k, d, needed",
    [
        ("simplex", 10, 8, "embedding_size = num_classes - 1 = 9, got 8"),
        ("simplex", 10, 10, "embedding_size = num_classes - 1 = 9, got 10"),
        ("orthoplex", 10, 4, "embedding_size = ceil(num_classes / 2) = 5, got 4"),
        ("orthoplex", 9, 4, "embedding_size = ceil(num_classes / 2) = 5, got 4"),
        ("cube", 10, 3, "embedding_size = ceil(log2(num_classes)) = 4, got 3"),
        ("cube", 16, 5, "embedding_size = ceil(log2(num_classes)) = 4, got 5"),
        ("polygon", 5, 3, "embedding_size = 2, got 3"),
        ("one_hot", 10, 8, "embedding_size >= num_classes = 10, got 8"),
        ("spread", 10, 1, "embedding_size >= 2, got 1"),
    ],
)
def test_impossible_embedding_size(name, k, d, needed):
    with pytest.raises(ValueError, match=re.escape(needed)):
        A.INITIALIZERS[name](k, d)
    with pytest.raises(ValueError, match=f"num_classes={k}"):
        A.INITIALIZERS[name](k, d)


@pytest.mark.parametrize("name", ["simplex", "cube"])
def test_too_few_classes(name):
    with pytest.raises(ValueError, match="num_classes >= 2"):
        A.INITIALIZERS[name](1, 1)


@pytest.mark.parametrize("name", sorted(A.INITIALIZERS))
def test_bad_counts_and_dtype(name):
    fn = A.INITIALIZERS[name]
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        fn(0, 3)
    with pytest.raises(ValueError, match="embedding_size must be a positive int"):
        fn(3, -1)
    with pytest.raises(TypeError, match="num_classes"):
        fn(3.0, 3)
    with pytest.raises(TypeError, match="embedding_size"):
        fn(3, True)
    with pytest.raises(TypeError, match="embedding_size"):
        fn(3, "3")
    with pytest.raises(TypeError, match="dtype"):
        fn(3, 2, dtype=torch.int64)
    with pytest.raises(TypeError, match="seed"):
        fn(3, 2, seed=1.5)


def test_subcenter_argument_validation():
    with pytest.raises(ValueError, match="sub_centers"):
        A.gaussian_subcenters(3, 4, sub_centers=0)
    with pytest.raises(ValueError, match="variance"):
        A.gaussian_subcenters(3, 4, variance=-1e-3)
    with pytest.raises(ValueError, match="variance"):
        A.gaussian_subcenters(3, 4, variance=float("nan"))
    assert A.gaussian_subcenters(3, 4, sub_centers=1, variance=0.0).shape == (3, 1, 4)


# ----------------------------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("name, k, d", VALID)
@pytest.mark.parametrize("dtype", [None, torch.float32, torch.float64, torch.bfloat16])
def test_dtype_and_device(name, k, d, dtype):
    x = A.INITIALIZERS[name](k, d, seed=0, dtype=dtype)
    assert x.dtype == (dtype or torch.get_default_dtype())
    assert x.device.type == "cpu"
    assert torch.isfinite(x.float()).all()


def test_default_dtype_follows_torch_default():
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        assert A.simplex(4, 3).dtype == torch.float64
        assert A.kaiming_normal(4, 3, seed=0).dtype == torch.float64
    finally:
        torch.set_default_dtype(old)


# ----------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name, k, d", VALID)
def test_seeded_determinism_and_global_rng_untouched(name, k, d):
    fn = A.INITIALIZERS[name]
    state = torch.get_rng_state()
    a = fn(k, d, seed=123, dtype=F64)
    b = fn(k, d, seed=123, dtype=F64)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["gaussian_subcenters", "kaiming_normal"])
def test_random_initializers_seed_and_global_rng(name):
    fn = A.INITIALIZERS[name]
    assert not torch.equal(fn(10, 16, seed=1), fn(10, 16, seed=2))
    torch.manual_seed(7)
    a = fn(10, 16)
    torch.manual_seed(7)
    b = fn(10, 16)
    assert torch.equal(a, b)  # seed=None draws from the global RNG
    assert not torch.equal(fn(10, 16), fn(10, 16))


def test_spread_is_deterministic_without_seed():
    state = torch.get_rng_state()
    assert torch.equal(A.spread(30, 4), A.spread(30, 4))
    assert torch.equal(A.spread(30, 4), A.spread(30, 4, seed=0))
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(A.spread(30, 4, seed=1), A.spread(30, 4, seed=2))


# ---------------------------------------------------------------------------------------------- spread


@pytest.mark.parametrize("k, d, max_cos", [(20, 3, 0.9), (12, 3, 0.9), (100, 8, 0.8), (9, 4, 0.6), (200, 16, 0.7)])
def test_spread_quality(k, d, max_cos):
    x = A.spread(k, d, dtype=F64)
    assert x.shape == (k, d)
    assert_unit_rows(x)
    assert math.cos(A.min_pairwise_angle(x)) <= max_cos
    # far better than plain random directions
    r = torch.nn.functional.normalize(torch.randn(k, d, generator=torch.Generator().manual_seed(0), dtype=F64))
    assert A.min_pairwise_angle(x) > A.min_pairwise_angle(r)


def test_spread_d2_is_the_polygon():
    torch.testing.assert_close(A.spread(7, 2, dtype=F64), A.polygon(7, 2, dtype=F64))


def test_spread_refinement_improves():
    base = A.spread(12, 3, dtype=F64)
    refined = A.spread(12, 3, dtype=F64, refine_steps=200)
    assert_unit_rows(refined)
    assert A.min_pairwise_angle(refined) > A.min_pairwise_angle(base) + 0.1
    # Thomson/Tammes optimum for 12 points is the icosahedron, max cos 1/sqrt(5)
    assert math.cos(A.min_pairwise_angle(refined)) == pytest.approx(1 / math.sqrt(5), abs=0.01)
    assert torch.equal(A.spread(12, 3, refine_steps=30), A.spread(12, 3, refine_steps=30))


def test_spread_refinement_over_budget_warns():
    with pytest.warns(RuntimeWarning, match="skipping refine_steps"):
        x = A.spread(50, 4, refine_steps=10, budget=1e4, dtype=F64)
    assert_unit_rows(x)


def test_spread_tiers():
    assert spread_module.spread_plan(7, 2, 16, A.SPREAD_FLOP_BUDGET)[0] == "polygon"
    assert spread_module.spread_plan(20, 3, 16, A.SPREAD_FLOP_BUDGET)[0] == "meshgrid"
    assert spread_module.spread_plan(2000, 64, 16, A.SPREAD_FLOP_BUDGET)[0] == "gaussian"
    assert spread_module.spread_plan(100_000, 128, 16, A.SPREAD_FLOP_BUDGET)[0] == "random"
    assert spread_module.spread_plan(1_000_000, 128, 16, A.SPREAD_FLOP_BUDGET)[0] == "random"
    # each forced tier still gives unit, deterministic rows
    for budget in (1e9, 1e5, 1e3):
        x = A.spread(40, 5, budget=budget, dtype=F64)
        assert x.shape == (40, 5)
        assert_unit_rows(x)
        assert torch.equal(x, A.spread(40, 5, budget=budget, dtype=F64))


def test_hyperspherical_meshgrid():
    g = spread_module.hyperspherical_meshgrid(4, 3)
    assert g.shape == (32, 3)
    assert_unit_rows(g)
    assert torch.unique(torch.round(g, decimals=9), dim=0).shape[0] == 32
    assert spread_module.meshgrid_resolution(20, 3) == 4 and spread_module.meshgrid_resolution(33, 3) == 5


def test_spread_large_problem_runs():
    x = A.spread(100_000, 128)
    assert x.shape == (100_000, 128) and x.dtype == torch.get_default_dtype()
    assert (x.norm(dim=1) - 1).abs().max() < 1e-5
    assert torch.isfinite(x).all()
    assert abs(x[:2000] @ x[2000:4000].T).max() < 0.6  # near-orthogonal in high d


def test_spread_argument_validation():
    with pytest.raises(ValueError, match="oversample"):
        A.spread(10, 3, oversample=1)
    with pytest.raises(ValueError, match="refine_steps"):
        A.spread(10, 3, refine_steps=-1)
    with pytest.raises(ValueError, match="budget"):
        A.spread(10, 3, budget=0)


# ------------------------------------------------------------------------------------- random initializers


def test_gaussian_subcenters_shape_variance_and_mu_range():
    k, s, d, var = 64, 8, 256, 4e-3
    w = A.gaussian_subcenters(k, d, seed=0, sub_centers=s, variance=var, dtype=F64)
    assert w.shape == (k, s, d)
    mu_hat = w.mean(dim=1, keepdim=True)
    # unbiased within-class variance of the noise
    emp_var = ((w - mu_hat) ** 2).sum(1).div(s - 1).mean().item()
    assert emp_var == pytest.approx(var, rel=0.03)
    mu = A.gaussian_subcenters(k, d, seed=0, sub_centers=s, variance=0.0, dtype=F64)[:, 0]
    bound = 1 / math.sqrt(d)
    assert mu.abs().max() <= bound
    assert mu.abs().max() > 0.95 * bound
    assert mu.var().item() == pytest.approx(bound**2 / 3, rel=0.05)  # U(-b, b) has variance b^2/3
    # mu is drawn before the noise, so the same seed gives the same class centres
    torch.testing.assert_close(mu_hat.squeeze(1), mu, atol=5 * math.sqrt(var / s), rtol=0)


def test_gaussian_subcenters_defaults():
    w = A.gaussian_subcenters(10, 512, seed=3, dtype=F64)
    assert w.shape == (10, 4, 512)
    assert (w - w.mean(1, keepdim=True)).pow(2).sum(1).div(3).mean().item() == pytest.approx(1e-3, rel=0.05)


@pytest.mark.parametrize("k", [8, 100])
def test_kaiming_normal_std(k):
    x = A.kaiming_normal(k, 4096, seed=0, dtype=F64)
    assert x.shape == (k, 4096)
    assert x.std().item() == pytest.approx(math.sqrt(2 / k), rel=0.02)
    assert abs(x.mean().item()) < 0.01 * math.sqrt(2 / k) * 5


# ------------------------------------------------------------------------------------------- diagnostics


def test_pairwise_cosine_and_min_angle():
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, -1.0]], dtype=F64)
    c = A.pairwise_cosine(x)
    assert c.shape == (3, 3) and c.dtype == F64
    torch.testing.assert_close(c.diagonal(), torch.ones(3, dtype=F64))
    assert c[0, 2].item() == pytest.approx(-1 / math.sqrt(2))
    assert A.min_pairwise_angle(x) == pytest.approx(math.pi / 2)
    assert A.min_pairwise_angle(A.simplex(10, 9, dtype=F64)) == pytest.approx(math.acos(-1 / 9), abs=1e-6)
    assert A.min_pairwise_angle(A.cube(16, 4)) == pytest.approx(math.pi / 3, abs=1e-6)
    w = A.gaussian_subcenters(3, 8, seed=0, sub_centers=2)
    assert A.pairwise_cosine(w).shape == (6, 6)
    assert 0 < A.min_pairwise_angle(w) < math.pi
    with pytest.raises(ValueError, match="at least 2 rows"):
        A.min_pairwise_angle(torch.ones(1, 3))


def test_min_pairwise_angle_blocks_match_dense():
    x = torch.randn(3000, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    g = A.pairwise_cosine(x)
    g.fill_diagonal_(-2)
    assert A.min_pairwise_angle(x) == pytest.approx(math.acos(g.max().item()), abs=1e-9)


def test_polytope_margin():
    assert A.polytope_margin("simplex", 9) == pytest.approx(1.682137, abs=1e-6)
    assert math.degrees(A.polytope_margin("simplex", 9)) == pytest.approx(96.379, abs=1e-3)
    assert A.polytope_margin("orthoplex", 5) == pytest.approx(math.pi / 2)
    assert A.polytope_margin("cube", 4) == pytest.approx(math.pi / 3)
    assert A.polytope_margin("cube", 6) == pytest.approx(0.841069, abs=1e-6)
    for name, k in [(p, k) for p in ("simplex", "orthoplex", "cube") for k in (2, 3, 4, 10)]:
        d = A.required_embedding_size(name, k)
        x = A.INITIALIZERS[name](k, d, dtype=F64)
        assert A.min_pairwise_angle(x) == pytest.approx(A.polytope_margin(name, d), abs=1e-6)
    with pytest.raises(ValueError, match="unknown polytope"):
        A.polytope_margin("tetrahedron", 3)


def test_required_embedding_size():
    assert [A.required_embedding_size(p, 10) for p in ("simplex", "orthoplex", "cube")] == [9, 5, 4]
    assert A.required_embedding_size("cube", 16) == 4 and A.required_embedding_size("cube", 17) == 5
    with pytest.raises(ValueError, match="unknown polytope"):
        A.required_embedding_size("sphere", 3)


# -------------------------------------------------------------------------------------------- registry


def test_register_initializers():
    calls = []
    default_plugin.register_initializers(lambda name, fn: calls.append((name, fn)))
    assert [n for n, _ in calls] == list(A.INITIALIZERS)
    assert dict(calls) == A.INITIALIZERS
    assert set(A.INITIALIZERS) == {
        "one_hot",
        "polygon",
        "simplex",
        "orthoplex",
        "cube",
        "spread",
        "gaussian_subcenters",
        "kaiming_normal",
    }


def test_register_initializers_is_a_hookimpl():
    from pml_anchors.plugin.hookspecs import PROJECT_NAME

    assert hasattr(default_plugin.register_initializers, f"{PROJECT_NAME}_impl")
    assert pml_anchors.get_plugins()[0]["module"] == "pml_anchors.anchors.default_plugin"  # the core's own plugin


@pytest.mark.parametrize("name", RANDOM)
def test_random_rows_distinct(name):
    x = A.INITIALIZERS[name](16, 8, seed=0, dtype=F64)
    assert A.min_pairwise_angle(x) > 0
