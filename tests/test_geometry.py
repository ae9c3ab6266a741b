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


def test_only_proxy_anchor_ships_its_own_hooks():
    kinds = {spec.name: type(pml_anchors.get_trainer_hooks(spec.name)).__name__ for spec in pml_anchors.list_methods()}
    assert kinds == {name: "TrainerHooks" for name in EXPECTED_KEYS} | {"proxy_anchor": "ProxyAnchorHooks"}


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
