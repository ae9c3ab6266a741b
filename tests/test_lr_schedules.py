"""pml_anchors.app.lr_schedules: the papers' step and plateau schedules under PML's lr_schedulers keys."""

import math

import pytest
import torch
from training_toys import (
    single_thread,  # noqa: F401 - autouse fixture
    tiny,
)

from pml_anchors.app.checkpoints import load_checkpoint
from pml_anchors.app.config import TrainConfig
from pml_anchors.app.session import build, train
from pml_anchors.cli import main


def _lrs(session):
    """Every optimizer's first-group lr, by optimizer name."""
    return {k: opt.param_groups[0]["lr"] for k, opt in session.optimizers.items()}


def _reference_lrs(make, steps):
    """lrs of a plain torch scheduler ``make(optimizer)`` on a one-parameter SGD at lr 1, after each of ``steps``
    (``None``: ``step()``; a number: ``step(number)``)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler, lrs = make(opt), []
    for value in steps:
        opt.step()  # no gradient: changes nothing, keeps torch's step-order check quiet
        scheduler.step() if value is None else scheduler.step(value)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def _states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(lr_schedule="linear"), ValueError, "unknown lr_schedule 'linear'; choose one of constant, cosine, step"),
        (dict(lr_schedule="step"), ValueError, "lr_schedule='step' needs lr_milestones"),
        (dict(lr_schedule="step", lr_milestones=[2, 2]), ValueError, "increasing epochs >= 1, got [2, 2]"),
        (dict(lr_schedule="step", lr_milestones=[0]), ValueError, "increasing epochs >= 1"),
        (dict(lr_schedule="step", lr_milestones=[4], epochs=4), ValueError, "must be < epochs=4"),
        (dict(lr_schedule="step", lr_milestones=[1.5]), TypeError, "whole epochs (ints)"),
        (dict(lr_schedule="step", lr_milestones="2"), TypeError, "a list of epochs"),
        (dict(lr_schedule="cosine", lr_milestones=[2]), ValueError, "only apply to lr_schedule='step', not 'cosine'"),
        (dict(lr_gamma=0.5), ValueError, "lr_gamma only applies to lr_schedule 'step' or 'plateau', not 'constant'"),
        (
            dict(lr_schedule="plateau", lr_gamma=1.0),
            ValueError,
            "lr_gamma must be a finite number > 0 and < 1, got 1.0",
        ),
        (dict(lr_schedule="step", lr_milestones=[2], lr_patience=3), ValueError, "lr_patience only applies"),
        (
            dict(lr_schedule="plateau", lr_patience=-1),
            ValueError,
            "lr_patience (epochs without improvement) must be an int >= 0, got -1",
        ),
    ],
)
def test_bad_schedule_settings_are_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        TrainConfig(method="toy_fixed", **{"epochs": 5, **kwargs})


def test_step_schedule_matches_torch_multisteplr_for_every_optimizer(toys):
    epochs, milestones, gamma = 5, [1, 3], 0.5
    seen = []
    s = build(
        tiny("toy_learnable", epochs=epochs, lr=1e-2, lr_schedule="step", lr_milestones=milestones, lr_gamma=gamma),
        end_of_epoch_hook=lambda t: seen.append(_lrs(s)) or True,
    )
    assert set(s.trainer.lr_schedulers) == {
        "trunk_scheduler_by_epoch",
        "embedder_scheduler_by_epoch",
        "metric_loss_scheduler_by_epoch",
    }
    train(s)
    ref = _reference_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones, gamma), [None] * epochs)
    assert ref[:4] == [0.5, 0.5, 0.25, 0.25]  # PML steps after each epoch: milestone 1 lowers epoch 2's lr
    for name, mult in (("trunk_optimizer", 1.0), ("embedder_optimizer", 1.0), ("metric_loss_optimizer", 10.0)):
        assert [lrs[name] for lrs in seen] == pytest.approx([1e-2 * mult * f for f in ref]), name
    assert [h["lr"] for h in s.history] == pytest.approx([1e-2 * f for f in ref])


def test_step_schedule_resumes_exactly_and_follows_the_resumed_config(toys, tmp_path):
    config = dict(epochs=3, lr=1e-2, lr_schedule="step", lr_milestones=[1], lr_gamma=0.1)
    whole = build(tiny("toy_learnable", **config))
    train(whole)
    train(build(tiny("toy_learnable", **config, hook_kwargs={"stop_after": 1}, output=str(tmp_path))))
    resumed = build(tiny("toy_learnable", **config), resume=tmp_path / "checkpoint.pt")
    assert _lrs(resumed)["trunk_optimizer"] == pytest.approx(1e-3)  # the milestone has passed
    train(resumed)
    for name in ("trunk", "embedder", "loss"):
        assert _states_equal(getattr(whole, name).state_dict(), getattr(resumed, name).state_dict()), name

    longer = build(
        tiny("toy_learnable", **{**config, "epochs": 4, "lr_milestones": [1, 2]}), resume=tmp_path / "checkpoint.pt"
    )
    train(longer)
    assert [h["lr"] for h in longer.history] == pytest.approx([1e-3, 1e-4, 1e-4, 1e-4])


def test_plateau_schedule_steps_on_the_epoch_training_loss_like_torch(toys):
    # lr 1e-7: the loss cannot improve by the 1e-4 relative threshold, so every bad epoch after the patience
    # lowers the lr, as torch's ReduceLROnPlateau fed the same losses does
    epochs, gamma, patience = 5, 0.5, 1
    s = build(
        tiny("toy_learnable", epochs=epochs, lr=1e-7, lr_schedule="plateau", lr_gamma=gamma, lr_patience=patience)
    )
    assert set(s.trainer.lr_schedulers) == {
        "trunk_scheduler_by_plateau",
        "embedder_scheduler_by_plateau",
        "metric_loss_scheduler_by_plateau",
    }
    train(s)
    losses = [h["loss"] for h in s.history]
    ref = _reference_lrs(
        lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=gamma, patience=patience), losses
    )
    assert [h["lr"] for h in s.history] == pytest.approx([1e-7 * f for f in ref])
    assert ref[-1] < 1.0  # the schedule did lower the lr
    assert _lrs(s)["metric_loss_optimizer"] == pytest.approx(10 * _lrs(s)["trunk_optimizer"])  # multiplier kept


def test_plateau_schedule_resumes_its_counters_and_takes_patience_from_the_config(toys, tmp_path):
    config = dict(epochs=4, lr=1e-7, lr_schedule="plateau", lr_gamma=0.5, lr_patience=1)
    whole = build(tiny("toy_learnable", **config))
    train(whole)
    train(build(tiny("toy_learnable", **config, hook_kwargs={"stop_after": 2}, output=str(tmp_path))))
    saved = load_checkpoint(tmp_path / "checkpoint.pt")["lr_schedulers"]["trunk_scheduler_by_plateau"]
    resumed = build(tiny("toy_learnable", **config), resume=tmp_path / "checkpoint.pt")
    state = resumed.trainer.lr_schedulers["trunk_scheduler_by_plateau"].state_dict()
    assert (state["best"], state["num_bad_epochs"]) == (saved["best"], saved["num_bad_epochs"])
    train(resumed)
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in whole.history]
    for name in ("trunk", "embedder", "loss"):
        assert _states_equal(getattr(whole, name).state_dict(), getattr(resumed, name).state_dict()), name

    patient = build(tiny("toy_learnable", **{**config, "lr_patience": 7}), resume=tmp_path / "checkpoint.pt")
    assert patient.trainer.lr_schedulers["trunk_scheduler_by_plateau"].patience == 7


def test_resume_rejects_another_schedule_and_reads_old_checkpoints_as_constant(toys, tmp_path):
    train(build(tiny("toy_learnable", epochs=2, lr_schedule="cosine", output=str(tmp_path))))
    with pytest.raises(ValueError, match="lr_schedule='cosine' \\(checkpoint\\) vs 'constant'"):
        build(tiny("toy_learnable", epochs=3), resume=tmp_path / "checkpoint.pt")

    old = load_checkpoint(tmp_path / "checkpoint.pt")
    del old["config"]["lr_schedule"]  # written before the field existed: it was constant then
    assert build(tiny("toy_learnable", epochs=3), resume=old).start_epoch == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr-schedule", "step"], "lr_schedule='step' needs lr_milestones"),
        (["--lr-schedule", "cosine", "--lr-patience", "2"], "lr_patience only applies"),
    ],
)
def test_cli_schedule_errors_exit_2_with_the_message(toys, capsys, argv, message):
    assert main(["train", "--method", "toy_fixed", "--epochs", "3", *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_milestones_must_be_whole_epochs(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--method", "toy_fixed", "--lr-schedule", "step", "--lr-milestones", "1,x"])
    assert exc.value.code == 2
    assert "expected comma-separated whole epochs such as 10,20, got '1,x'" in capsys.readouterr().err


def test_cli_step_schedule_trains_with_the_papers_recipe_flags(toys, tmp_path, capsys):
    argv = ["train", "--method", "toy_fixed", "--epochs", "3", "--limit", "64", "--test-limit", "120"]
    argv += ["--batch-size", "32", "--device", "cpu", "--optimizer", "sgd", "--lr", "0.1", "--json"]
    argv += ["--lr-schedule", "step", "--lr-milestones", "1,2", "--lr-gamma", "0.5", "--output", str(tmp_path)]
    assert main(argv) == 0
    config = load_checkpoint(tmp_path / "checkpoint.pt")["config"]
    assert (config["lr_schedule"], config["lr_milestones"], config["lr_gamma"]) == ("step", [1, 2], 0.5)
    assert [h["lr"] for h in load_checkpoint(tmp_path / "checkpoint.pt")["history"]] == pytest.approx(
        [0.05, 0.025, 0.025]
    )


def test_cosine_resumed_with_more_epochs_is_stretched_over_the_new_total(toys, tmp_path):
    """What docs/cli.md says of ``--resume`` with a larger ``--epochs``: the cosine is recomputed over the new
    total, so a finished run's lr (0) rises again to ``lr * (1 + cos(pi * t / T_new)) / 2``."""
    train(build(tiny("toy_learnable", epochs=2, lr=1e-2, lr_schedule="cosine", output=str(tmp_path))))
    assert load_checkpoint(tmp_path / "checkpoint.pt")["history"][-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    resumed = build(tiny("toy_learnable", epochs=4, lr=1e-2, lr_schedule="cosine"), resume=tmp_path / "checkpoint.pt")
    train(resumed)

    def cosine(epochs_done, epochs):  # the lr after ``epochs_done`` epochs of 2 steps, over a run of ``epochs``
        return 1e-2 * 0.5 * (1 + math.cos(math.pi * epochs_done / epochs))

    # epochs 1-2 from the checkpoint (T = 4 steps); epochs 3-4 on T = 8: the lr rises from 0 back to
    # cosine(2, 4) = 5e-3 when epoch 3 starts and is cosine(3, 4) when it ends
    assert [h["lr"] for h in resumed.history] == pytest.approx([cosine(1, 2), 0.0, cosine(3, 4), 0.0], abs=1e-12)
    assert cosine(3, 4) > 0


def test_plateau_schedulers_stepped_by_another_hook_are_not_stepped_twice(toys):
    """PML's HookContainer steps every plateau key with a validation accuracy at the end of each epoch."""

    def hook_container_like(trainer):
        trainer.step_lr_plateau_schedulers(0.9)
        return True

    s = build(tiny("toy_learnable", epochs=2, lr_schedule="plateau"), end_of_epoch_hook=hook_container_like)
    with pytest.warns(RuntimeWarning, match="already stepped in epoch 1 by another end-of-epoch hook"):
        train(s)
    assert s.trainer.lr_schedulers["trunk_scheduler_by_plateau"].last_epoch == 2  # once per epoch
