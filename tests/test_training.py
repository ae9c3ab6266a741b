"""pml_anchors.app.session: PML trainer glue, optimizers, hooks, seeding, checkpoints, AMP."""

import math

import pytest
import torch
from pytorch_metric_learning import losses
from training_toys import (
    RecordingHooks,
    single_thread,  # noqa: F401 - autouse fixture
    tiny,
)

from pml_anchors.app.checkpoints import load_checkpoint, save_checkpoint
from pml_anchors.app.config import TrainConfig
from pml_anchors.app.session import build, run, train
from pml_anchors.app.trainer import AMPMetricLossOnly


def _states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_trainer_is_pml_metric_loss_only_without_miner(toys):
    s = build(tiny())
    assert isinstance(s.trainer, AMPMetricLossOnly)
    assert s.trainer.mining_funcs == {}
    assert s.trainer.loss_funcs == {"metric_loss": s.loss}
    assert s.trainer.models == {"trunk": s.trunk, "embedder": s.embedder}
    assert s.trainer.dataloader_num_workers == 0
    assert s.trainer.data_device == torch.device("cpu") == s.device


def test_fixed_anchors_get_no_metric_loss_optimizer(toys):
    s = build(tiny("toy_fixed"))
    assert set(s.optimizers) == {"trunk_optimizer", "embedder_optimizer"}
    assert "anchors" in s.loss.state_dict()


@pytest.mark.parametrize(
    ("method", "param", "mult"), [("toy_learnable", "anchors", 10.0), ("pml_proxy", "proxies", 100.0)]
)
def test_lr_multipliers_make_metric_loss_optimizer_groups(toys, method, param, mult):
    s = build(tiny(method, lr=2e-3, optimizer="adamw", weight_decay=1e-4))
    opt = s.optimizers["metric_loss_optimizer"]
    assert isinstance(opt, torch.optim.AdamW)
    [group] = opt.param_groups
    assert group["lr"] == pytest.approx(2e-3 * mult)
    assert group["params"][0] is getattr(s.loss, param)
    assert s.optimizers["trunk_optimizer"].param_groups[0]["lr"] == pytest.approx(2e-3)
    assert s.optimizers["trunk_optimizer"].param_groups[0]["weight_decay"] == pytest.approx(1e-4)


def test_sgd_and_unknown_optimizer(toys):
    s = build(tiny(optimizer="sgd"))
    assert isinstance(s.optimizers["trunk_optimizer"], torch.optim.SGD)
    with pytest.raises(ValueError, match="unknown optimizer"):
        TrainConfig(method="toy_fixed", optimizer="lbfgs")


def test_compile_options_are_checked_when_the_config_is_made(toys):
    with pytest.raises(TypeError, match="compile must be True or False"):
        TrainConfig(method="toy_fixed", compile="yes")
    with pytest.raises(TypeError, match="amp must be True or False, got 1"):
        TrainConfig(method="toy_fixed", amp=1)
    with pytest.raises(ValueError, match=r"unknown compile_kwargs \['modes'\]; torch.compile options here: backend"):
        TrainConfig(method="toy_fixed", compile=True, compile_kwargs={"modes": "max-autotune"})
    with pytest.raises(ValueError, match="torch.compile rejected compile_kwargs .* Invalid backend: 'nope'"):
        build(tiny(compile=True, compile_kwargs={"backend": "nope"}))


def test_method_hooks_and_user_hooks_are_chained_and_attached(toys):
    seen = []
    s = build(
        tiny("toy_learnable", epochs=2),
        end_of_iteration_hook=lambda t: seen.append(("user_iteration", t.epoch, t.iteration)),
        end_of_epoch_hook=lambda t: seen.append(("user_epoch", t.epoch)),
    )
    assert isinstance(s.hooks, RecordingHooks)
    assert s.hooks.calls == [("attach", "AMPMetricLossOnly")]  # attached before training
    train(s)
    iterations = [c for c in s.hooks.calls if c[0] == "iteration"]
    assert len(iterations) == 4 and [c for c in seen if c[0] == "user_iteration"] == [
        ("user_iteration",) + c[1:] for c in iterations
    ]
    assert [c for c in s.hooks.calls if c[0] == "epoch"] == [("epoch", 1), ("epoch", 2)]
    assert ("user_epoch", 2) in seen
    assert [h["epoch"] for h in s.hooks.history] == [1, 2]  # geometry logging of the base hooks


def test_trainer_says_whether_the_trunk_starts_from_weights(toys, tmp_path):
    """``trainer.pretrained_trunk`` tells recipes (frozen BatchNorm, warm-up) whether backbone weights were loaded."""
    scratch = build(tiny())
    assert scratch.trainer.pretrained_trunk is False
    weights = tmp_path / "trunk.pt"
    torch.save(scratch.trunk.state_dict(), weights)
    loaded = build(tiny(backbone_kwargs={"width": 8, "weights_path": str(weights)}))
    assert loaded.trainer.pretrained_trunk is True
    assert _states_equal(loaded.trunk.state_dict(), scratch.trunk.state_dict())


def test_hooks_without_attach_are_fine(toys):
    """PML's hook protocol is only end_of_iteration_hook / end_of_epoch_hook; attach is optional."""
    from pml_anchors.plugin.trainer_hooks import attach_hooks

    class PlainHooks:
        def end_of_iteration_hook(self, trainer):
            pass

        def end_of_epoch_hook(self, trainer):
            return True

    s = build(tiny(), with_trainer=True)
    attach_hooks(PlainHooks(), s.trainer, start_epoch=3)
    assert s.trainer.start_epoch == 3 and s.trainer.epoch == 2


def test_a_method_hook_returning_false_stops_training(toys):
    s = train(build(tiny("toy_learnable", epochs=3, hook_kwargs={"stop_after": 1})))
    assert s.epoch == 1 and len(s.history) == 1


def test_same_seed_gives_identical_losses_and_weights(toys):
    a = train(build(tiny("toy_learnable", epochs=2, seed=3)))
    b = train(build(tiny("toy_learnable", epochs=2, seed=3)))
    c = train(build(tiny("toy_learnable", epochs=2, seed=4)))
    assert a.iteration_losses == b.iteration_losses and len(a.iteration_losses) == 4
    assert a.iteration_losses != c.iteration_losses
    assert _states_equal(a.trunk.state_dict(), b.trunk.state_dict())


@pytest.mark.parametrize("method", ["toy_learnable", "pml_proxy"])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(toys, tmp_path, method):
    whole = train(build(tiny(method, epochs=3)))
    first = train(build(tiny(method, epochs=1, output=str(tmp_path))))
    ckpt = tmp_path / "checkpoint.pt"
    saved = load_checkpoint(ckpt)
    assert saved["epoch"] == 1
    resumed = build(tiny(method, epochs=3), resume=ckpt)
    assert resumed.start_epoch == 2
    assert _states_equal(resumed.loss.state_dict(), first.loss.state_dict())  # identical anchors
    train(resumed)
    assert resumed.epoch == 3
    for name in ("trunk", "embedder", "loss"):
        assert _states_equal(getattr(whole, name).state_dict(), getattr(resumed, name).state_dict()), name
    assert whole.iteration_losses[-4:] == resumed.iteration_losses  # epochs 2 and 3
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]


def test_cosine_lr_schedule_anneals_every_optimizer_to_zero_and_resumes_exactly(toys, tmp_path):
    config = dict(epochs=3, lr=1e-2, lr_schedule="cosine")
    lrs = []
    whole = build(
        tiny("toy_learnable", **config),
        end_of_iteration_hook=lambda t: lrs.append(
            [t.optimizers[k].param_groups[0]["lr"] for k in sorted(t.optimizers)]
        ),
    )
    assert set(whole.trainer.lr_schedulers) == {
        "trunk_scheduler_by_iteration",
        "embedder_scheduler_by_iteration",
        "metric_loss_scheduler_by_iteration",
    }
    train(whole)
    total = 3 * (64 // 32)  # PML drops the last incomplete batch
    factors = [0.5 * (1 + math.cos(math.pi * t / total)) for t in range(total)]
    # sorted keys: embedder, metric_loss (toy_learnable anchors at 10x), trunk
    assert sum(lrs, []) == pytest.approx([x for f in factors for x in (1e-2 * f, 1e-1 * f, 1e-2 * f)])
    assert whole.optimizers["trunk_optimizer"].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)

    train(build(tiny("toy_learnable", **config, hook_kwargs={"stop_after": 1}, output=str(tmp_path))))
    resumed = build(tiny("toy_learnable", **config), resume=tmp_path / "checkpoint.pt")
    assert resumed.start_epoch == 2
    assert resumed.trainer.lr_schedulers["trunk_scheduler_by_iteration"].last_epoch == 2
    train(resumed)
    for name in ("trunk", "embedder", "loss"):
        assert _states_equal(getattr(whole, name).state_dict(), getattr(resumed, name).state_dict()), name


def test_resume_rejects_a_different_method(toys, tmp_path):
    train(build(tiny("toy_learnable", output=str(tmp_path))))
    with pytest.raises(ValueError, match="method='toy_learnable'"):
        build(tiny("pml_proxy", epochs=2), resume=tmp_path / "checkpoint.pt")


def test_checkpoint_holds_plain_state_dicts_loadable_weights_only(toys, tmp_path):
    s = train(build(tiny("toy_learnable")))
    path = save_checkpoint(s, tmp_path / "ck.pt")
    data = torch.load(path, weights_only=True)
    assert {"trunk", "embedder", "loss", "optimizers", "config", "epoch"} <= set(data)
    assert set(data["optimizers"]) == {"trunk_optimizer", "embedder_optimizer", "metric_loss_optimizer"}
    assert torch.equal(data["loss"]["anchors"], s.loss.anchors.detach())
    assert data["config"]["method"] == "toy_learnable" and data["epoch"] == 1
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_amp_bf16_on_cpu_runs_finite(toys):
    s = train(build(tiny("toy_learnable", amp=True)))
    assert s.trainer.amp_dtype == torch.bfloat16 and s.scaler is None
    assert s.iteration_losses and all(math.isfinite(v) for v in s.iteration_losses)
    assert s.loss.anchors.dtype == torch.float32  # never cast in place
    assert all(torch.isfinite(p).all() for p in s.trunk.parameters())


def test_amp_keeps_pml_loss_weights_in_float32(toys):
    # PML's ArcFace casts W.data to the embeddings' dtype; the loss runs outside autocast here.
    s = train(build(tiny("baseline:pml_arcface", amp=True)))
    assert s.loss.W.dtype == torch.float32 and all(math.isfinite(v) for v in s.iteration_losses)


def test_amp_fp16_grad_scaler_unscales_before_clipping_and_skips_gradless_optimizers(toys):
    s = build(tiny("toy_learnable", amp=True, amp_dtype="float16", epochs=2))
    assert s.trainer.amp_dtype == torch.float16 and s.scaler is not None
    clipped = []

    def clipper():
        grads = [p.grad for p in s.embedder.parameters()]
        clipped.append(max(float(g.abs().max()) for g in grads))  # unscaled: far below the 2**16 scale
        torch.nn.utils.clip_grad_value_(s.embedder.parameters(), 1.0)

    s.trainer.gradient_clippers = {"embedder_grad_clipper": clipper}
    for p in s.trunk.parameters():  # a frozen trunk (as in a warm-up): its optimizer gets no gradients
        p.requires_grad_(False)
    before = [p.detach().clone() for p in s.trunk.parameters()]
    train(s)
    assert clipped and max(clipped) < 1e3
    assert all(math.isfinite(v) for v in s.iteration_losses)
    assert all(torch.equal(a, b) for a, b in zip(before, s.trunk.parameters()))


def test_run_returns_results_and_writes_output(toys, tmp_path):
    r = run(tiny("toy_fixed", output=str(tmp_path)))
    assert (tmp_path / "results.json").is_file() and (tmp_path / "checkpoint.pt").is_file()
    assert r["device"] == "cpu" and r["epochs"] == 1 and r["embedding_size"] == 64
    assert 0 <= r["precision_at_1"] <= 1 and r["history"][0]["epoch"] == 1


def test_run_accepts_a_pml_loss_that_is_not_registered(toys):
    r = run(tiny("my_arcface"), loss=lambda k, d: losses.ArcFaceLoss(k, d, margin=28.6, scale=64))
    assert r["method"] == "my_arcface" and 0 <= r["precision_at_1"] <= 1
    assert r["nearest_anchor_accuracy"] is not None  # argmax of ArcFace's get_logits


def test_baseline_with_a_miner(toys):
    s = build(tiny("baseline:pml_contrastive"))
    assert type(s.trainer.mining_funcs["tuple_miner"]).__name__ == "MultiSimilarityMiner"
    assert "metric_loss_optimizer" not in s.optimizers
