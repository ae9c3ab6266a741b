"""Tests of the ``reponet`` method (Margin-RePoNet, Pernici et al., CVPR-W 2019) through the real entry point."""

import io
import math
import re
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import ArcFaceLoss, NormalizedSoftmaxLoss

import pml_anchors
from pml_anchors.testing import check_import_is_light, check_method

KAPPA = 30.0
POLYTOPES = ["simplex", "orthoplex", "cube"]


def make(num_classes, embedding_size=None, **kwargs):
    return pml_anchors.get_loss("reponet", num_classes, embedding_size, **kwargs)


def make64(num_classes, embedding_size=None, **kwargs):
    """The loss with its polytope built directly in float64 (no float32 rounding of the vertices)."""
    return make(num_classes, embedding_size, anchor_kwargs={"dtype": torch.float64}, **kwargs)


def random_batch(loss, n=48, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, loss.embedding_size, generator=g, dtype=dtype)
    labels = torch.randint(0, loss.num_classes, (n,), generator=g)
    return emb, labels


def pml_twin(loss, cls, **kwargs):
    """A PML loss whose learnable W (D x C) is set to our fixed polytope."""
    rows, d = loss.anchors.shape
    twin = cls(num_classes=rows, embedding_size=d, **kwargs)
    twin.W.data = loss.anchors.T.clone().to(torch.float64)
    return twin


def value_and_grad(loss, emb, labels, **kw):
    emb = emb.clone().requires_grad_(True)
    value = loss(emb, labels, **kw)
    value.backward()
    return value.detach(), emb.grad


# -- closed-form oracles (Pernici et al. eq. 3-12) -------------------------------------------------------


def test_simplex_on_vertex_is_log_k():
    loss = make64(10)
    assert loss(loss.anchors.clone(), torch.arange(10)).item() == pytest.approx(math.log(10), abs=1e-6)
    assert math.log(10) == pytest.approx(2.302585, abs=1e-6)


def test_simplex_off_vertex_with_and_without_margin():
    f = torch.zeros(1, 9, dtype=torch.float64)
    f[0, 0], f[0, 1] = 1.0, 0.5
    y = torch.tensor([0])
    cos_y = float(F.normalize(f, dim=1) @ make64(10).anchors[0])
    assert cos_y == pytest.approx(0.835365, abs=1e-6)
    assert make64(10)(f, y).item() == pytest.approx(30.092132, abs=1e-6)
    assert make64(10, margin=0)(f, y).item() == pytest.approx(7.21e-7, abs=1e-9)


def test_orthoplex_on_vertex():
    loss = make64(10, polytope="orthoplex")
    assert loss.anchors.shape == (10, 5)
    expected = math.log(9 + math.exp(-KAPPA))  # the antipode contributes e^{-kappa}
    assert loss(loss.anchors.clone(), torch.arange(10)).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("num_classes", [16, 10])
def test_cube_d4_on_vertex_keeps_all_16_vertices(num_classes):
    loss = make64(num_classes, polytope="cube")
    assert loss.anchors.shape == (16, 4) and loss.embedding_size == 4
    d = 4
    expected = math.log(1 + d + sum(math.comb(d, k) * math.exp(-2 * KAPPA * (k - 1) / d) for k in range(2, d + 1)))
    value = loss(loss.anchors[:num_classes].clone(), torch.arange(num_classes)).item()
    assert value == pytest.approx(expected, abs=1e-6)
    assert value == pytest.approx(1.609438, abs=1e-6)


def test_target_min_angle_is_phi():
    assert make(10).target_min_angle() == pytest.approx(1.682137, abs=1e-6)
    assert math.degrees(make(10).target_min_angle()) == pytest.approx(96.379, abs=1e-3)
    assert make(10, polytope="orthoplex").target_min_angle() == pytest.approx(math.pi / 2)
    assert math.degrees(make(10, polytope="cube").target_min_angle()) == pytest.approx(60.0)
    assert make(47, polytope="cube").target_min_angle() == pytest.approx(0.841069, abs=1e-6)
    # The default margin is phi, and phi is the polytope's smallest vertex angle.
    for poly in POLYTOPES:
        loss = make(10, polytope=poly)
        assert loss.margin == loss.target_min_angle()
        assert pml_anchors.anchors.min_pairwise_angle(loss.anchors) == pytest.approx(loss.margin, abs=1e-6)


def test_custom_anchors_phi_is_their_angle_as_built():
    """With a numeric margin, phi (the geometry target) is still the custom anchors' angle at construction."""
    anchors = pml_anchors.anchors.simplex(6, 5)
    loss = make(6, 5, anchors=anchors, margin=0.3, learnable=True)
    with torch.no_grad():
        loss.anchors[1] = loss.anchors[0] + 0.01  # a learnable run's drift
    assert loss.margin == 0.3
    assert loss.phi == loss.target_min_angle() == pytest.approx(math.acos(-1 / 5), abs=1e-6)


# -- PML parity -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("poly,num_classes", [("simplex", 10), ("orthoplex", 9), ("cube", 10)])
def test_no_margin_equals_pml_normalized_softmax_and_arcface(poly, num_classes):
    loss = make64(num_classes, polytope=poly, margin=0)
    emb, labels = random_batch(loss)
    ours, ours_grad = value_and_grad(loss, emb, labels)
    for twin in (
        pml_twin(loss, NormalizedSoftmaxLoss, temperature=1 / KAPPA),
        pml_twin(loss, ArcFaceLoss, margin=0, scale=KAPPA),
    ):
        theirs, theirs_grad = value_and_grad(twin, emb, labels)
        assert ours.item() == pytest.approx(theirs.item(), abs=1e-9)
        torch.testing.assert_close(ours_grad, theirs_grad, atol=1e-9, rtol=0)


@pytest.mark.parametrize("poly,num_classes", [("simplex", 10), ("orthoplex", 9), ("cube", 10), ("cube", 47)])
def test_margin_equals_pml_arcface_with_phi_in_degrees(poly, num_classes):
    loss = make64(num_classes, polytope=poly)
    twin = pml_twin(loss, ArcFaceLoss, margin=np.degrees(loss.margin), scale=KAPPA)
    emb, labels = random_batch(loss, n=64)
    cos_y = (F.normalize(emb, dim=1) @ loss.anchors.double().T)[torch.arange(64), labels]
    assert (cos_y < -math.cos(loss.margin)).any() and (cos_y > -math.cos(loss.margin)).any()  # both branches
    ours, ours_grad = value_and_grad(loss, emb, labels)
    theirs, theirs_grad = value_and_grad(twin, emb, labels)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-9)
    torch.testing.assert_close(ours_grad, theirs_grad, atol=1e-9, rtol=0)
    torch.testing.assert_close(loss.get_logits(emb), twin.get_logits(emb), atol=1e-9, rtol=0)


def test_miner_weights_match_pml():
    loss = make64(10)
    twin = pml_twin(loss, ArcFaceLoss, margin=np.degrees(loss.margin), scale=KAPPA)
    emb, labels = random_batch(loss, n=12)
    pairs = (torch.tensor([0, 0, 3]), torch.tensor([1, 2, 4]), torch.tensor([5]), torch.tensor([7]))
    ours = loss(emb, labels, indices_tuple=pairs)
    assert ours.item() == pytest.approx(twin(emb, labels, indices_tuple=pairs).item(), abs=1e-9)
    assert ours.item() != pytest.approx(loss(emb, labels).item())


# -- the ArcFace fallback past theta > pi - m -----------------------------------------------------------


def _feature_at_angle(loss, label, theta):
    """A feature at angle theta from vertex ``label``, rotated towards another direction."""
    w = loss.anchors.double()[label]
    other = torch.randn(w.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    u = F.normalize(other - (other @ w) * w, dim=0)
    return (math.cos(theta) * w + math.sin(theta) * u).unsqueeze(0)


@pytest.mark.parametrize("fallback", ["arcface", "easy", "none"])
def test_fallback_branch_values(fallback):
    loss = make64(10, fallback=fallback)
    m = loss.margin
    theta = math.pi - m + 0.2  # past the switch: cos(theta + m) no longer decreases
    f = _feature_at_angle(loss, 0, theta)
    cos = (F.normalize(f, dim=1) @ loss.anchors.double().T)[0]
    target = {
        "arcface": math.cos(theta) - m * math.sin(m),
        "easy": math.cos(theta),  # cos theta < 0 here: no margin
        "none": math.cos(theta + m),
    }[fallback]
    logits = KAPPA * cos.clone()
    logits[0] = KAPPA * target
    expected = torch.logsumexp(logits, 0) - logits[0]
    assert loss(f, torch.tensor([0])).item() == pytest.approx(expected.item(), abs=1e-9)


def test_arcface_fallback_keeps_the_target_logit_monotone():
    loss = make64(10)
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    target = loss.target_logit(torch.cos(theta))
    assert (target.diff() <= 1e-12).all()
    raw = make64(10, fallback="none").target_logit(torch.cos(theta))
    assert (raw.diff() > 0).any()  # eq. 9 literally is not monotone for m = phi


def test_gradcheck_covers_both_branches():
    loss = make64(6)
    emb = torch.cat([_feature_at_angle(loss, 0, 0.4), _feature_at_angle(loss, 1, math.pi - loss.margin + 0.3)])
    emb = torch.cat([emb, torch.randn(4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)])
    emb = (emb * torch.tensor([[0.5], [2.0], [1.0], [3.0], [0.7], [1.3]], dtype=torch.float64)).requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    assert torch.autograd.gradcheck(lambda e: loss(e, labels), (emb,))
    no_margin = make64(6, margin=0)
    assert torch.autograd.gradcheck(lambda e: no_margin(e, labels), (emb,))


# -- numerics -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("poly", POLYTOPES)
def test_finite_gradients_on_vertices_and_at_zero(poly):
    loss = make(10, polytope=poly)
    emb = torch.cat([loss.anchors[:10], torch.zeros(1, loss.embedding_size), -loss.anchors[:1]])
    emb = emb.clone().requires_grad_(True)
    labels = torch.cat([torch.arange(10), torch.tensor([0, 0])])
    value = loss(emb, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(emb.grad).all()


def test_large_scale_is_stable():
    loss = make(10, scale=1e4)
    emb, labels = random_batch(loss, dtype=torch.float32)
    emb.requires_grad_(True)
    value = loss(emb, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(emb.grad).all() and value.item() > 100


def test_dtypes_and_bf16_autocast_keep_the_buffer_dtype():
    loss = make(10, polytope="cube")
    assert loss.anchors.dtype == torch.float32
    emb, labels = random_batch(loss, n=64, dtype=torch.float32)
    v32 = loss(emb, labels)
    v64 = loss(emb.double(), labels)
    assert v64.dtype == torch.float64 and v32.item() == pytest.approx(v64.item(), rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb_bf16 = emb.clone().requires_grad_(True)
        vbf = loss(emb_bf16, labels)
    vbf.backward()
    assert torch.isfinite(vbf) and torch.isfinite(emb_bf16.grad).all()
    assert vbf.item() == pytest.approx(v32.item(), rel=5e-2)
    vbf_in = loss(emb.bfloat16(), labels)  # bf16 embeddings without autocast
    assert torch.isfinite(vbf_in) and vbf_in.item() == pytest.approx(v32.item(), rel=5e-2)
    assert loss.anchors.dtype == torch.float32 and not loss.anchors.requires_grad


# -- widths, rows, drop_unused ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "poly,num_classes,width,rows",
    [
        ("simplex", 10, 9, 10),
        ("orthoplex", 10, 5, 10),
        ("orthoplex", 9, 5, 10),
        ("cube", 10, 4, 16),
        ("cube", 47, 6, 64),
        ("cube", 2, 1, 2),
    ],
)
def test_derived_width_and_rows(poly, num_classes, width, rows):
    loss = make(num_classes, polytope=poly)
    assert (loss.embedding_size, loss.num_rows) == (width, rows)
    assert loss.anchors.shape == loss.expected_anchor_shape() == (rows, width)
    assert "anchors" in dict(loss.named_buffers()) and not list(loss.parameters())
    dropped = make(num_classes, polytope=poly, drop_unused=True)
    assert dropped.anchors.shape == (num_classes, width)
    torch.testing.assert_close(dropped.anchors, loss.anchors[:num_classes])


@pytest.mark.parametrize(
    "poly,num_classes,given,need,rule",
    [
        ("simplex", 10, 8, 9, "num_classes - 1"),
        ("orthoplex", 9, 4, 5, "ceil(num_classes / 2)"),
        ("cube", 10, 3, 4, "ceil(log2(num_classes))"),
    ],
)
def test_too_narrow_width_names_the_needed_size(poly, num_classes, given, need, rule):
    with pytest.raises(ValueError, match=re.escape(f"needs embedding_size >= {rule} = {need}, got {given}")):
        make(num_classes, given, polytope=poly)
    assert make(num_classes, need, polytope=poly).embedding_size == need


# -- wider embeddings: the polytope zero-padded -------------------------------------------------------------


@pytest.mark.parametrize("poly,num_classes,rows", [("simplex", 10, 10), ("orthoplex", 9, 10), ("cube", 10, 16)])
def test_wider_embedding_holds_the_same_polytope_zero_padded(poly, num_classes, rows):
    own = make64(num_classes, polytope=poly)
    wide = make64(num_classes, 128, polytope=poly)
    w = own.embedding_size
    assert wide.embedding_size == 128 and wide.polytope_width == w and wide.anchors.shape == (rows, 128)
    torch.testing.assert_close(wide.anchors[:, :w], own.anchors, atol=0, rtol=0)
    assert (wide.anchors[:, w:] == 0).all()
    assert wide.margin == own.margin == wide.target_min_angle()  # phi of the w-dimensional polytope
    assert pml_anchors.anchors.min_pairwise_angle(wide.anchors) == pytest.approx(wide.margin, abs=1e-9)
    assert "zero-padded" in repr(wide)


def test_wider_embedding_on_vertex_oracle_and_padding_coordinates():
    """Features in the polytope's span give the width-w loss and no gradient off it; the rest of R^d counts
    in the normalisation, so leaving the span raises the loss."""
    own, wide = make64(10), make64(10, 32)
    assert wide(wide.anchors * 2.0, torch.arange(10)).item() == pytest.approx(math.log(10), abs=1e-6)  # §7.2
    emb, labels = random_batch(own)
    padded = F.pad(emb, (0, 32 - 9))
    ours, grad = value_and_grad(wide, padded, labels)
    theirs, own_grad = value_and_grad(own, emb, labels)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-12)
    torch.testing.assert_close(grad[:, :9], own_grad, atol=1e-12, rtol=0)
    assert (grad[:, 9:] == 0).all()
    on_vertex = wide.anchors * 2.0
    off_span = on_vertex.clone()
    off_span[:, 9:] = 0.5
    assert wide(off_span, torch.arange(10)).item() > wide(on_vertex, torch.arange(10)).item() + 1.0


@pytest.mark.parametrize("poly,num_classes", [("simplex", 10), ("cube", 10)])
def test_wider_embedding_equals_pml_arcface_on_the_padded_classifier(poly, num_classes):
    loss = make64(num_classes, 64, polytope=poly)
    twin = pml_twin(loss, ArcFaceLoss, margin=np.degrees(loss.margin), scale=KAPPA)
    emb, labels = random_batch(loss, n=64)
    ours, ours_grad = value_and_grad(loss, emb, labels)
    theirs, theirs_grad = value_and_grad(twin, emb, labels)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-9)
    torch.testing.assert_close(ours_grad, theirs_grad, atol=1e-9, rtol=0)


def test_drop_unused_removes_virtual_classes_from_the_softmax():
    full = make64(10, polytope="cube")
    dropped = make64(10, polytope="cube", drop_unused=True)
    emb, labels = random_batch(full, n=40)
    # Dropped = ArcFace over the first K rows only; full keeps all 16 rows in the denominator.
    twin = pml_twin(dropped, ArcFaceLoss, margin=np.degrees(dropped.margin), scale=KAPPA)
    assert dropped(emb, labels).item() == pytest.approx(twin(emb, labels).item(), abs=1e-9)
    assert full(emb, labels).item() > dropped(emb, labels).item()
    assert dropped.get_logits(emb).shape == (40, 10) and full.get_logits(emb).shape == (40, 16)


def test_predict_is_argmax_over_all_rows_virtual_included():
    loss = make(10, polytope="cube")
    emb = loss.anchors.clone() * 3.0  # one feature on each of the 16 vertices
    pred = loss.predict(emb)
    assert pred.tolist() == list(range(16))  # rows 10..15 are virtual: an error for any true label
    assert (pred[10:] >= loss.num_classes).all()
    dropped = make(10, polytope="cube", drop_unused=True)
    assert (dropped.predict(emb) < 10).all()
    assert make(10).predict(make(10).anchors).tolist() == list(range(10))


# -- options, custom anchors, bad input --------------------------------------------------------------------


def test_anchor_kwargs_and_polytope_name_as_anchors():
    by_name = make(10, anchors="orthoplex")
    assert by_name.polytope == "orthoplex" and by_name.embedding_size == 5
    interleaved = make(10, polytope="orthoplex", anchor_kwargs={"order": "interleaved"})
    torch.testing.assert_close(interleaved.anchors[1], -interleaved.anchors[0])


def test_custom_anchor_tensor_and_auto_margin():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.6, 0.8]])
    loss = make(4, anchors=anchors)
    assert loss.embedding_size == 2 and loss.num_rows == 5 and not loss.uses_polytope
    assert loss.margin == pytest.approx(math.acos(0.8))  # smallest angle between two rows
    assert make(4, anchors=anchors, drop_unused=True).anchors.shape == (4, 2)
    with pytest.raises(ValueError, match=r"rows >= 4"):
        make(4, anchors=anchors[:3])
    with pytest.raises(ValueError, match="needs embedding_size"):
        make(4, anchors="spread")


def test_learnable_baseline_gets_gradients():
    loss = make(10, learnable=True)
    assert isinstance(loss.anchors, torch.nn.Parameter)
    emb, labels = random_batch(loss, dtype=torch.float32)
    loss(emb, labels).backward()
    assert loss.anchors.grad is not None and torch.isfinite(loss.anchors.grad).all()


def test_state_dict_checks_the_geometry():
    cube = make(10, polytope="cube")
    other = make(10, polytope="cube")
    other.load_state_dict(cube.state_dict())
    with pytest.raises(ValueError, match="checkpoint anchors"):
        make(10, polytope="cube", drop_unused=True).load_state_dict(cube.state_dict())


@pytest.mark.parametrize("polytope", ["cube", "orthoplex"])
def test_state_dict_records_num_classes_that_the_padded_vertices_hide(polytope):
    """A K=5 cube and a K=8 cube share the same 8 vertices: only the recorded num_classes tells them apart."""
    small, large = make(5, polytope=polytope), make(5 + 1 if polytope == "orthoplex" else 8, polytope=polytope)
    assert small.anchors.shape == large.anchors.shape
    buf = io.BytesIO()
    torch.save(small.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    make(5, polytope=polytope).load_state_dict(state)
    with pytest.raises(ValueError, match=r"num_classes=5, but this one has num_classes=(6|8)"):
        large.load_state_dict(state)
    older = {k: v for k, v in state.items() if not k.endswith("_extra_state")}  # written before it was recorded
    large.load_state_dict(older)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"polytope": "dodecahedron"}, ValueError, "polytope must be one of"),
        ({"margin": -0.1}, ValueError, r"\[0, pi\]"),
        ({"margin": 60.0}, ValueError, "degrees"),
        ({"margin": "phi"}, ValueError, "'auto'"),
        ({"margin": float("nan")}, ValueError, "margin"),
        ({"scale": 0}, ValueError, "scale"),
        ({"scale": float("inf")}, ValueError, "scale"),
        ({"fallback": "clip"}, ValueError, "fallback must be one of"),
        ({"drop_unused": "yes"}, TypeError, "drop_unused"),
        ({"polytope": "cube", "anchors": "simplex"}, ValueError, "contradicts"),
        ({"distance": LpDistance()}, ValueError, r"computes cosines .* distance must be CosineSimilarity\(\)"),
    ],
)
def test_bad_hyper_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        make(10, **kwargs)


def test_bad_batches_are_rejected():
    loss = make(10, polytope="cube")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        loss(torch.randn(2, 4), torch.tensor([0, 12]))  # a virtual row is not a label
    with pytest.raises(ValueError, match=r"\(batch_size, 4\)"):
        loss(torch.randn(2, 9), torch.tensor([0, 1]))


# -- registry, conformance, hooks -------------------------------------------------------------------------


def test_registered_spec():
    spec = pml_anchors.get_method("reponet")
    assert spec.plugin == "pml-anchors-reponet" and spec.normalize_embeddings is True
    assert spec.lr_multipliers == {} and "Pernici" in spec.paper
    assert pml_anchors.get_method("margin_reponet") is spec


def test_plugin_import_is_torch_free():
    check_import_is_light("pml_anchors_reponet")


def test_check_method_derived_width():
    report = check_method("reponet", embedding_size=None)
    assert report["hooks"] == "TrainerHooks" and math.isfinite(report["trainer_loss"])


@pytest.mark.parametrize("poly,drop_unused", [("orthoplex", False), ("cube", False), ("cube", True)])
def test_check_method_each_polytope(poly, drop_unused):
    check_method(
        "reponet", num_classes=7, embedding_size=None, loss_kwargs={"polytope": poly, "drop_unused": drop_unused}
    )


def test_hooks_log_geometry_against_phi():
    hooks = pml_anchors.get_trainer_hooks("reponet")
    loss = make(10, polytope="cube")
    trainer = types.SimpleNamespace(loss_funcs={"metric_loss": loss}, epoch=1)
    assert hooks.end_of_epoch_hook(trainer) is True
    record = hooks.history[-1]
    assert record["target_min_angle_deg"] == pytest.approx(60.0)
    assert record["min_anchor_angle_deg"] == pytest.approx(60.0, abs=1e-3)
    assert record["margin_deg"] == pytest.approx(60.0) and record["geometry_ok"] is True
    squeezed = make(3, anchors=torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    with torch.no_grad():
        squeezed.anchors[1] = torch.tensor([0.9, 0.1])  # drifted below phi
    hooks.end_of_epoch_hook(types.SimpleNamespace(loss_funcs={"metric_loss": squeezed}, epoch=2))
    assert hooks.history[-1]["geometry_ok"] is False
