"""Tests of the ``cam`` method (Class Anchor Margin loss, Ghita & Ionescu) through the real entry point."""

import logging
import math
import types
import warnings

import pytest
import torch
from pytorch_metric_learning import trainers
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
from pytorch_metric_learning.reducers import DoNothingReducer
from pytorch_metric_learning.utils import common_functions as c_f

import pml_anchors
from pml_anchors.testing import check_import_is_light, check_method

# hand-derived oracle (Ghita & Ionescu, eq. 1-4)
ORACLE_ANCHORS = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
ORACLE_EMB = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
ORACLE_LABELS = torch.tensor([0, 1])


def make(num_classes=3, embedding_size=2, **kwargs):
    return pml_anchors.get_loss("cam", num_classes, embedding_size, **kwargs)


def oracle_loss(**kwargs):
    return make(anchors=ORACLE_ANCHORS, **kwargs)


def components(loss, emb, labels):
    """The sub-losses as PML hands them to the reducer."""
    loss.reducer = DoNothingReducer()
    return {name: entry["losses"] for name, entry in loss(emb, labels).items()}


def reference_cam(emb, labels, anchors, margin=2.0, min_norm=1.0, classes=None):
    """Eq. 1-4 written out with Python loops over ordered pairs (the paper's 1/2 sum_{y != y'})."""
    classes = range(anchors.shape[0]) if classes is None else classes
    attract = sum(0.5 * float((emb[i] - anchors[labels[i]]).pow(2).sum()) for i in range(len(labels))) / len(labels)
    repel = 0.5 * sum(
        max(0.0, 2 * margin - float((anchors[a] - anchors[b]).norm())) ** 2 for a in classes for b in classes if a != b
    )
    norm = 0.5 * sum(max(0.0, min_norm - float(anchors[a].norm())) ** 2 for a in classes)
    return attract + repel + norm


# -- oracle (eq. 1-4 by hand) ------------------------------------------------------------------------------------


def test_oracle_all_classes():
    loss = oracle_loss()
    assert loss(ORACLE_EMB, ORACLE_LABELS).item() == pytest.approx(21.236456, abs=1e-6)
    parts = components(oracle_loss(), ORACLE_EMB, ORACLE_LABELS)
    assert parts["attractor_loss"].tolist() == pytest.approx([0.5, 0.5], abs=1e-12)  # batch mean 0.5
    assert parts["repeller_loss"].item() == pytest.approx(4 + 2 * (4 - math.sqrt(1.25)) ** 2, abs=1e-9)
    assert parts["repeller_loss"].item() == pytest.approx(20.611456, abs=1e-6)
    assert parts["norm_loss"].item() == pytest.approx(0.125, abs=1e-12)


def test_oracle_batch_classes_only():
    loss = oracle_loss(batch_classes_only=True)
    parts = components(oracle_loss(batch_classes_only=True), ORACLE_EMB, ORACLE_LABELS)
    assert parts["repeller_loss"].item() == pytest.approx(4.0, abs=1e-9)  # only the pair (0, 1)
    assert parts["norm_loss"].item() == pytest.approx(0.0, abs=1e-12)  # class 2 is absent
    assert loss(ORACLE_EMB, ORACLE_LABELS).item() == pytest.approx(4.5, abs=1e-9)


def test_repeller_counts_each_unordered_pair_once():
    anchors = torch.tensor([[0.0, 0.0, 3.0], [1.0, 0.0, 3.0]], dtype=torch.float64)  # 1 apart, norms >= p
    emb, labels = anchors.clone(), torch.tensor([0, 1])
    # 1/2 sum over ordered pairs (y, y') and (y', y) = (2m - 1)^2 = 9, not 18 (ordered) nor 4.5 (halved twice).
    assert make(2, 3, anchors=anchors)(emb, labels).item() == pytest.approx(9.0, abs=1e-9)
    g = torch.Generator().manual_seed(0)
    anchors = torch.randn(7, 4, generator=g, dtype=torch.float64) * 1.2
    emb, labels = torch.randn(9, 4, generator=g, dtype=torch.float64), torch.randint(0, 7, (9,), generator=g)
    for batch_only in (False, True):
        classes = sorted(set(labels.tolist())) if batch_only else None
        expected = reference_cam(emb, labels, anchors, classes=classes)
        ours = make(7, 4, anchors=anchors, batch_classes_only=batch_only)(emb, labels)
        assert ours.item() == pytest.approx(expected, abs=1e-9)
    other = make(7, 4, anchors=anchors, margin=1.5, min_norm=2.5)(emb, labels)
    assert other.item() == pytest.approx(reference_cam(emb, labels, anchors, 1.5, 2.5), abs=1e-9)


# -- gradients -------------------------------------------------------------------------------------------------


def _autograd(loss, emb):
    emb = emb.clone().requires_grad_(True)
    loss(emb, ORACLE_LABELS).backward()
    return emb.grad, loss.anchors.grad


def test_hand_derived_gradients_all_classes():
    """d/de_i = (e_i - c_yi)/B; d/dc of the hinge^2 of a pair = -2h (c_i - c_j)/d_ij; d/dc2 of L_N = -(p-|c2|) c2/|c2|."""
    grad_e, grad_c = _autograd(oracle_loss(), ORACLE_EMB)
    h = 4 - math.sqrt(1.25)
    k = 2 * h / math.sqrt(1.25)  # from the pairs (0, 2) and (1, 2), both at distance sqrt(1.25)
    expected_e = torch.tensor([[0.0, 0.5], [0.0, -0.5]], dtype=torch.float64)
    expected_c = torch.tensor(
        [
            [-4.0 - k, -0.5 + 0.5 * k],  # attractor (0, -1/2) + pair (0,1) (-4, 0) + pair (0,2) -k (1, -1/2)
            [4.0 + k, 0.5 + 0.5 * k],  # attractor (0, 1/2) + pair (0,1) (4, 0) + pair (1,2) -k (-1, -1/2)
            [0.0, -k - 0.5],  # pairs (0,2), (1,2): k (0, -1); norm term (0, -1/2)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(grad_e, expected_e, atol=1e-9, rtol=0)
    torch.testing.assert_close(grad_c, expected_c, atol=1e-9, rtol=0)


def test_hand_derived_gradients_batch_classes_only():
    grad_e, grad_c = _autograd(oracle_loss(batch_classes_only=True), ORACLE_EMB)
    torch.testing.assert_close(grad_e, torch.tensor([[0.0, 0.5], [0.0, -0.5]], dtype=torch.float64))
    expected_c = torch.tensor([[-4.0, -0.5], [4.0, 0.5], [0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(grad_c, expected_c, atol=1e-9, rtol=0)


@pytest.mark.parametrize("batch_only", [False, True])
def test_gradcheck_embeddings_and_anchors(batch_only):
    g = torch.Generator().manual_seed(2)
    anchors = torch.randn(5, 3, generator=g, dtype=torch.float64)  # some pairs inside 2m, some norms below p
    anchors[4] *= 0.3
    loss = make(5, 3, anchors=anchors, batch_classes_only=batch_only)
    emb = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 3, 4, 0])
    a = anchors.clone().requires_grad_(True)

    def f(e, anchor_values):
        return torch.func.functional_call(loss, {"anchors": anchor_values}, (e, labels))

    assert f(emb, a).item() > 0
    assert torch.autograd.gradcheck(f, (emb, a))


def test_coincident_anchors_and_zero_anchor_give_finite_gradients():
    anchors = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    loss = make(4, 2, anchors=anchors)
    emb = torch.randn(8, 2, requires_grad=True)
    labels = torch.arange(8) % 4
    value = loss(emb, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(emb.grad).all() and torch.isfinite(loss.anchors.grad).all()
    # The coincident pair contributes its full hinge (2m)^2; its gradient is the zero subgradient.
    parts = components(make(2, 2, anchors=anchors[:2]), anchors[:2].clone(), torch.tensor([0, 1]))
    assert parts["repeller_loss"].item() == pytest.approx(16.0, abs=1e-6)


# -- parameters, training, dtypes, state ---------------------------------------------------------------------


def test_anchors_are_a_parameter_and_get_gradients():
    loss = make(6, 8)
    assert isinstance(loss.anchors, torch.nn.Parameter)
    assert [name for name, _ in loss.named_parameters()] == ["anchors"] and "anchors" not in dict(loss.named_buffers())
    loss(torch.randn(10, 8), torch.arange(10) % 6).backward()
    assert loss.anchors.grad is not None and loss.anchors.grad.abs().sum() > 0


def test_default_init_is_seeded_standard_normal():
    loss = make(5, 16, seed=3)
    expected = torch.randn(5, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64).float()
    torch.testing.assert_close(loss.anchors.detach(), expected, atol=0, rtol=0)
    torch.testing.assert_close(make(5, 16, seed=3).anchors, loss.anchors, atol=0, rtol=0)
    assert not torch.equal(make(5, 16, seed=4).anchors, loss.anchors)
    by_name = make(5, 16, anchors="standard_normal", seed=3, anchor_kwargs={"std": 2.0})
    torch.testing.assert_close(by_name.anchors.detach(), 2.0 * expected)
    assert "pml-anchors-cam:standard_normal" in pml_anchors.list_initializers()
    pml = make(5, 16, anchors="kaiming_normal")  # any registered geometry
    assert pml.anchors.shape == (5, 16)


def test_training_in_pml_metric_loss_only_lowers_the_loss_and_moves_the_anchors():
    torch.manual_seed(0)
    num_classes, n = 4, 128
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % num_classes
    data = (torch.randn(num_classes, 10, generator=g) * 3)[labels] + 0.3 * torch.randn(n, 10, generator=g)
    trunk = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU())
    embedder = torch.nn.Linear(32, 8)
    loss = make(num_classes, 8)
    start = loss.anchors.detach().clone()
    hooks = pml_anchors.get_trainer_hooks("cam")
    seen = []
    c_f.LOGGER.setLevel(logging.WARNING)
    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk, "embedder": embedder},
        optimizers={
            "trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=1e-2),
            "embedder_optimizer": torch.optim.Adam(embedder.parameters(), lr=1e-2),
            "metric_loss_optimizer": torch.optim.Adam(
                pml_anchors.param_groups(loss, 1e-2, pml_anchors.get_method("cam"))
            ),
        },
        batch_size=32,
        loss_funcs={"metric_loss": loss},
        dataset=torch.utils.data.TensorDataset(data, labels),
        iterations_per_epoch=10,
        dataloader_num_workers=0,
        data_device=torch.device("cpu"),  # the models stay on the CPU (PML's default: CUDA if present)
        end_of_iteration_hook=pml_anchors.chain_hooks(
            hooks.end_of_iteration_hook, lambda t: seen.append(float(t.losses["total_loss"].detach()))
        ),
        end_of_epoch_hook=hooks.end_of_epoch_hook,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # attach must not warn: the anchors are stepped
        hooks.attach(trainer)
    trainer.train(num_epochs=2)
    assert len(seen) == 20 and all(math.isfinite(v) for v in seen)
    assert sum(seen[-5:]) / 5 < 0.5 * sum(seen[:5]) / 5
    assert (loss.anchors.detach() - start).norm() > 0.1
    assert [r["epoch"] for r in hooks.history] == [1, 2]
    assert {"min_anchor_distance", "target_min_distance", "min_anchor_norm", "target_min_norm"} <= set(
        hooks.history[-1]
    )


def test_attach_warns_when_anchors_are_not_optimised():
    hooks = pml_anchors.get_trainer_hooks("cam")
    trainer = types.SimpleNamespace(loss_funcs={"metric_loss": make()}, optimizers={})
    with pytest.warns(RuntimeWarning, match=r"no optimizer of the trainer steps \(anchors\).*metric_loss_optimizer"):
        hooks.attach(trainer)


def test_dtypes_and_bf16_autocast_keep_the_parameter():
    loss = make(6, 16)
    g = torch.Generator().manual_seed(1)
    emb, labels = torch.randn(32, 16, generator=g), torch.arange(32) % 6
    v32 = loss(emb, labels)
    v64 = loss(emb.double(), labels)
    assert v64.dtype == torch.float64 and v64.item() == pytest.approx(v32.item(), rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model = torch.nn.Linear(16, 16)
        out = model(emb)
        assert out.dtype == torch.bfloat16
        vbf = loss(out, labels)
    vbf.backward()
    ref = loss(model(emb).detach(), labels)
    assert torch.isfinite(vbf) and vbf.item() == pytest.approx(ref.item(), rel=2e-2)
    assert loss.anchors.dtype == torch.float32 and isinstance(loss.anchors, torch.nn.Parameter)
    assert torch.isfinite(loss.anchors.grad).all() and torch.isfinite(model.weight.grad).all()


def test_state_dict_round_trip():
    loss = make(6, 8, seed=0)
    with torch.no_grad():
        loss.anchors.add_(0.5)  # trained anchors, not the seeded init
    restored = make(6, 8, seed=1)
    restored.load_state_dict(loss.state_dict())
    torch.testing.assert_close(restored.anchors, loss.anchors, atol=0, rtol=0)
    emb, labels = torch.randn(5, 8), torch.tensor([0, 1, 2, 3, 5])
    assert restored(emb, labels).item() == loss(emb, labels).item()
    with pytest.raises(ValueError, match="checkpoint anchors"):
        make(7, 8).load_state_dict(loss.state_dict())


# -- inference ------------------------------------------------------------------------------------------------


def test_logits_are_negative_distances_and_predict_is_the_nearest_anchor():
    loss = oracle_loss()
    emb = torch.tensor([[0.9, 0.1], [-3.0, 0.2], [0.1, 0.6], [0.2, 5.0]], dtype=torch.float64)
    torch.testing.assert_close(loss.get_logits(emb), -torch.cdist(emb, ORACLE_ANCHORS))
    assert loss.predict(emb).tolist() == [0, 1, 2, 2]


def test_geometry_diagnostics():
    geo = oracle_loss().geometry()
    assert geo["min_anchor_distance"] == pytest.approx(math.sqrt(1.25))
    assert geo["min_anchor_norm"] == pytest.approx(0.5)
    assert (geo["target_min_distance"], geo["target_min_norm"], geo["pairs_within_margin"]) == (4.0, 1.0, 3)
    assert oracle_loss().target_min_angle() is None


def test_geometry_works_in_row_blocks_and_equals_the_direct_pair_distances():
    """The epoch hook calls geometry(): it must not build all K^2 / 2 pair differences (K = 10k would need ~150 GB)."""
    from pml_anchors_cam.cam_loss import _pair_distance_stats

    g = torch.Generator().manual_seed(0)
    anchors = torch.randn(300, 5, generator=g, dtype=torch.float64) * 3
    i, j = torch.triu_indices(300, 300, offset=1)
    direct = (anchors[i] - anchors[j]).norm(dim=1)
    for block in (1 << 22, 7 * 300, 1):  # one block, several, one row each
        min_d2, within = _pair_distance_stats(anchors, 4.0, block_entries=block)
        assert math.sqrt(min_d2) == pytest.approx(float(direct.min()), rel=1e-9)
        assert within == int((direct < 4.0).sum())
    geo = make(300, 5, anchors=anchors.float()).geometry()
    assert geo["pairs_within_margin"] == int((direct < 4.0).sum())


# -- options, bad input, registry -------------------------------------------------------------------------------


def test_miner_weights_scale_only_the_attractor():
    parts = components(oracle_loss(), ORACLE_EMB, ORACLE_LABELS)
    loss = oracle_loss()
    loss.reducer = DoNothingReducer()
    pairs = (torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))  # only sample 0 mined
    weighted = {k: v["losses"] for k, v in loss(ORACLE_EMB, ORACLE_LABELS, indices_tuple=pairs).items()}
    assert weighted["attractor_loss"].tolist() == pytest.approx([0.5, 0.0])
    assert weighted["repeller_loss"].item() == pytest.approx(parts["repeller_loss"].item())


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"margin": -1.0}, ValueError, r"margin \(m of eq. 2; paper: 2\) must be a finite number >= 0, got -1.0"),
        ({"margin": float("nan")}, ValueError, "margin"),
        ({"margin": "2"}, TypeError, "margin .* got str '2'"),
        ({"min_norm": -0.5}, ValueError, r"min_norm \(p of eq. 3; paper: 1\) must be a finite number >= 0"),
        ({"min_norm": float("inf")}, ValueError, "min_norm"),
        ({"neighbor_skin": 0.0}, ValueError, r"neighbor_skin \(None: the margin\) must be None or a finite number > 0"),
        ({"batch_classes_only": 1}, TypeError, "batch_classes_only must be True or False, got 1"),
        ({"distance": CosineSimilarity()}, ValueError, "computes raw Euclidean distances"),
        ({"distance": LpDistance()}, ValueError, r"must be LpDistance\(normalize_embeddings=False\) .*got LpDistance"),
        ({"anchors": torch.zeros(4, 2)}, ValueError, r"shape \(3, 2\)"),
        ({"anchor_kwargs": {"std": 0}}, ValueError, "std must be"),
    ],
)
def test_bad_hyper_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        make(**kwargs)


def test_zero_margin_and_min_norm_switch_terms_off():
    parts = components(oracle_loss(margin=0, min_norm=0), ORACLE_EMB, ORACLE_LABELS)
    assert parts["repeller_loss"].item() == 0 and parts["norm_loss"].item() == 0


def test_bad_batches_are_rejected():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        oracle_loss()(ORACLE_EMB, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        oracle_loss()(torch.tensor([[float("nan"), 0.0]], dtype=torch.float64), torch.tensor([0]))


def test_registered_spec():
    spec = pml_anchors.get_method("class_anchor_margin")  # the alias
    assert spec is pml_anchors.get_method("cam")
    described = spec.as_dict()
    assert (described["plugin"], described["normalize_embeddings"], described["lr_multipliers"]) == (
        "pml-anchors-cam",
        False,  # trained and retrieved on raw Euclidean distances
        {},  # the anchors train at the network's lr
    )
    assert "Ghita" in described["paper"]
    assert described["trainer_hooks"] == "pml_anchors_cam.hooks:CamTrainerHooks"  # neighbour list between steps


def test_plugin_import_is_torch_free():
    check_import_is_light("pml_anchors_cam")


def test_check_method():
    report = check_method("cam")
    assert report["hooks"] == "CamTrainerHooks" and math.isfinite(report["trainer_loss"])
    check_method("cam", loss_kwargs={"batch_classes_only": True})
