"""Tests of the proxy_anchor plugin: PML equality, paper oracles (eq. 4 and 6), dtypes, PML compatibility, hooks."""

import logging
import math
import subprocess
import sys

import pytest
import torch
from pml_anchors_proxy_anchor.hooks import ProxyAnchorHooks
from pml_anchors_proxy_anchor.proxy_anchor_loss import ProxyAnchorLoss, proxy_anchor_from_cosine
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners, trainers
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.reducers import DoNothingReducer, SumReducer
from pytorch_metric_learning.regularizers import LpRegularizer
from pytorch_metric_learning.utils import common_functions as c_f

import pml_anchors
from pml_anchors.plugin.trainer_hooks import chain_hooks
from pml_anchors.testing import check_method

F64 = torch.float64

# Proxy Anchor eq. 4 by hand: cosine matrix S, labels y, C = 3 (proxy 2 has no positive).
S = [[0.5, 0.1, -0.2], [0.3, 0.0, 0.2], [-0.1, 0.4, 0.1]]
Y = [0, 0, 1]
DL_DS = [
    [-0.12919483, 0.11863769, 0.06583600],
    [-0.15779892, 0.10734782, 0.09821577],
    [0.15834027, -0.20065617, 0.08886930],
]


def make_loss(num_classes, embedding_size, **kwargs):
    return pml_anchors.get_loss("proxy_anchor", num_classes, embedding_size, **kwargs)


def pml_twin(loss, **kwargs):
    """PML's ProxyAnchorLoss with the same hyper-parameters and a float64 copy of our proxies."""
    ref = pml_losses.ProxyAnchorLoss(
        loss.num_classes, loss.embedding_size, margin=loss.margin, alpha=loss.alpha, **kwargs
    )
    ref.proxies = torch.nn.Parameter(loss.anchors.detach().clone())
    return ref


def batch(num_classes, batch_size, dim, seed, dtype=F64, labels=None):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch_size, dim, generator=g, dtype=dtype).requires_grad_()
    if labels is None:
        labels = torch.randint(0, num_classes, (batch_size,), generator=g)
    return emb, torch.as_tensor(labels)


# -- registration --------------------------------------------------------------------------------------------


def test_conformance():
    report = check_method("proxy_anchor")
    assert report["hooks"] == "ProxyAnchorHooks"
    assert math.isfinite(report["loss"]) and report["loss"] > 0


def test_spec_carries_the_recipe_and_lr_multiplier():
    spec = pml_anchors.get_method("proxy_anchor")
    assert spec.plugin == "pml-anchors-proxy-anchor"
    assert spec.lr_multipliers == {"anchors": 100.0}
    loss = make_loss(5, 4)
    groups = pml_anchors.param_groups(loss, 1e-4, spec)
    assert len(groups) == 1 and groups[0]["params"][0] is loss.anchors
    assert groups[0]["lr"] == pytest.approx(1e-2)
    assert isinstance(pml_anchors.get_trainer_hooks("proxy_anchor"), ProxyAnchorHooks)


def test_listing_the_plugin_imports_no_torch_and_the_package_exports_the_loss():
    code = "import sys, pml_anchors_proxy_anchor; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    import pml_anchors_proxy_anchor

    assert pml_anchors_proxy_anchor.ProxyAnchorLoss is ProxyAnchorLoss  # the one-line switch from PML
    assert pml_anchors_proxy_anchor.ProxyAnchorHooks is ProxyAnchorHooks
    with pytest.raises(AttributeError):
        pml_anchors_proxy_anchor.NoSuchThing  # noqa: B018


# -- equality with PML's ProxyAnchorLoss -----------------------------------------------------------------------


def _all_positive_labels(n):
    return [1] * n


CASES = {
    "random": dict(num_classes=10, batch_size=32, dim=8, seed=0),
    "classes_without_positives": dict(num_classes=50, batch_size=20, dim=16, seed=1),
    "two_classes": dict(num_classes=2, batch_size=9, dim=5, seed=2),
    "one_class_fills_the_batch": dict(num_classes=3, batch_size=6, dim=4, seed=3, labels=_all_positive_labels(6)),
    "margin_0_alpha_4": dict(num_classes=7, batch_size=16, dim=6, seed=4, margin=0.0, alpha=4.0),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("miner", [None, "multi_similarity", "triplet"])
def test_equals_pml_values_and_gradients(case, miner):
    opts = dict(CASES[case])
    hyper = {k: opts.pop(k) for k in ("margin", "alpha") if k in opts}
    loss = make_loss(opts["num_classes"], opts["dim"], seed=opts["seed"], **hyper).double()
    ref = pml_twin(loss)
    emb, labels = batch(opts["num_classes"], opts["batch_size"], opts["dim"], opts["seed"], labels=opts.get("labels"))
    indices_tuple = None
    if miner == "multi_similarity":
        indices_tuple = miners.MultiSimilarityMiner(epsilon=0.1)(emb.detach(), labels)
    elif miner == "triplet":
        indices_tuple = miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")(emb.detach(), labels)
    ours = loss(emb, labels, indices_tuple)
    g_emb, g_proxy = torch.autograd.grad(ours, [emb, loss.anchors])
    theirs = ref(emb, labels, indices_tuple)
    r_emb, r_proxy = torch.autograd.grad(theirs, [emb, ref.proxies])
    assert ours.dtype == F64
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-9)
    torch.testing.assert_close(g_emb, r_emb, rtol=0, atol=1e-9)
    torch.testing.assert_close(g_proxy, r_proxy, rtol=0, atol=1e-9)
    assert g_proxy.abs().sum() > 0


def test_miner_weights_change_the_loss_like_pml():
    loss = make_loss(6, 8).double()
    emb, labels = batch(6, 24, 8, seed=5)
    pairs = miners.MultiSimilarityMiner(epsilon=0.1)(emb.detach(), labels)
    assert not torch.allclose(loss(emb, labels, pairs), loss(emb, labels))


def test_per_proxy_terms_equal_pml_sub_losses():
    loss = make_loss(12, 6, reducer=DoNothingReducer()).double()
    ref = pml_twin(loss, reducer=DoNothingReducer())
    emb, labels = batch(12, 10, 6, seed=6)
    ours, theirs = loss(emb, labels), ref(emb, labels)
    assert set(ours) == set(theirs) == {"pos_loss", "neg_loss"}
    for name in ours:
        torch.testing.assert_close(ours[name]["losses"], theirs[name]["losses"], rtol=0, atol=1e-12)
        assert int(ours[name]["divisor"]) == int(theirs[name]["divisor"])
    assert int(ours["pos_loss"]["divisor"]) == len(labels.unique())
    absent = torch.ones(12, dtype=torch.bool)
    absent[labels] = False
    assert torch.all(ours["pos_loss"]["losses"][absent] == 0)  # log(1 + empty sum) = 0


def test_custom_reducer_and_weight_regularizer_match_pml():
    kwargs = lambda: dict(reducer=SumReducer(), weight_regularizer=LpRegularizer(), weight_reg_weight=0.3)  # noqa: E731
    loss = make_loss(8, 5, **kwargs()).double()
    ref = pml_twin(loss, **kwargs())
    emb, labels = batch(8, 12, 5, seed=7)
    torch.testing.assert_close(loss(emb, labels), ref(emb, labels), rtol=0, atol=1e-9)


def test_get_logits_and_predict_match_pml():
    loss = make_loss(9, 7).double()
    ref = pml_twin(loss)
    emb, _ = batch(9, 11, 7, seed=8)
    torch.testing.assert_close(loss.get_logits(emb), ref.get_logits(emb), rtol=0, atol=1e-12)
    assert torch.equal(loss.predict(emb), ref.get_logits(emb).argmax(1))


# -- paper oracles (Kim et al., CVPR 2020, eq. 4) ------------------------------------------------------------------------


def test_eq4_oracle_from_cosine_matrix():
    cos, labels = torch.tensor(S, dtype=F64), torch.tensor(Y)
    pos, neg = proxy_anchor_from_cosine(cos, labels, alpha=32, margin=0.1)
    assert float(pos) == pytest.approx(0.0008653305, abs=1e-8)
    assert float(neg) == pytest.approx(5.5915722605, abs=1e-8)
    assert float(pos + neg) == pytest.approx(5.5924375910, abs=1e-8)


def test_eq6_oracle_gradient_wrt_cosine_matrix():
    cos = torch.tensor(S, dtype=F64, requires_grad=True)
    pos, neg = proxy_anchor_from_cosine(cos, torch.tensor(Y), alpha=1.0, margin=0.0)
    assert float(pos) == pytest.approx(0.6831509039, abs=1e-8)
    assert float(neg) == pytest.approx(1.0664805503, abs=1e-8)
    assert float(pos + neg) == pytest.approx(1.7496314542, abs=1e-8)
    (grad,) = torch.autograd.grad(pos + neg, cos)
    torch.testing.assert_close(grad, torch.tensor(DL_DS, dtype=F64), rtol=0, atol=1e-8)


def eq6(cos, labels, alpha, margin):
    """The paper's eq. (6), written out per (x, p) from its definition."""
    num_classes = cos.shape[1]
    positive = torch.nn.functional.one_hot(labels, num_classes).bool()
    h_pos = torch.exp(-alpha * (cos - margin)) * positive
    h_neg = torch.exp(alpha * (cos + margin)) * ~positive
    n_pos = positive.any(0).sum()
    grad = torch.zeros_like(cos)
    for p in range(num_classes):
        for x in range(cos.shape[0]):
            if positive[x, p]:
                grad[x, p] = -alpha * h_pos[x, p] / (1 + h_pos[:, p].sum()) / n_pos
            else:
                grad[x, p] = alpha * h_neg[x, p] / (1 + h_neg[:, p].sum()) / num_classes
    return grad


@pytest.mark.parametrize("alpha, margin", [(32.0, 0.1), (1.0, 0.0), (8.0, 0.3)])
def test_gradient_is_eq6_on_random_cosines(alpha, margin):
    g = torch.Generator().manual_seed(9)
    cos = (torch.rand(7, 5, generator=g, dtype=F64) * 2 - 1).requires_grad_()
    labels = torch.tensor([0, 0, 1, 3, 3, 3, 1])  # proxies 2 and 4 have no positive
    pos, neg = proxy_anchor_from_cosine(cos, labels, alpha, margin)
    (grad,) = torch.autograd.grad(pos + neg, cos)
    torch.testing.assert_close(grad, eq6(cos.detach(), labels, alpha, margin), rtol=1e-10, atol=1e-12)


def test_loss_on_embeddings_whose_cosine_matrix_is_the_oracle():
    """Lift S to unit embeddings in R^4 against one-hot proxies, so that s(x_i, p_c) = S[i, c] exactly."""
    cos = torch.tensor(S, dtype=F64)
    emb = torch.cat([cos, (1 - cos.pow(2).sum(1, keepdim=True)).sqrt()], dim=1)
    loss = make_loss(3, 4, anchors=torch.eye(3, 4, dtype=F64))
    torch.testing.assert_close(loss.get_logits(emb), cos, rtol=0, atol=1e-15)
    assert float(loss(emb, torch.tensor(Y))) == pytest.approx(5.5924375910, abs=1e-8)


@pytest.mark.parametrize("use_miner", [False, True])
def test_gradcheck_embeddings_and_proxies(use_miner):
    loss = make_loss(4, 3).double()
    emb, labels = batch(4, 7, 3, seed=10, labels=[0, 0, 1, 1, 1, 2, 0])
    # Pairs (a1, p, a2, n): sample counts 3, 1, 2, 1, 0, 0, 1 -> miner weights 1, 1/3, 2/3, 1/3, 0, 0, 1/3.
    pairs = tuple(torch.tensor(t) for t in ([0, 0, 2], [1, 6, 3], [0], [2]))
    indices_tuple = pairs if use_miner else None
    proxies = loss.anchors.detach().clone().requires_grad_()

    def value(e, p):
        return torch.func.functional_call(loss, {"anchors": p}, (e, labels, indices_tuple))

    assert torch.autograd.gradcheck(value, (emb, proxies))


def test_gradcheck_with_miner_weights_and_a_fully_positive_column():
    cos = (torch.rand(5, 3, generator=torch.Generator().manual_seed(11), dtype=F64) * 2 - 1).requires_grad_()
    labels = torch.tensor([1, 1, 1, 1, 1])  # proxy 1 has no negatives: its negative term is log 1 = 0
    weights = torch.tensor([1.0, 0.5, 0.0, 1.0, 0.25], dtype=F64)
    assert torch.autograd.gradcheck(lambda c: sum(proxy_anchor_from_cosine(c, labels, 16.0, 0.1, weights)), (cos,))


# -- PML compatibility: .proxies, state dicts ------------------------------------------------------------------


def test_proxies_is_the_anchor_parameter_and_assignable_like_pml():
    loss = make_loss(5, 4)
    assert loss.proxies is loss.anchors and isinstance(loss.proxies, torch.nn.Parameter)
    assert loss.proxies.shape == (5, 4)  # PML's layout: num_classes x embedding_size
    pml = pml_losses.ProxyAnchorLoss(5, 4)
    loss.proxies = pml.proxies  # what PML's own tests do
    assert loss.anchors is pml.proxies and loss.proxies is pml.proxies
    assert [name for name, _ in loss.named_parameters()] == ["anchors"]
    assert "proxies" not in loss.state_dict()
    emb, labels = batch(5, 8, 4, seed=12, dtype=torch.float32)
    torch.testing.assert_close(loss(emb, labels), pml(emb, labels))
    with pytest.raises(ValueError, match=r"needs anchors of shape \(5, 4\), got \(5, 3\)"):
        loss.proxies = torch.nn.Parameter(torch.randn(5, 3))
    with pytest.raises(TypeError, match="Parameter"):
        loss.proxies = torch.randn(5, 4)  # like PML: a registered parameter takes a Parameter


def test_loads_a_pml_state_dict():
    pml = pml_losses.ProxyAnchorLoss(6, 3)
    saved = pml.state_dict()
    assert list(saved) == ["proxies"]
    loss = make_loss(6, 3, seed=5)
    result = loss.load_state_dict(saved)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(loss.anchors, pml.proxies.detach())
    assert list(saved) == ["proxies"]  # the caller's dict is not modified
    with pytest.raises(
        ValueError, match=r"PML weights 'proxies' of shape \(6, 3\) do not fit the anchors of shape \(7, 3\)"
    ):
        make_loss(7, 3).load_state_dict(saved)
    # Inside a wrapper module the prefixed key is mapped too.
    wrapper = torch.nn.ModuleDict({"metric_loss": make_loss(6, 3, seed=9)})
    wrapper.load_state_dict({"metric_loss.proxies": pml.proxies.detach()})
    assert torch.equal(wrapper["metric_loss"].anchors, pml.proxies.detach())


def test_state_dict_round_trip():
    loss = make_loss(6, 5, seed=1)
    other = make_loss(6, 5, seed=2)
    assert not torch.equal(loss.anchors, other.anchors)
    other.load_state_dict(loss.state_dict())
    emb, labels = batch(6, 10, 5, seed=13, dtype=torch.float32)
    assert torch.equal(other.anchors, loss.anchors)
    assert torch.equal(other(emb, labels), loss(emb, labels))


def test_proxies_are_learnable_parameters_with_gradients_and_kaiming_init():
    loss = make_loss(200, 64, seed=3)
    assert [name for name, _ in loss.named_parameters()] == ["anchors"]
    assert loss.anchors.requires_grad
    std = float(loss.anchors.std())
    assert std == pytest.approx(math.sqrt(2 / 200), rel=0.05)  # N(0, 2/K), PML's kaiming_normal_(fan_out)
    assert torch.equal(loss.anchors, make_loss(200, 64, seed=3).anchors)
    emb, labels = batch(200, 32, 64, seed=14, dtype=torch.float32)
    loss(emb, labels).backward()
    assert loss.anchors.grad is not None and loss.anchors.grad.abs().sum() > 0
    assert torch.isfinite(loss.anchors.grad).all()


# -- dtypes and numerical stability ----------------------------------------------------------------------------


def test_float64_inputs_leave_the_stored_proxies_float32():
    loss = make_loss(6, 4)
    emb, labels = batch(6, 12, 4, seed=15)
    value = loss(emb, labels)
    assert value.dtype == F64 and loss.anchors.dtype == torch.float32
    reference = make_loss(6, 4).double()(emb, labels)
    torch.testing.assert_close(value, reference, rtol=1e-12, atol=0)


def test_cpu_bf16_autocast_is_finite_close_and_keeps_proxies_fp32():
    torch.manual_seed(0)
    embedder = torch.nn.Linear(16, 8)
    loss = make_loss(10, 8)
    pml = pml_losses.ProxyAnchorLoss(10, 8)
    pml.proxies = torch.nn.Parameter(loss.anchors.detach().clone())
    x, labels = torch.randn(64, 16), torch.arange(64) % 10
    exact = loss(embedder(x), labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = embedder(x)
        assert emb.dtype == torch.bfloat16
        value = loss(emb, labels)
        pml(emb, labels)
    value.backward()
    assert torch.isfinite(value) and value.dtype == torch.float32  # 16-bit embeddings: a float32 loss, every method
    assert float(value) == pytest.approx(float(exact), rel=2e-2)
    assert loss.anchors.dtype == torch.float32 and torch.isfinite(loss.anchors.grad).all()
    assert torch.isfinite(embedder.weight.grad).all()
    assert pml.proxies.dtype == torch.bfloat16  # contrast: PML's cast_types rewrites the stored proxies


@pytest.mark.parametrize("alpha", [32.0, 64.0])
def test_fp16_inputs_on_cpu_do_not_overflow(alpha):
    loss = make_loss(10, 8, alpha=alpha)
    emb, labels = batch(10, 48, 8, seed=16, dtype=torch.float32)
    with torch.no_grad():
        emb[labels == 3] = loss.anchors[3]  # exact hits: e^{alpha (1 + delta)} would overflow fp16 (max 65504)
    half = emb.detach().half().requires_grad_()
    value = loss(half, labels)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value) and torch.isfinite(half.grad).all()
    assert float(value) == pytest.approx(float(loss(emb, labels)), rel=1e-2)
    assert not torch.isfinite(torch.exp(torch.tensor(alpha * 1.1, dtype=torch.float16)))  # the naive form overflows


def test_stable_on_a_proxy_with_zero_norm_features_and_huge_alpha():
    loss = make_loss(5, 4, alpha=1e4)
    emb = torch.randn(10, 4, generator=torch.Generator().manual_seed(17))
    labels = torch.arange(10) % 5
    with torch.no_grad():
        emb[0] = loss.anchors[0]  # exactly on its proxy
        emb[1] = loss.anchors[0]  # exactly on a wrong proxy
        emb[2] = 0.0  # zero feature
    emb.requires_grad_()
    value = loss(emb, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(emb.grad).all() and torch.isfinite(loss.anchors.grad).all()


def test_fast_normalisation_equals_torch_normalize_including_zero_rows():
    from pml_anchors_proxy_anchor.proxy_anchor_loss import _l2_normalize

    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(19), dtype=F64)
    x[2] = 0.0
    x[4] *= 1e-14  # below eps: divided by eps, like F.normalize
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(6, 5, generator=torch.Generator().manual_seed(20), dtype=F64)
    out, ref = _l2_normalize(a), torch.nn.functional.normalize(b, dim=1)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(out, ref, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=0)
    bf16 = _l2_normalize(x.float().bfloat16().requires_grad_())
    assert bf16.dtype == torch.bfloat16


def test_empty_batch_gives_zero_with_a_graph():
    loss = make_loss(4, 3)
    emb = torch.zeros(0, 3, requires_grad=True)
    value = loss(emb, torch.zeros(0, dtype=torch.long))
    value.backward()
    assert float(value) == 0.0


# -- hyper-parameters and inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(alpha=0), ValueError, r"alpha \(eq. 4\) must be a finite number > 0, got 0"),
        (dict(alpha=-1.0), ValueError, r"alpha \(eq. 4\) must be a finite number > 0, got -1.0"),
        (dict(alpha=float("nan")), ValueError, r"alpha \(eq. 4\) must be a finite number > 0, got nan"),
        (dict(alpha=True), TypeError, r"alpha \(eq. 4\) must be a finite number > 0, got bool True"),
        (dict(margin=-0.1), ValueError, r"margin \(delta of eq. 4\) must be a finite number >= 0, got -0.1"),
        (dict(margin="0.1"), TypeError, r"margin \(delta of eq. 4\) must be a finite number >= 0, got str '0.1'"),
        (
            dict(distance=LpDistance()),
            ValueError,
            r"computes a cosine similarity \(eq. 4\).*distance must be CosineSimilarity\(\)",
        ),
    ],
)
def test_bad_hyper_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        ProxyAnchorLoss(5, 4, **kwargs)


def test_pml_style_constructor_and_zero_margin():
    loss = ProxyAnchorLoss(5, 4, 0.0, 16)  # positional like PML's (num_classes, embedding_size, margin, alpha)
    assert (loss.margin, loss.alpha) == (0.0, 16.0)
    assert loss.target_min_angle() is None


def test_bad_labels_are_rejected():
    loss = make_loss(4, 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        loss(torch.randn(2, 3), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="ref_emb is not supported"):
        loss(torch.randn(2, 3), torch.tensor([0, 1]), ref_emb=torch.randn(2, 3), ref_labels=torch.tensor([0, 1]))


# -- trainer hooks on a real PML MetricLossOnly trainer ---------------------------------------------------------


def make_trainer(hooks, *, num_classes=4, dim=6, iterations=2, lr=1e-3, spec=None, seed=0, record=None, clippers=None):
    """A tiny MetricLossOnly (no miner) with a BatchNorm trunk; ``record(trainer)`` runs after every step."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    n = 16 * num_classes
    labels = torch.arange(n) % num_classes
    data = 3 * torch.randn(num_classes, 12, generator=g)[labels] + 0.5 * torch.randn(n, 12, generator=g)
    trunk = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU())
    embedder = torch.nn.Linear(32, dim)
    loss = make_loss(num_classes, dim)
    optimizers = {
        "trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=lr),
        "embedder_optimizer": torch.optim.Adam(embedder.parameters(), lr=lr),
        "metric_loss_optimizer": torch.optim.Adam(pml_anchors.param_groups(loss, lr, spec)),
    }
    c_f.LOGGER.setLevel(logging.WARNING)
    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk, "embedder": embedder},
        optimizers=optimizers,
        batch_size=32,
        loss_funcs={"metric_loss": loss},
        dataset=torch.utils.data.TensorDataset(data, labels),
        iterations_per_epoch=iterations,
        dataloader_num_workers=0,
        data_device=torch.device("cpu"),  # the models stay on the CPU (PML's default: CUDA if present)
        gradient_clippers=clippers,
        end_of_iteration_hook=chain_hooks(hooks.end_of_iteration_hook, record),
        end_of_epoch_hook=hooks.end_of_epoch_hook,
    )
    return trainer


def snapshot(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before, module):
    return {name for name, p in module.named_parameters() if not torch.equal(before[name], p.detach())}


@pytest.mark.parametrize("warmup_epochs", [0, 1, 2])
def test_warmup_freezes_the_trunk_while_embedder_and_proxies_train(warmup_epochs):
    hooks = ProxyAnchorHooks(warmup_epochs=warmup_epochs, freeze_bn=False, clip_grad_value=None)
    seen = []

    def record(trainer):
        trunk = trainer.models["trunk"]
        seen.append(
            (
                trainer.epoch,
                all(p.requires_grad for p in trunk.parameters()),
                changed(start["trunk"], trunk),
                changed(start["embedder"], trainer.models["embedder"]),
                changed(start["loss"], trainer.loss_funcs["metric_loss"]),
            )
        )

    trainer = make_trainer(hooks, record=record)
    start = {
        "trunk": snapshot(trainer.models["trunk"]),
        "embedder": snapshot(trainer.models["embedder"]),
        "loss": snapshot(trainer.loss_funcs["metric_loss"]),
    }
    hooks.attach(trainer)
    assert hooks.warming_up == (warmup_epochs > 0)
    trainer.train(num_epochs=3)
    for epoch, trunk_trainable, trunk_changed, embedder_changed, loss_changed in seen:
        assert embedder_changed and loss_changed == {"anchors"}
        assert trunk_trainable == (epoch > warmup_epochs)
        assert bool(trunk_changed) == (epoch > warmup_epochs)
    assert all(p.requires_grad for p in trainer.models["trunk"].parameters()) and not hooks.warming_up


def test_warmup_never_unfreezes_what_the_user_froze_and_resume_skips_it():
    hooks = ProxyAnchorHooks(warmup_epochs=1)
    trainer = make_trainer(hooks)
    bias = trainer.models["trunk"][0].bias
    bias.requires_grad_(False)
    hooks.attach(trainer)
    trainer.train(num_epochs=2)
    assert not bias.requires_grad and trainer.models["trunk"][0].weight.requires_grad

    resumed = ProxyAnchorHooks(warmup_epochs=1)
    trainer = make_trainer(resumed)
    resumed.attach(trainer, start_epoch=3)  # warm-up already done: nothing frozen, BN affine included
    assert not resumed.warming_up and all(p.requires_grad for p in trainer.models["trunk"].parameters())


def test_freeze_bn_freezes_statistics_and_affine_until_warmup_ends():
    hooks = ProxyAnchorHooks(warmup_epochs=1, freeze_bn=True, clip_grad_value=None)
    modes = []
    trainer = make_trainer(
        hooks,
        record=lambda t: modes.append(
            (t.epoch, t.models["trunk"][1].training, t.models["trunk"][1].weight.requires_grad)
        ),
    )
    bn = trainer.models["trunk"][1]
    stats, affine = bn.running_mean.clone(), snapshot(bn)
    hooks.attach(trainer)
    assert trainer.freeze_trunk_batchnorm is True
    assert not bn.weight.requires_grad and not bn.bias.requires_grad
    trainer.train(num_epochs=1)
    assert changed(affine, bn) == set()
    trainer.train(start_epoch=2, num_epochs=2)
    assert modes == [(1, False, False), (1, False, False), (2, False, True), (2, False, True)]
    assert torch.equal(bn.running_mean, stats)  # eval mode all along: running statistics never updated
    assert changed(affine, bn) == {"weight", "bias"}  # official quirk: affine re-enabled after warm-up


def test_freeze_bn_without_warmup_keeps_affine_frozen_and_off_updates_statistics():
    hooks = ProxyAnchorHooks(warmup_epochs=0, freeze_bn=True, clip_grad_value=None)
    trainer = make_trainer(hooks)
    bn, linear = trainer.models["trunk"][1], trainer.models["trunk"][0]
    affine, weight = snapshot(bn), linear.weight.detach().clone()
    hooks.attach(trainer)
    trainer.train(num_epochs=2)
    assert changed(affine, bn) == set() and not bn.weight.requires_grad
    assert not torch.equal(linear.weight, weight)

    off = ProxyAnchorHooks(warmup_epochs=0, freeze_bn=False, clip_grad_value=None)
    trainer = make_trainer(off)
    bn = trainer.models["trunk"][1]
    stats = bn.running_mean.clone()
    off.attach(trainer)
    trainer.train(num_epochs=1)
    assert trainer.freeze_trunk_batchnorm is False and not torch.equal(bn.running_mean, stats)


@pytest.mark.parametrize("clip", [1e-4, None])
def test_gradient_clipping_by_value_is_installed_and_effective(clip):
    hooks = ProxyAnchorHooks(warmup_epochs=0, freeze_bn=False, clip_grad_value=clip)
    largest = []

    def record(trainer):  # after the step; gradients are zeroed only at the next iteration
        params = [
            *trainer.models["trunk"].parameters(),
            *trainer.models["embedder"].parameters(),
            *trainer.loss_funcs["metric_loss"].parameters(),
        ]
        largest.append(max(float(p.grad.abs().max()) for p in params))

    trainer = make_trainer(hooks, record=record)
    hooks.attach(trainer)
    if clip is None:
        assert not trainer.gradient_clippers
    else:
        assert set(trainer.gradient_clippers) == {
            "trunk_grad_clipper",
            "embedder_grad_clipper",
            "metric_loss_grad_clipper",
        }
    trainer.train(num_epochs=1)
    if clip is None:
        assert max(largest) > 1e-3
    else:
        assert max(largest) == pytest.approx(clip)  # every gradient inside [-clip, clip], and some were clipped


def test_gradient_clipping_keeps_a_user_clipper():
    mine = lambda: None  # noqa: E731
    hooks = ProxyAnchorHooks()
    trainer = make_trainer(hooks, clippers={"trunk_grad_clipper": mine})
    with pytest.warns(UserWarning, match="keeping your 'trunk_grad_clipper'"):
        hooks.attach(trainer)
    assert trainer.gradient_clippers["trunk_grad_clipper"] is mine
    assert "metric_loss_grad_clipper" in trainer.gradient_clippers


def test_geometry_is_logged_every_epoch():
    hooks = ProxyAnchorHooks()
    trainer = make_trainer(hooks, iterations=1)
    hooks.attach(trainer)
    trainer.train(num_epochs=2)
    assert [h["epoch"] for h in hooks.history] == [1, 2]
    assert all(0 < h["min_anchor_angle_deg"] <= 180 and h["mean_anchor_norm"] > 0 for h in hooks.history)


def pretrain_batchnorm(trainer):
    """Give the trunk's BatchNorm trained statistics, as a pretrained trunk has."""
    bn = trainer.models["trunk"][1]
    bn.running_mean.fill_(0.3)
    bn.running_var.fill_(2.0)


@pytest.mark.parametrize(
    "how, pretrained",
    [
        ("fresh", False),
        ("statistics", True),  # BatchNorm statistics differ from their initial 0 / 1
        ("trainer_says_no", False),  # trainer.pretrained_trunk (set by pml_anchors.app.session) beats the statistics
        ("trainer_says_yes", True),
        ("kwarg", True),  # pretrained_trunk=True beats a fresh trunk
    ],
)
def test_default_recipe_follows_whether_the_trunk_is_pretrained(how, pretrained):
    """Warm-up and frozen BatchNorm are the official recipe for a pretrained trunk only (by default)."""
    hooks = ProxyAnchorHooks(pretrained_trunk=True if how == "kwarg" else None, clip_grad_value=None)
    trainer = make_trainer(hooks)
    bn = trainer.models["trunk"][1]
    if how in ("statistics", "trainer_says_no"):
        pretrain_batchnorm(trainer)
    if how.startswith("trainer_says"):
        trainer.pretrained_trunk = how == "trainer_says_yes"
    hooks.attach(trainer)
    assert hooks.recipe == {"pretrained_trunk": pretrained, "warmup_epochs": int(pretrained), "freeze_bn": pretrained}
    assert hooks.warming_up == pretrained
    assert getattr(trainer, "freeze_trunk_batchnorm", False) == pretrained
    assert bn.weight.requires_grad == (not pretrained)
    stats = bn.running_mean.clone()
    trainer.train(num_epochs=1)
    assert torch.equal(bn.running_mean, stats) == pretrained  # frozen statistics only for a pretrained trunk


def test_explicit_recipe_values_win_and_a_trunk_without_batchnorm_gets_the_official_recipe():
    hooks = ProxyAnchorHooks(warmup_epochs=2, freeze_bn=False, pretrained_trunk=False)
    trainer = make_trainer(hooks)
    hooks.attach(trainer)
    assert hooks.recipe == {"pretrained_trunk": False, "warmup_epochs": 2, "freeze_bn": False}

    hooks = ProxyAnchorHooks(clip_grad_value=None)
    trainer = make_trainer(hooks)
    trainer.models["trunk"] = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU())
    hooks.attach(trainer)  # no statistics to tell from: official defaults
    assert hooks.recipe == {"pretrained_trunk": True, "warmup_epochs": 1, "freeze_bn": True}


def test_trunk_looks_pretrained():
    from pml_anchors_proxy_anchor.hooks import trunk_looks_pretrained

    fresh = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    assert trunk_looks_pretrained(fresh) is False
    fresh.train()(torch.randn(8, 1, 5, 5))  # one training forward updates the running statistics
    assert trunk_looks_pretrained(fresh) is True
    assert trunk_looks_pretrained(torch.nn.Sequential(torch.nn.Linear(2, 2))) is None
    assert trunk_looks_pretrained(torch.nn.BatchNorm1d(3, track_running_stats=False)) is None


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(freeze_bn=1), TypeError),
        (dict(pretrained_trunk="yes"), TypeError),
        (dict(warmup_epochs=-1), ValueError),
        (dict(warmup_epochs=1.5), TypeError),
        (dict(clip_grad_value=0), ValueError),
        (dict(clip_grad_value=float("inf")), ValueError),
        (dict(lr=1.0), TypeError),
    ],
)
def test_bad_hook_options(kwargs, error):
    with pytest.raises(error):
        ProxyAnchorHooks(**kwargs)


def test_short_training_run_lowers_the_loss_and_moves_the_proxies():
    spec = pml_anchors.get_method("proxy_anchor")
    hooks = pml_anchors.get_trainer_hooks("proxy_anchor")
    losses = []
    trainer = make_trainer(
        hooks,
        num_classes=6,
        dim=8,
        iterations=3,
        lr=1e-3,
        spec=spec,
        record=lambda t: losses.append(float(t.losses["total_loss"])),
    )
    loss = trainer.loss_funcs["metric_loss"]
    assert [g["lr"] for g in trainer.optimizers["metric_loss_optimizer"].param_groups] == [pytest.approx(0.1)]
    proxies = loss.proxies.detach().clone()
    hooks.attach(trainer)
    trainer.train(num_epochs=5)
    assert len(losses) == 15 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
    assert (loss.proxies.detach() - proxies).norm() > 0.1 * proxies.norm()
    assert loss.anchors.dtype == torch.float32


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_equals_pml_and_fp16_autocast_is_finite():
    loss = make_loss(300, 32).double().cuda()
    ref = pml_twin(loss).cuda()
    emb, labels = batch(300, 64, 32, seed=18)
    emb, labels = emb.detach().cuda().requires_grad_(), labels.cuda()
    ours, theirs = loss(emb, labels), ref(emb, labels)
    (g_ours,), (g_theirs,) = torch.autograd.grad(ours, [emb]), torch.autograd.grad(theirs, [emb])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-9)
    torch.testing.assert_close(g_ours, g_theirs, rtol=0, atol=1e-9)
    fp32 = make_loss(300, 32).cuda()
    x = emb.detach().float().requires_grad_()
    with torch.autocast("cuda", dtype=torch.float16):
        value = fp32(x.half(), labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all() and fp32.anchors.dtype == torch.float32
    assert float(value) == pytest.approx(float(fp32(x.detach(), labels)), rel=2e-2)


@pytest.mark.parametrize("with_weights", [False, True])
def test_harness_applies_warmup_and_frozen_bn_only_to_a_pretrained_trunk(with_weights, tmp_path):
    from pml_anchors.app.config import TrainConfig
    from pml_anchors.app.session import build

    config = dict(method="proxy_anchor", epochs=1, limit=64, test_limit=64, batch_size=32, device="cpu")
    backbone_kwargs = {"width": 8}
    if with_weights:
        scratch = build(TrainConfig(**config, backbone_kwargs=backbone_kwargs), with_trainer=False)
        torch.save(scratch.trunk.state_dict(), tmp_path / "trunk.pt")  # fresh statistics: only the flag tells
        backbone_kwargs["weights_path"] = str(tmp_path / "trunk.pt")
    session = build(TrainConfig(**config, backbone_kwargs=backbone_kwargs))
    assert session.hooks.recipe == {
        "pretrained_trunk": with_weights,
        "warmup_epochs": int(with_weights),
        "freeze_bn": with_weights,
    }
    assert getattr(session.trainer, "freeze_trunk_batchnorm", False) == with_weights
