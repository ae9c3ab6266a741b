"""E-NCM / C-NCM (Hao et al., arXiv 1804.08087) through the real entry point: oracles, gradients, anchors."""

import math

import pytest
import torch
import torch.nn.functional as F
from pml_anchors_ncm.ncm_loss import CNCMLoss, ENCMLoss, NCMLoss
from pml_anchors_ncm.tiered import ncm_tier, ncm_tiered
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import NormalizedSoftmaxLoss

import pml_anchors
from pml_anchors import TrainerHooks
from pml_anchors import anchors as geometry
from pml_anchors.testing import check_dtypes, check_method

F64 = torch.float64
# hand-derived oracle (Hao et al., arXiv 1804.08087, eq. 4-8): anchors e1, e2, e3 in R^4
ORACLE_X = torch.tensor([[1.0, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 1]], dtype=F64)
ORACLE_Y = torch.tensor([0, 1, 2])
ORACLE_A = torch.eye(3, 4, dtype=F64)


def loss_of(name, k, d, **kw):
    return pml_anchors.get_loss(name, k, d, **kw)


def batch(b=24, d=8, k=6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=dtype), torch.arange(b) % k


# -- oracles ------------------------------------------------------------------------------------
def test_oracles_section_7_3():
    e = loss_of("e_ncm", 3, 4, anchors=ORACLE_A)(ORACLE_X, ORACLE_Y)
    e2 = loss_of("e_ncm", 3, 4, anchors=ORACLE_A, squared=True)(ORACLE_X, ORACLE_Y)
    c = loss_of("c_ncm", 3, 4, anchors=ORACLE_A)(ORACLE_X, ORACLE_Y)
    assert e.dtype == F64
    assert e.item() == pytest.approx(0.650982, abs=1e-6)
    assert e2.item() == pytest.approx(0.458044, abs=1e-6)
    assert c.item() == pytest.approx(0.733834, abs=1e-6)
    # closed forms of the three samples (x = e1, x = 2 e2, x = e4 equidistant from every anchor)
    s5 = math.sqrt(5)
    plain = (math.log(1 + 2 * math.exp(-math.sqrt(2))) + math.log(1 + 2 * math.exp(1 - s5)) + math.log(3)) / 3
    squared = (math.log(1 + 2 * math.exp(-2)) + math.log(1 + 2 * math.exp(-4)) + math.log(3)) / 3
    cosine = (2 * math.log(1 + 2 * math.exp(-1)) + math.log(3)) / 3
    # x = e1 sits on its anchor: the rounding floor reads that distance as sqrt(2u) ~ 2e-8 instead of 0
    assert e.item() == pytest.approx(plain, abs=1e-8)
    assert e2.item() == pytest.approx(squared, abs=1e-12)
    assert c.item() == pytest.approx(cosine, abs=1e-12)


@pytest.mark.parametrize("num_classes", [10, 100])
def test_feature_on_its_anchor(num_classes):
    a = torch.eye(num_classes, num_classes + 6, dtype=F64)
    x = a.clone().requires_grad_(True)
    y = torch.arange(num_classes)
    e = loss_of("e_ncm", num_classes, num_classes + 6, anchors=a)(x, y)
    expected = math.log(1 + (num_classes - 1) * math.exp(-math.sqrt(2)))
    assert e.item() == pytest.approx(expected, abs=1e-6)
    if num_classes == 10:
        assert e.item() == pytest.approx(1.159410, abs=1e-6)
    e.backward()
    assert torch.isfinite(x.grad).all()
    # own term contributes 0; others pull along (x - a_c)/sqrt(2) with weight p_c
    p_other = math.exp(-math.sqrt(2)) / (1 + (num_classes - 1) * math.exp(-math.sqrt(2)))
    # d/dx sum: -sum_{c != y} p_c (x - a_c)/d_c = -(p/sqrt2) ((C-1) a_y - sum_{c != y} a_c)
    expected_grad = -(p_other / math.sqrt(2)) * ((num_classes - 1) * a - (a.sum(0) - a)) / num_classes
    assert torch.allclose(x.grad, expected_grad, atol=1e-7)
    c = loss_of("c_ncm", num_classes, num_classes + 6, anchors=a)(x.detach(), y)
    assert c.item() == pytest.approx(math.log(1 + (num_classes - 1) * math.exp(-1)), abs=1e-9)


def test_fp32_distance_gradient_stays_bounded_near_an_anchor():
    """|d||x - a||/dx| = 1 exactly; the expansion ||x||^2 - 2x.a + ||a||^2 must not turn rounding noise into spikes."""
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(1, 64, generator=g), dim=1) * 2
    scales = torch.logspace(-6, -1, 20000).unsqueeze(1)
    x = (a + scales * torch.randn(20000, 64, generator=g) / 8).requires_grad_(True)
    loss = loss_of("e_ncm", 1, 64, anchors=a)
    distance = -loss.get_logits(x)
    distance.sum().backward()
    norms = x.grad.norm(dim=1)
    assert torch.isfinite(norms).all() and norms.max() <= 1.3  # an eps-only clamp gives up to ~2.7 here
    assert torch.allclose(norms[scales.squeeze(1) > 3e-2], torch.tensor(1.0), atol=5e-3)
    exact = (x.detach().double() - a.double()).norm(dim=1, keepdim=True)
    assert (distance.detach().double() - exact).abs().max() < 3e-3  # flat only within rounding noise


def test_zero_features_are_finite():
    x = torch.zeros(4, 8, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    for name in ("e_ncm", "c_ncm"):
        x.grad = None
        value = loss_of(name, 6, 8)(x, y)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(x.grad).all()
    # C-NCM with a zero feature: all cosines 0, loss log K
    assert loss_of("c_ncm", 6, 8)(x.detach(), y).item() == pytest.approx(math.log(6), abs=1e-6)


# -- PML with identical parameters -----------------------------------------------------------------
@pytest.mark.parametrize(
    "name,kwargs,distance",
    [
        ("c_ncm", {}, None),
        ("e_ncm", {}, LpDistance(normalize_embeddings=False)),
        ("e_ncm", {"squared": True}, LpDistance(normalize_embeddings=False, power=2)),
    ],
)
def test_matches_pml_normalized_softmax_with_temperature_1(name, kwargs, distance):
    x, y = batch(32, 8, 6, dtype=F64)
    anchors = ncm_tiered(6, 8, seed=0, dtype=F64)
    ours = loss_of(name, 6, 8, anchors=anchors, **kwargs)
    pml = NormalizedSoftmaxLoss(6, 8, temperature=1.0, **({"distance": distance} if distance else {}))
    with torch.no_grad():
        pml.W.data = anchors.T.clone()
    indices = (torch.tensor([0, 0, 1, 5]), torch.tensor([6, 12, 7, 11]), torch.tensor([1, 3, 4, 2]))
    for tup in (None, indices):
        x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        v1, v2 = ours(x1, y, tup), pml(x2, y, tup)
        v1.backward()
        v2.backward()
        assert torch.allclose(v1, v2, atol=1e-12, rtol=0)
        assert torch.allclose(x1.grad, x2.grad, atol=1e-12, rtol=0)


def test_gradient_matches_hand_derived_formula():
    """dL/dx_i = (1/B) sum_c (p_ic - 1[c = y_i]) * dM_c/dx_i * (-1), dM/dx = (x - a_c)/||x - a_c||."""
    x, y = batch(16, 5, 4, seed=3, dtype=F64)
    a = ncm_tiered(4, 5, seed=0, dtype=F64)
    x.requires_grad_(True)
    loss_of("e_ncm", 4, 5, anchors=a)(x, y).backward()
    diff = x.detach().unsqueeze(1) - a.unsqueeze(0)
    dist = diff.norm(dim=2)
    coef = torch.softmax(-dist, dim=1) - F.one_hot(y, 4)
    expected = -(coef / dist).unsqueeze(2).mul(diff).sum(1) / len(y)
    assert torch.allclose(x.grad, expected, atol=1e-12)


@pytest.mark.parametrize("name,kwargs", [("e_ncm", {}), ("e_ncm", {"squared": True}), ("c_ncm", {})])
def test_gradcheck_embeddings_and_learnable_anchors(name, kwargs):
    x, y = batch(5, 4, 3, seed=1, dtype=F64)
    loss = loss_of(name, 3, 4, learnable=True, **kwargs).double()
    a = loss.anchors.detach().clone()

    def fn(emb, anc):
        return torch.func.functional_call(loss, {"anchors": anc}, (emb, y))

    assert torch.autograd.gradcheck(fn, (x.requires_grad_(True), a.requires_grad_(True)))


# -- conformance, options, errors ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["e_ncm", "c_ncm"])
def test_check_method(name):
    report = check_method(name)
    assert report["hooks"] == "TrainerHooks"  # the base hooks record loss.geometry()
    # a K > d case (tier 5) too
    assert math.isfinite(check_method(name, num_classes=10, embedding_size=3, train_iterations=1)["loss"])


def test_method_specs():
    e, c = pml_anchors.get_method("e_ncm"), pml_anchors.get_method("c_ncm")
    assert e.plugin == c.plugin == "pml-anchors-ncm"
    assert e.normalize_embeddings is False and c.normalize_embeddings is True
    assert e.initializer == c.initializer == "ncm_tiered"
    assert "1804.08087" in e.paper and e.description and c.description
    assert pml_anchors.get_initializer("ncm_tiered") is ncm_tiered
    assert type(loss_of("e_ncm", 3, 4)) is ENCMLoss and type(loss_of("c_ncm", 3, 4)) is CNCMLoss
    assert type(pml_anchors.get_trainer_hooks("c_ncm")) is TrainerHooks


def test_anchors_are_a_fixed_buffer_from_the_tiered_rule():
    loss = loss_of("e_ncm", 10, 7, seed=5)
    assert list(loss.parameters()) == [] and "anchors" in loss.state_dict()
    assert torch.equal(loss.anchors, ncm_tiered(10, 7, seed=5))
    # direct construction (no registry) uses the same rule
    assert torch.equal(ENCMLoss(10, 7, seed=5).anchors, loss.anchors)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"squared": "yes"}, TypeError, "squared must be True, False or None, got 'yes'"),
        ({"eps": 0.0}, ValueError, "eps must be"),
        ({"eps": -1e-6}, ValueError, "eps must be"),
        ({"eps": float("nan")}, ValueError, "eps must be"),
        ({"eps": True}, TypeError, "eps must be a finite number > 0, got bool True"),
        ({"metric": "cosine"}, TypeError, "Euclidean metric"),
    ],
)
def test_bad_hyper_parameters_e_ncm(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        loss_of("e_ncm", 3, 4, **kwargs)


def test_bad_hyper_parameters_other():
    with pytest.raises(TypeError, match="cosine metric"):
        loss_of("c_ncm", 3, 4, squared=True)
    with pytest.raises(ValueError, match="metric must be one of 'euclidean', 'cosine'"):
        NCMLoss(3, 4, metric="manhattan")
    with pytest.raises(ValueError, match="squared=True applies to the Euclidean metric"):
        NCMLoss(3, 4, metric="cosine", squared=True)
    with pytest.raises(ValueError, match=r"needs anchors of shape \(3, 4\)"):
        loss_of("e_ncm", 3, 4, anchors=torch.eye(3, 5))
    with pytest.raises(ValueError, match="embedding_size >= 2"):
        loss_of("e_ncm", 3, 1)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        loss_of("c_ncm", 3, 4)(torch.randn(2, 4), torch.tensor([0, 3]))


# -- the tiered rule -------------------------------------------------------------------------------
def _orthoplex_rows(k, d):
    rows = torch.zeros(k, d)
    for r in range(k):
        rows[r, r // 2] = 1.0 if r % 2 == 0 else -1.0
    return rows


@pytest.mark.parametrize(
    "k,d,tier,expected",
    [
        (10, 16, "one_hot", lambda: torch.eye(10, 16)),
        (10, 2, "polygon", lambda: geometry.polygon(10, 2)),
        (10, 9, "simplex", lambda: geometry.simplex(10, 9)),
        (10, 7, "orthoplex", lambda: _orthoplex_rows(10, 7)),
        (20, 3, "spread", lambda: geometry.spread(20, 3, seed=0)),
    ],
)
def test_tiered_rule_picks_tier_and_permutes_rows(k, d, tier, expected):
    assert ncm_tier(k, d) == tier
    base = expected()
    assert torch.equal(ncm_tiered(k, d, seed=0, permute=False), base)
    anchors = ncm_tiered(k, d, seed=0)
    assert torch.allclose(anchors.norm(dim=1), torch.ones(k), atol=1e-6)  # eq. 9
    # a true permutation of the geometry's rows: every anchor is exactly one base row, each used once
    match = (anchors.unsqueeze(1) == base.unsqueeze(0)).all(dim=2)
    assert (match.sum(dim=1) == 1).all() and (match.sum(dim=0) == 1).all()
    perm = match.float().argmax(dim=1)
    assert not torch.equal(perm, torch.arange(k))  # "randomly assigned to one category"
    # seeded: the same seed gives the same anchors, another seed another assignment
    assert torch.equal(ncm_tiered(k, d, seed=0), anchors)
    assert not torch.equal(ncm_tiered(k, d, seed=1), anchors)
    expected_perm = torch.randperm(k, generator=torch.Generator().manual_seed(0))
    assert torch.equal(perm, expected_perm)


def test_tier_boundaries_and_min_angles():
    assert [ncm_tier(k, 4) for k in (1, 4, 5, 6, 8, 9)] == [
        "one_hot",
        "one_hot",
        "simplex",
        "orthoplex",
        "orthoplex",
        "spread",
    ]
    assert ncm_tier(3, 2) == "polygon" and ncm_tier(2, 1) == "simplex"
    assert loss_of("e_ncm", 10, 16).target_min_angle() == pytest.approx(math.pi / 2)
    assert loss_of("e_ncm", 10, 7).target_min_angle() == pytest.approx(math.pi / 2)
    assert loss_of("e_ncm", 10, 9).target_min_angle() == pytest.approx(math.acos(-1 / 9), abs=1e-6)
    assert loss_of("e_ncm", 10, 2).target_min_angle() == pytest.approx(2 * math.pi / 10, abs=1e-6)
    assert loss_of("c_ncm", 1, 2).target_min_angle() is None


def test_registered_geometry_override():
    loss = loss_of("e_ncm", 10, 9, anchors="simplex")
    assert torch.equal(loss.anchors, geometry.simplex(10, 9))  # the geometry as is, no permutation
    custom = torch.randn(4, 3)
    assert torch.equal(loss_of("c_ncm", 4, 3, anchors=custom).anchors, custom)
    spread = loss_of("e_ncm", 20, 3, anchor_kwargs={"refine_steps": 50})
    assert spread.target_min_angle() > loss_of("e_ncm", 20, 3).target_min_angle()


# -- dtypes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["e_ncm", "c_ncm"])
def test_dtypes_and_bf16_autocast(name):
    x, y = batch(64, 8, 6, seed=2)
    loss = loss_of(name, 6, 8)
    check_dtypes(loss, x, y)  # float32 within 1e-6 of float64, bf16 (autocast and input) within 2e-2
    assert loss.anchors.dtype == torch.float32


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("radius", [0.3, 1e-2, 1e-4])
def test_e_ncm_is_exact_near_the_own_anchor(squared, radius):
    """Where E-NCM drives features (onto their anchors) value and gradient match float64, in float32 and under
    bf16 autocast: the own distance comes from x - a_y, not from the GEMM's cancelling ||x||^2 - 2x.a + ||a||^2
    (which gave sign-flipped gradients under bf16 autocast and a flat float32 loss within ~1e-3 of the anchor)."""
    g = torch.Generator().manual_seed(0)
    anchors = torch.randn(10, 16, generator=g)  # norm ~4: the GEMM form cancels badly
    loss = loss_of("e_ncm", 10, 16, anchors=anchors, squared=squared)
    y = torch.arange(10).repeat(3)
    x = anchors[y] + radius * F.normalize(torch.randn(30, 16, generator=g), dim=1)

    def run(x, autocast=False):
        x = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            value = loss(x, y)
        value.backward()
        return value.item(), x.grad.double()

    v64, g64 = run(x.double())
    for autocast, tol in ((False, 1e-5), (True, 0.1)):
        value, grad = run(x, autocast)
        assert value == pytest.approx(v64, rel=tol / 10)
        assert ((grad - g64).norm(dim=1) / g64.norm(dim=1)).max() < tol


# -- prediction ------------------------------------------------------------------------------------
def test_predict_is_nearest_anchor_in_each_metric():
    a = torch.tensor([[1.0, 0.0], [3.0, 0.3]])
    x = torch.tensor([[1.2, 0.12], [2.9, 0.3], [-1.0, -0.5]])
    # (1.2, .12) is parallel to a_1 (cosine picks 1) but Euclidean-closest to a_0
    assert loss_of("e_ncm", 2, 2, anchors=a).predict(x).tolist() == [0, 1, 0]
    assert loss_of("c_ncm", 2, 2, anchors=a).predict(x).tolist() == [1, 1, 0]
    x, _ = batch(50, 8, 6, seed=4)
    loss = loss_of("e_ncm", 6, 8)
    assert torch.equal(loss.predict(x), torch.cdist(x, loss.anchors).argmin(dim=1))
    assert torch.allclose(loss.get_logits(x), -torch.cdist(x, loss.anchors), atol=1e-5)
    cos = loss_of("c_ncm", 6, 8)
    assert torch.allclose(cos.get_logits(x), F.normalize(x, dim=1) @ cos.anchors.T, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        loss.predict(torch.randn(3, 7))


# -- hooks -----------------------------------------------------------------------------------------
class _Trainer:
    def __init__(self, loss, epoch):
        self.loss_funcs = {"metric_loss": loss}
        self.epoch = epoch


def test_hooks_log_min_angle_against_target():
    hooks = pml_anchors.get_trainer_hooks("e_ncm", log_geometry_every=2)
    loss = loss_of("e_ncm", 10, 9)
    assert hooks.end_of_epoch_hook(_Trainer(loss, 1)) is True and hooks.history == []
    hooks.end_of_epoch_hook(_Trainer(loss, 2))
    (record,) = hooks.history
    assert record["epoch"] == 2
    assert record["min_anchor_angle_deg"] == pytest.approx(math.degrees(math.acos(-1 / 9)), abs=1e-3)
    assert record["target_min_angle_deg"] == pytest.approx(record["min_anchor_angle_deg"], abs=1e-3)
    assert record["mean_anchor_norm"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("anchors", [None, "spread"])
def test_hooks_show_anchors_that_moved_against_the_built_angle(anchors):
    loss = loss_of("e_ncm", 10, 5, anchors=anchors, learnable=True)  # None: tier 4, the orthoplex (90 deg)
    built = loss.target_min_angle()
    with torch.no_grad():
        loss.anchors[1] = loss.anchors[0] + 0.01  # what a learnable run's optimizer may do
    hooks = pml_anchors.get_trainer_hooks("e_ncm", log_geometry_every=1)
    hooks.end_of_epoch_hook(_Trainer(loss, 1))
    (record,) = hooks.history
    assert record["target_min_angle_deg"] == pytest.approx(math.degrees(built))
    assert record["min_anchor_angle_deg"] < 2.0 < record["target_min_angle_deg"]


@pytest.mark.parametrize(("k", "d"), [(2, 1), (5, 2), (3, 2), (7, 6), (9, 5), (4, 8)])
def test_closed_form_built_angle_is_the_measured_one(k, d):
    loss = loss_of("c_ncm", k, d)
    assert loss.target_min_angle() == pytest.approx(geometry.min_pairwise_angle(loss.anchors), abs=1e-6)
