"""The author test kit: the pml_registry fixture and check_method()."""

import pytest
import torch
from toy_loss import LearnableToyLoss, ToyCosineLoss

import pml_anchors
from pml_anchors import MethodSpec, TrainerHooks, hookimpl
from pml_anchors.testing import check_method


def test_check_method_accepts_a_spec_with_fixed_anchors():
    report = check_method(MethodSpec(name="toy", loss=ToyCosineLoss, initializer="one_hot"))
    assert report["hooks"] == "TrainerHooks" and report["trainer_loss"] > 0


def test_check_method_keeps_its_batches_on_the_cpu_whatever_pml_defaults_to(monkeypatch):
    """PML's trainer puts each batch on CUDA whenever a GPU is present (``use_cuda_if_available``), but the kit's
    tiny models are on the CPU: on a GPU machine every check failed until the kit named its data device."""
    from pytorch_metric_learning.utils import common_functions as c_f

    monkeypatch.setattr(c_f, "use_cuda_if_available", lambda: torch.device("meta"))  # a device it must not use
    report = check_method(MethodSpec(name="toy", loss=ToyCosineLoss, initializer="one_hot"))
    assert report["trainer_loss"] > 0


def test_check_method_accepts_learnable_anchors_by_name(pml_registry):
    class Plugin:
        @hookimpl
        def register_methods(self, register):
            register(MethodSpec(name="toy_l", loss=LearnableToyLoss))

    pml_registry.add_plugin(Plugin(), name="toy")
    assert check_method("toy_l")["method"] == "toy:toy_l"


def test_check_method_runs_the_method_hooks_in_a_real_trainer():
    calls = []

    class Hooks(TrainerHooks):
        def attach(self, trainer):
            calls.append(("attach", type(trainer).__name__))

        def end_of_iteration_hook(self, trainer):
            calls.append(("iteration", trainer.iteration))

        def end_of_epoch_hook(self, trainer):
            calls.append(("epoch", trainer.epoch))
            return super().end_of_epoch_hook(trainer)

    check_method(MethodSpec(name="toy", loss=ToyCosineLoss, trainer_hooks=Hooks), train_iterations=2)
    assert calls == [
        ("attach", "MetricLossOnly"),
        *[("iteration", i) for i in (0, 1)],
        ("epoch", 1),
        *[("iteration", i) for i in (0, 1)],  # PML counts iterations within an epoch
        ("epoch", 2),
    ]


def test_check_method_catches_an_epoch_hook_that_stops_training():
    class StopsEarly(TrainerHooks):
        def end_of_epoch_hook(self, trainer):
            super().end_of_epoch_hook(trainer)
            return trainer.epoch < 2  # False after epoch 2: PML would stop there

    check_method(MethodSpec(name="toy", loss=ToyCosineLoss, trainer_hooks=StopsEarly), train_epochs=2)  # at the end
    with pytest.raises(AssertionError, match="end_of_epoch_hook returned False after epoch 2 of 3"):
        check_method(MethodSpec(name="toy", loss=ToyCosineLoss, trainer_hooks=StopsEarly), train_epochs=3)


class NoGradAnchors(LearnableToyLoss):
    def anchor_losses(self, embeddings, labels, anchors, weights):
        return super().anchor_losses(embeddings, labels, anchors.detach(), weights)


class NotDeterministic(ToyCosineLoss):
    def __init__(self, num_classes, embedding_size=None, **kwargs):
        kwargs["anchors"] = torch.randn(num_classes, embedding_size)
        super().__init__(num_classes, embedding_size, **kwargs)


class NanLoss(ToyCosineLoss):
    def anchor_losses(self, embeddings, labels, anchors, weights):
        out = super().anchor_losses(embeddings, labels, anchors, weights)
        out["loss"]["losses"] = out["loss"]["losses"] * float("nan")
        return out


@pytest.mark.parametrize(
    "loss, message",
    [
        (NoGradAnchors, "received no gradient"),
        (NotDeterministic, "not deterministic"),
        (NanLoss, "not finite"),
        (torch.nn.Linear, "BaseMetricLossFunction"),
    ],
)
def test_check_method_catches_broken_methods(loss, message):
    with pytest.raises((AssertionError, pml_anchors.InvalidMethodSpec), match=message):
        check_method(MethodSpec(name="bad", loss=loss))


def test_pml_registry_fixture_blocks_discovery(pml_registry):
    assert pml_anchors.list_methods() == []
    report = pml_anchors.get_plugins()
    assert all(r["status"] in {"ok", "skipped"} for r in report)
    assert [r["name"] for r in report if r["status"] == "ok"] == ["pml-anchors"]


def test_chain_hooks_stops_when_any_hook_returns_false():
    from pml_anchors import chain_hooks

    seen = []
    hook = chain_hooks(lambda t: seen.append(1), None, lambda t: False, lambda t: seen.append(3))
    assert hook(object()) is False and seen == [1, 3]
    assert chain_hooks(lambda t: None)(object()) is True


def test_param_groups_apply_lr_multipliers():
    from pml_anchors import param_groups

    loss = LearnableToyLoss(3, 4)
    groups = param_groups(loss, 1e-3, {"anchors": 100})
    assert len(groups) == 1 and groups[0]["lr"] == pytest.approx(0.1)
    spec = MethodSpec(name="x", loss=LearnableToyLoss, lr_multipliers={"anchors": 10.0})
    assert param_groups(loss, 1e-3, spec)[0]["lr"] == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="proxies"):
        param_groups(loss, 1e-3, {"proxies": 100})
    assert param_groups(ToyCosineLoss(3, 4), 1e-3) == []


def test_check_method_runs_pmls_trainer_without_its_progress_bar_warning():
    """PML's trainer warns every iteration while formatting its loss for the progress bar; check_method (and so
    `pml-anchors validate --run`) hides exactly that warning, as pml_anchors.app.session.train does."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        check_method(MethodSpec(name="toy", loss=ToyCosineLoss, initializer="one_hot"))


def test_check_method_report_repeats_and_leaves_the_callers_random_state_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first, second = check_method("c_ncm"), check_method("c_ncm")
    assert first == second  # the trainer run starts from seed 0 every time
    assert torch.equal(torch.random.get_rng_state(), before)
