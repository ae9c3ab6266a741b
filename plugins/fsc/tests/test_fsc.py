"""F-SC (Zhang & Gong, arXiv 2203.12928) through the real entry point: oracle, gradients, sub-centres."""

import io
import math

import pytest
import torch
import torch.nn.functional as F
from pml_anchors_fsc.fsc_loss import FixedSubCenterLoss, intra_class_cosine

import pml_anchors
from pml_anchors import TrainerHooks
from pml_anchors.anchors import gaussian_subcenters
from pml_anchors.testing import check_dtypes, check_method

F64 = torch.float64
# closed-form oracle: class 0 = {(1,0), (0,2)}, class 1 = {(-1,0), (0,-1)}
ORACLE_W = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[-1.0, 0.0], [0.0, -1.0]]], dtype=F64)
ORACLE_X = torch.tensor([[0.5, 0.5], [-1.0, 0.2]], dtype=F64)
ORACLE_Y = torch.tensor([0, 1])
ORACLE_CE = 0.3338158116
ORACLE_COMPACT = {"logit": 1.27, "distance": 0.27, "all": 2.74}


def fsc(k, d, **kw):
    return pml_anchors.get_loss("fsc", k, d, **kw)


def batch(b=24, d=8, k=6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=dtype), torch.arange(b) % k


def reference(x, y, w, beta, assign):
    """Straight from eq. 3, 7, 8 with explicit probabilities and distances (no logsumexp tricks)."""
    k, s, _ = w.shape
    p = torch.softmax((x @ w.reshape(k * s, -1).T), dim=1).view(len(x), k, s)
    ce = -torch.log(p[torch.arange(len(x)), y].sum(dim=1)).mean()
    sq = (x.unsqueeze(1) - w[y]).square().sum(dim=2)  # (B, s)
    if assign == "logit":
        chosen = sq.gather(1, torch.einsum("bd,bsd->bs", x, w[y]).argmax(1, keepdim=True)).squeeze(1)
    elif assign == "distance":
        chosen = sq.min(dim=1).values
    else:
        chosen = sq.sum(dim=1)
    return ce + beta * 0.5 * chosen.sum()


# -- oracle ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("assign", ["logit", "distance", "all"])
def test_oracle_section_7_6(assign):
    loss = fsc(2, 2, anchors=ORACLE_W, assign=assign)
    assert loss.sub_centers == 2 and loss.anchors.shape == (2, 2, 2)
    total = loss(ORACLE_X, ORACLE_Y)
    assert total.dtype == F64
    expected = ORACLE_CE + 1e-4 * ORACLE_COMPACT[assign]
    assert total.item() == pytest.approx(expected, abs=1e-10)
    if assign == "logit":
        assert total.item() == pytest.approx(0.3339428116, abs=1e-10)
    parts = loss.compute_loss(ORACLE_X, ORACLE_Y, None, ORACLE_X, ORACLE_Y)
    assert set(parts) == {"loss", "compactness"}
    assert parts["loss"]["reduction_type"] == "element" and parts["compactness"]["reduction_type"] == "already_reduced"
    assert parts["loss"]["losses"].mean().item() == pytest.approx(ORACLE_CE, abs=1e-10)
    assert parts["compactness"]["losses"].item() == pytest.approx(1e-4 * ORACLE_COMPACT[assign], abs=1e-14)
    assert total.item() == pytest.approx(reference(ORACLE_X, ORACLE_Y, ORACLE_W, 1e-4, assign).item(), abs=1e-12)


def test_beta_zero_is_the_summed_subclass_cross_entropy_and_s1_is_softmax():
    assert fsc(2, 2, anchors=ORACLE_W, beta=0.0)(ORACLE_X, ORACLE_Y).item() == pytest.approx(ORACLE_CE, abs=1e-10)
    x, y = batch(32, 8, 5, dtype=F64)
    w = torch.randn(5, 1, 8, dtype=F64)
    ours = fsc(5, 8, anchors=w, beta=0.0)(x, y)
    assert torch.allclose(ours, F.cross_entropy(x @ w.squeeze(1).T, y), atol=1e-12)


def test_matches_reference_on_random_batches_and_is_stable_for_large_logits():
    x, y = batch(40, 6, 7, seed=3, dtype=F64)
    w = gaussian_subcenters(7, 6, seed=1, dtype=F64, sub_centers=3, variance=0.05)
    for assign in ("logit", "distance", "all"):
        ours = fsc(7, 6, anchors=w, beta=0.3, assign=assign)(x, y)
        assert ours.item() == pytest.approx(reference(x, y, w, 0.3, assign).item(), abs=1e-10)
    big = fsc(7, 6, anchors=w * 1e4, beta=0.0)(x * 100, y)  # logits ~1e6: naive softmax overflows
    assert torch.isfinite(big)


def test_gradient_matches_closed_form():
    """dCE/dx = sum_{j,m} p~_jm w_jm - sum_k q_k w_{y,k} (q = own-class sub-softmax); dL_sc-c/dx = x - w*."""
    x = ORACLE_X.clone().requires_grad_(True)
    fsc(2, 2, anchors=ORACLE_W, beta=0.5)(x, ORACLE_Y).backward()
    w = ORACLE_W.reshape(4, 2)
    z = ORACLE_X @ w.T
    p = torch.softmax(z, dim=1)
    own = z.view(2, 2, 2)[torch.arange(2), ORACLE_Y]
    q = torch.softmax(own, dim=1)
    grad_ce = (p @ w - torch.einsum("bs,bsd->bd", q, ORACLE_W[ORACLE_Y])) / 2
    k_star = own.argmax(dim=1)
    grad_sc = 0.5 * (ORACLE_X - ORACLE_W[ORACLE_Y, k_star])
    assert torch.allclose(x.grad, grad_ce + grad_sc, atol=1e-12)


@pytest.mark.parametrize("assign", ["logit", "distance", "all"])
def test_gradcheck_embeddings_and_learnable_subcenters(assign):
    x, y = batch(6, 4, 3, seed=1, dtype=F64)
    loss = fsc(3, 4, learnable=True, sub_centers=2, variance=0.1, beta=0.7, assign=assign).double()
    w = loss.anchors.detach().clone()

    def fn(emb, anc):
        return torch.func.functional_call(loss, {"anchors": anc}, (emb, y))

    assert torch.autograd.gradcheck(fn, (x.requires_grad_(True), w.requires_grad_(True)))


# -- conformance, construction, errors --------------------------------------------------------
def test_check_method():
    report = check_method("fsc")
    assert report["hooks"] == "TrainerHooks" and math.isfinite(report["loss"])


def test_method_spec_and_defaults():
    spec = pml_anchors.get_method("fsc")
    assert spec.plugin == "pml-anchors-fsc" and spec.initializer == "gaussian_subcenters"
    assert "2203.12928" in spec.paper and spec.description
    loss = fsc(10, 16)
    assert isinstance(loss, FixedSubCenterLoss) and loss.target_min_angle() is None
    assert (loss.sub_centers, loss.variance, loss.beta, loss.assign) == (4, 1e-3, 1e-4, "logit")
    assert loss.anchors.shape == (10, 4, 16) and list(loss.parameters()) == []
    assert "anchors" in dict(loss.named_buffers())
    assert torch.equal(loss.anchors, gaussian_subcenters(10, 16, seed=0, sub_centers=4, variance=1e-3))
    assert type(pml_anchors.get_trainer_hooks("fsc")) is TrainerHooks


def test_sub_centers_and_variance_reach_the_initializer():
    loss = fsc(5, 8, sub_centers=3, variance=0.0, seed=2)
    assert loss.anchors.shape == (5, 3, 8)
    assert torch.equal(loss.anchors[:, 0], loss.anchors[:, 2])  # variance 0: every sub-centre is mu_i
    wide = fsc(5, 8, sub_centers=3, variance=0.5, seed=2)
    assert torch.equal(wide.anchors, gaussian_subcenters(5, 8, seed=2, sub_centers=3, variance=0.5))
    # a custom initializer without those options is called without them
    calls = {}

    def init(k, d, *, seed=None):
        calls["seed"] = seed
        return torch.ones(k, 4, d)

    assert torch.equal(fsc(2, 3, anchors=init, seed=9).anchors, torch.ones(2, 4, 3)) and calls == {"seed": 9}


def test_anchors_shape_errors():
    with pytest.raises(ValueError, match=r"needs anchors of shape \(2, 4, 2\), got \(2, 2\)"):
        fsc(2, 2, anchors=torch.randn(2, 2))
    with pytest.raises(ValueError, match=r"needs anchors of shape \(2, 2, 2\), got \(2, 3, 2\)"):
        fsc(2, 2, anchors=torch.randn(2, 3, 2), sub_centers=2)
    with pytest.raises(ValueError, match=r"needs anchors of shape \(2, 2, 2\), got \(3, 2, 2\)"):
        fsc(2, 2, anchors=torch.randn(3, 2, 2))
    with pytest.raises(ValueError, match=r"needs anchors of shape \(2, 2, 3\), got \(2, 2, 2\)"):
        fsc(2, 3, anchors=ORACLE_W)
    with pytest.raises(ValueError, match=r"needs anchors of shape \(3, 4, 4\), got \(3, 4\)"):
        fsc(3, 4, anchors="one_hot")  # (K, d) geometries do not fit
    with pytest.raises(ValueError, match="have shape"):
        fsc(3, 4, sub_centers=2).load_state_dict(fsc(3, 4).state_dict())


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"sub_centers": 0}, ValueError, "sub_centers must be a positive int, got 0"),
        ({"sub_centers": "4"}, TypeError, "sub_centers must be a positive int, got str '4'"),
        ({"sub_centers": True}, TypeError, "sub_centers must be a positive int, got bool True"),
        ({"variance": -1e-3}, ValueError, r"variance \(sigma\^2 of eq. 5, a variance, not a std\) must be a finite"),
        ({"variance": float("inf")}, ValueError, "variance"),
        ({"beta": -1.0}, ValueError, "beta must be a finite number >= 0, got -1.0"),
        ({"beta": float("nan")}, ValueError, "beta must be"),
        ({"assign": "max"}, ValueError, "assign must be one of 'logit', 'distance', 'all'"),
        ({"anchor_kwargs": {"variance": 0.1}}, ValueError, "pass variance as FixedSubCenterLoss options"),
    ],
)
def test_bad_hyper_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        fsc(3, 4, **kwargs)


def test_miner_weights_scale_both_terms():
    x, y = batch(6, 4, 3, seed=5, dtype=F64)
    loss = fsc(3, 4, beta=0.2, seed=1)
    w = loss.cast_anchors(x)
    weights = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 1.0], dtype=F64)
    parts = loss.anchor_losses(x, y, w, weights)
    keep = weights > 0
    full = loss.anchor_losses(x, y, w, torch.ones(6, dtype=F64))
    assert torch.allclose(parts["loss"]["losses"], full["loss"]["losses"] * weights)
    sub = loss.anchor_losses(x[keep], y[keep], w, weights[keep])
    assert torch.allclose(parts["compactness"]["losses"], sub["compactness"]["losses"])
    # through PML's indices_tuple: samples absent from it get weight 0
    tup = (torch.tensor([0, 2]), torch.tensor([3, 5]), torch.tensor([1, 1]))
    assert torch.isfinite(loss(x, y, tup))


# -- prediction ------------------------------------------------------------------------------------
def test_predict_by_summed_subclass_probability():
    # class 0 has the single largest sub-logit (2.0), class 1 the larger summed probability (2 * e^1.8)
    w = torch.tensor([[[2.0, 0.0], [-5.0, 0.0]], [[1.8, 0.0], [1.8, 0.0]]])
    loss = fsc(2, 2, anchors=w)
    x = torch.tensor([[1.0, 0.0]])
    assert loss.sub_center_logits(x).amax(dim=2).argmax(dim=1).item() == 0
    assert loss.predict(x).tolist() == [1]
    x, _ = batch(30, 8, 6, seed=6)
    loss = fsc(6, 8, variance=0.05)
    probs = torch.softmax(loss.sub_center_logits(x).reshape(30, -1), dim=1).view(30, 6, 4).sum(dim=2)
    assert torch.allclose(torch.softmax(loss.get_logits(x), dim=1), probs, atol=1e-6)
    assert torch.equal(loss.predict(x), probs.argmax(dim=1))
    assert loss.get_logits(x).shape == (30, 6)
    with pytest.raises(ValueError, match="shape"):
        loss.predict(torch.randn(2, 5))


# -- dtypes and checkpoints ---------------------------------------------------------------------------
def test_dtypes_and_bf16_autocast():
    x, y = batch(64, 16, 6, seed=2)
    loss = fsc(6, 16, variance=8e-3)
    check_dtypes(loss, x, y)  # float32 within 1e-6 of float64, bf16 within 2e-2; the anchors stay float32
    assert loss.anchors.dtype == torch.float32


def test_state_dict_round_trip_restores_the_random_subcenters():
    src = fsc(5, 8, seed=11)
    dst = fsc(5, 8, seed=12)
    assert not torch.equal(src.anchors, dst.anchors)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(dst.anchors, src.anchors)
    x, y = batch(10, 8, 5)
    assert torch.equal(dst(x, y), src(x, y))
    assert torch.equal(fsc(5, 8, seed=11).anchors, src.anchors)  # deterministic under a seed


def test_state_dict_shape_mismatch_names_sub_centers():
    with pytest.raises(ValueError, match=r"sub_centers=3\) has anchors of shape \(5, 3, 8\).*sub_centers"):
        fsc(5, 8, sub_centers=3).load_state_dict(fsc(5, 8, sub_centers=4).state_dict())


# -- hooks -----------------------------------------------------------------------------------------
class _Trainer:
    def __init__(self, loss, epoch):
        self.loss_funcs = {"metric_loss": loss}
        self.epoch = epoch


def test_hooks_log_geometry_and_intra_class_cosine():
    w = gaussian_subcenters(4, 6, seed=0, sub_centers=3, variance=0.05)
    unit = F.normalize(w, dim=2)
    gram = unit @ unit.transpose(1, 2)
    brute = ((gram.sum(dim=(1, 2)) - 3) / 6).mean().item()
    assert intra_class_cosine(w) == pytest.approx(brute, abs=1e-6)
    assert math.isnan(intra_class_cosine(w[:, :1]))
    hooks = pml_anchors.get_trainer_hooks("fsc")
    hooks.end_of_epoch_hook(_Trainer(fsc(4, 6, anchors=w), 1))
    (record,) = hooks.history
    assert record["epoch"] == 1 and record["intra_class_cos"] == pytest.approx(brute, abs=1e-6)
    assert 0 < record["min_anchor_angle_deg"] < 90 and record["mean_anchor_norm"] > 0
