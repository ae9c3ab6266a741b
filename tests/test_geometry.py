"""The loss owns its geometry: ``AnchorLoss.geometry()`` / ``target_min_angle()``, recorded every epoch by the base
``TrainerHooks`` for every method, with the keys ``results.json``'s ``hook_history`` has always had."""

from __future__ import annotations

import math
import types
import warnings

import pytest
import torch
from toy_loss import LearnableToyLoss

import pml_anchors
from pml_anchors.anchors.diagnostics import min_angle_within_budget, min_pairwise_angle
from pml_anchors.plugin.trainer_hooks import loss_geometry

BASE = {"epoch", "min_anchor_angle_deg", "mean_anchor_norm"}
#: method -> the keys of one hook_history record (as written before the hooks moved into the losses)
EXPECTED_KEYS = {
    "c_ncm": BASE | {"target_min_angle_deg"},
    "e_ncm": BASE | {"target_min_angle_deg"},
    "cam": BASE
    | {"min_anchor_distance", "min_anchor_norm", "pairs_within_margin", "target_min_distance", "target_min_norm"},
    "fsc": BASE | {"intra_class_cos"},
    "proxy_anchor": BASE,
    "reponet": BASE | {"target_min_angle_deg", "geometry_ok", "margin_deg"},
}


def _record(name: str, num_classes: int = 6) -> dict:
    loss = pml_anchors.get_loss(name, num_classes, None if name == "reponet" else 8)
    hooks = pml_anchors.get_trainer_hooks(name)
    assert hooks.end_of_epoch_hook(types.SimpleNamespace(loss_funcs={"metric_loss": loss}, epoch=3)) is True
    (record,) = hooks.history
    return record


@pytest.mark.parametrize("name", sorted(EXPECTED_KEYS))
def test_the_base_hooks_record_each_methods_geometry_with_the_same_keys(name):
    record = _record(name)
    assert set(record) == EXPECTED_KEYS[name]
    assert record["epoch"] == 3 and record["mean_anchor_norm"] > 0 and 0 < record["min_anchor_angle_deg"] <= 180


def test_only_proxy_anchor_and_cam_ship_their_own_hooks():
    kinds = {spec.name: type(pml_anchors.get_trainer_hooks(spec.name)).__name__ for spec in pml_anchors.list_methods()}
    own = {"proxy_anchor": "ProxyAnchorHooks", "cam": "CamTrainerHooks"}  # recipe; neighbour list between steps
    assert kinds == {name: "TrainerHooks" for name in EXPECTED_KEYS} | own


def test_a_method_with_a_target_reports_it_even_for_one_class():
    record = _record("c_ncm", num_classes=1)
    assert math.isnan(record["target_min_angle_deg"]) and math.isnan(record["min_anchor_angle_deg"])


def test_target_in_degrees_next_to_the_measured_angle():
    loss = pml_anchors.get_loss("reponet", 10, None, polytope="cube")
    geometry = loss.geometry()
    assert geometry["target_min_angle_deg"] == pytest.approx(math.degrees(loss.target_min_angle())) == 60.0
    assert geometry["min_anchor_angle_deg"] == pytest.approx(60.0, abs=1e-3) and geometry["geometry_ok"] is True


def test_a_third_party_loss_adds_keys_by_extending_geometry():
    class Custom(LearnableToyLoss):
        def geometry(self):
            return {**super().geometry(), "spread": 1.5}

    record = loss_geometry(Custom(4, 8))
    assert set(record) == {"min_anchor_angle_deg", "mean_anchor_norm", "spread"}  # no target: none declared


def test_pml_losses_have_no_geometry_and_the_hooks_record_the_epoch_only():
    from pytorch_metric_learning.losses import ArcFaceLoss

    assert loss_geometry(ArcFaceLoss(4, 8)) == {}
    hooks = pml_anchors.TrainerHooks()
    hooks.end_of_epoch_hook(types.SimpleNamespace(loss_funcs={"metric_loss": ArcFaceLoss(4, 8)}, epoch=1))
    assert hooks.history == [{"epoch": 1}]


def test_attach_warns_when_no_optimizer_steps_learnable_anchors():
    loss = LearnableToyLoss(4, 8)
    trainer = types.SimpleNamespace(loss_funcs={"metric_loss": loss}, optimizers={})
    with pytest.warns(RuntimeWarning, match=r"LearnableToyLoss has trainable parameters .*\(anchors\)"):
        pml_anchors.TrainerHooks().attach(trainer)
    trainer.optimizers = {"metric_loss_optimizer": torch.optim.SGD(loss.parameters(), lr=0.1)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pml_anchors.TrainerHooks().attach(trainer)  # stepped: no warning


def test_the_angle_is_exact_within_the_budget_and_an_upper_bound_from_fixed_rows_beyond():
    rows = torch.randn(300, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = min_pairwise_angle(rows)
    assert min_angle_within_budget(rows) == (exact, 300)
    angle, searched = min_angle_within_budget(rows, budget=300 * 8 * 20)
    assert searched == 20 and angle >= exact
    assert min_angle_within_budget(rows, budget=300 * 8 * 20) == (angle, 20)  # the same rows every call
    unit = rows / rows.norm(dim=1, keepdim=True)
    cos = unit @ unit.T
    cos.fill_diagonal_(-1.0)
    best_of_each_row = torch.arccos(cos.max(dim=1).values.clamp(-1, 1))
    sample = torch.randperm(300, generator=torch.Generator().manual_seed(0))[:20]
    assert angle == pytest.approx(float(best_of_each_row[sample].min()), abs=1e-9)  # brute force over those rows


def test_large_k_geometry_and_evaluation_say_the_angle_was_sampled(monkeypatch):
    """Above the budget (K^2 d about 7e10: hours of float64 at K = 1M) the epoch hook and the evaluation search a
    fixed sample of rows, and say how many; below it the keys are the usual ones."""
    from pml_anchors.anchors import diagnostics
    from pml_anchors.evaluation.diagnostics import anchor_angles

    loss = pml_anchors.get_loss("c_ncm", 40, 8)
    assert "min_anchor_angle_rows_searched" not in loss.geometry()
    monkeypatch.setattr(diagnostics, "DIAGNOSTIC_ANGLE_BUDGET", 40 * 8 * 5)
    geometry = loss.geometry()
    assert geometry["min_anchor_angle_rows_searched"] == 5
    assert geometry["min_anchor_angle_deg"] >= math.degrees(min_pairwise_angle(loss.anchors)) - 1e-9
    assert anchor_angles(loss)["min_anchor_angle_rows_searched"] == 5
