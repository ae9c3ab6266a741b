"""pml_anchors.evaluation: PML tester + AccuracyCalculator, nearest-anchor accuracy, geometry."""

import math

import pytest
import torch
from pytorch_metric_learning import losses
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from toy_loss import ToyCosineLoss
from training_toys import (
    single_thread,  # noqa: F401 - autouse fixture
    tiny,
)

from pml_anchors.app.session import build, evaluate_session, train
from pml_anchors.devices import resolve_device
from pml_anchors.evaluation import METRICS, anchor_angles, anchor_rows, class_spread, embed, evaluate


@pytest.mark.parametrize(("method", "normalized"), [("toy_fixed", True), ("toy_raw", False)])
def test_metrics_are_pml_accuracy_calculator_in_the_specs_space(toys, method, normalized):
    s = train(build(tiny(method)))
    r = evaluate_session(s)
    assert r["normalize_embeddings"] is normalized and r["protocol"] == "same_class" and r["num_queries"] == 120
    emb, labels = embed(s.trunk, s.embedder, s.splits.test, "cpu")
    if normalized:
        emb = torch.nn.functional.normalize(emb)
    calculator = AccuracyCalculator(include=METRICS, k="max_bin_count", device=torch.device("cpu"))
    direct = calculator.get_accuracy(emb, labels, emb, labels, True)
    for m in METRICS:
        assert r[m] == pytest.approx(direct[m]), m
        assert 0.0 <= r[m] <= 1.0


def test_nearest_anchor_accuracy_is_loss_predict(toys):
    s = train(build(tiny("toy_fixed")))
    r = evaluate_session(s)
    emb, labels = embed(s.trunk, s.embedder, s.splits.test, "cpu")
    expected = (s.loss.predict(emb) == labels).double().mean().item()
    assert r["nearest_anchor_accuracy"] == pytest.approx(expected)


def test_open_set_queries_unseen_classes_without_nearest_anchor_accuracy(toys):
    s = train(build(tiny("toy_fixed", protocol="open_set")))
    assert s.num_classes == 5 and int(s.splits.test_labels.min()) >= 5
    r = evaluate(s.trunk, s.embedder, s.loss, s.splits, s.spec, "cpu")
    assert r["protocol"] == "open_set" and r["nearest_anchor_accuracy"] is None
    assert 0.0 <= r["precision_at_1"] <= 1.0 and r["min_anchor_angle_deg"] == pytest.approx(90.0)


def test_class_spread_by_hand():
    emb = torch.tensor([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0]])
    out = class_spread(emb, torch.tensor([0, 0, 1, 1]))
    assert out == pytest.approx({"intra_class_distance": 1.0, "inter_class_distance": 10.0, "intra_class_spread": 0.1})


def test_anchor_rows_follow_each_pml_convention():
    pa = losses.ProxyAnchorLoss(3, 4)
    assert torch.equal(anchor_rows(pa), pa.proxies.detach())
    arc = losses.ArcFaceLoss(3, 4)
    assert torch.equal(anchor_rows(arc), arc.W.detach().T)
    assert anchor_rows(losses.SoftTripleLoss(3, 4, centers_per_class=2)).shape == (6, 4)
    assert anchor_rows(losses.ContrastiveLoss()) is None
    assert anchor_angles(losses.ContrastiveLoss()) == {
        "min_anchor_angle_deg": None,
        "target_min_anchor_angle_deg": None,
    }


def test_anchor_angle_against_the_methods_target_in_degrees():
    class WithTarget(ToyCosineLoss):
        def target_min_angle(self):
            return math.pi / 2  # radians, as the plugins return it

    out = anchor_angles(WithTarget(3, 4, anchors="one_hot"))
    assert out == pytest.approx({"min_anchor_angle_deg": 90.0, "target_min_anchor_angle_deg": 90.0})


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
