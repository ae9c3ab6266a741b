"""Best-epoch selection and early stopping on a validation fold (pml_anchors.app.selection, TrainConfig.select_epoch):
the epoch is chosen on validation only and the test split is read once, after training, with the chosen weights."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import Dataset
from training_toys import add_toys, tiny

import pml_anchors
from pml_anchors.app.bench import bench
from pml_anchors.app.config import TrainConfig
from pml_anchors.app.data.containers import get_labels
from pml_anchors.app.data.validation import HeldOutTestSplitError
from pml_anchors.app.reload import evaluate_checkpoint, session_from_checkpoint
from pml_anchors.app.selection import EpochSelection, check_select_epoch, selection_splits
from pml_anchors.app.session import load_config_dataset, run
from pml_anchors.app.tune import tune
from pml_anchors.cli import main


class ReadLog(Dataset):
    """A test split that logs, in ``log``, every read of its items or labels (to order them against the epochs)."""

    def __init__(self, dataset: Dataset, log: list[str]):
        self.dataset, self.log = dataset, log

    def __len__(self) -> int:
        self.log.append("test")
        return len(self.dataset)

    def __getitem__(self, index):
        self.log.append("test")
        return self.dataset[index]

    @property
    def labels(self) -> torch.Tensor:
        self.log.append("test")
        return get_labels(self.dataset)


def test_the_test_split_is_read_only_after_the_last_epoch(pml_registry):
    add_toys(pml_registry)
    log: list[str] = []
    config = tiny(epochs=3, select_epoch={"folds": 2})
    splits = load_config_dataset(config)
    splits = type(splits)(**{**splits.__dict__, "test": ReadLog(splits.test, log)})

    def end_of_epoch(trainer) -> bool:
        log.append(f"epoch {trainer.epoch}")
        return True

    results = run(config, splits=splits, end_of_epoch_hook=end_of_epoch)
    assert [e for e in log if e != "test"] == ["epoch 1", "epoch 2", "epoch 3"]
    assert "test" in log and log.index("test") > log.index("epoch 3")  # only after training
    selection = results["selection"]
    assert selection["test_reads_while_training"] == 0
    assert [h["evaluated_on"] for h in results["history"]] == ["validation"] * 3
    assert [p[0] for p in selection["validation_curve"]] == [1, 2, 3]
    values = [h["mean_average_precision_at_r"] for h in results["history"]]
    assert selection["best_value"] == max(values)
    assert selection["best_epoch"] == 1 + values.index(max(values))
    assert results["test_size"] == len(splits.test.dataset)
    assert results["validation"]["fold"] == 0 and results["validation"]["folds"] == 2
    assert results["train_size"] == results["validation"]["train_size"] < 64  # the other fold only


def test_the_test_metrics_are_the_selected_epochs(pml_registry, tmp_path):
    """The run's test metrics equal an evaluation of its checkpoint, which holds the selected epoch's weights."""
    add_toys(pml_registry)
    config = tiny(epochs=3, select_epoch={"folds": 2, "metric": "precision_at_1"}, output=str(tmp_path / "run"))
    results = run(config)
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written["selection"] == json.loads(json.dumps(results["selection"]))
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    assert session_from_checkpoint(checkpoint).config.select_epoch is None  # evaluated on the test split
    again = evaluate_checkpoint(checkpoint)
    for key in ("precision_at_1", "mean_average_precision_at_r"):
        assert again[key] == pytest.approx(results[key], abs=1e-9)
    best = results["selection"]["best_epoch"]
    validation_p1 = [h["precision_at_1"] for h in results["history"]]
    assert results["selection"]["best_value"] == validation_p1[best - 1] == max(validation_p1)


class _Modules:
    def __init__(self):
        self.trunk, self.embedder, self.loss = (torch.nn.Linear(2, 2) for _ in range(3))


def _selection(patience, metric="m"):
    splits = load_config_dataset(TrainConfig(method="x", limit=64, test_limit=40))
    validation, held_out = selection_splits(splits, check_select_epoch({"folds": 2}, 0))
    return EpochSelection(metric=metric, patience=patience, held_out=held_out), validation, splits


def test_early_stopping_keeps_the_best_weights():
    (selection, _, _), modules, kept = _selection(patience=2), _Modules(), {}
    scores = [0.5, 0.7, 0.6, 0.69, 0.9]
    for epoch, value in enumerate(scores, start=1):
        with torch.no_grad():
            modules.trunk.weight.fill_(epoch)
        kept[epoch] = modules.trunk.weight.clone()
        going_on = selection.observe(modules, epoch, {"m": value})
        if not going_on:
            break
    assert epoch == 4 and selection.stopped_at == 4  # 2 epochs without beating 0.7
    assert selection.best_epoch == 2 and selection.best_value == 0.7
    selection.restore_best(modules)
    assert torch.equal(modules.trunk.weight, kept[2])
    restored = _selection(patience=2)[0]
    restored.load_state_dict(selection.state_dict())
    assert restored.state_dict()["curve"] == [[1, 0.5], [2, 0.7], [3, 0.6], [4, 0.69]]


def test_a_tie_keeps_the_earlier_epoch():
    selection = _selection(patience=None)[0]
    for epoch, value in enumerate([0.4, 0.8, 0.8], start=1):
        assert selection.observe(_Modules(), epoch, {"m": value})
    assert selection.best_epoch == 2 and not selection.stopped


def test_the_sealed_test_split_refuses_reads_during_selection():
    selection, validation, splits = _selection(patience=None)
    with pytest.raises(HeldOutTestSplitError, match="epoch is being selected"):
        len(selection.held_out)
    assert validation.test is not splits.test and len(validation.test) + len(validation.train) == 64
    assert selection.final_splits(validation).test is splits.test  # unsealed for the one final evaluation


def test_a_metric_the_evaluation_does_not_report_is_a_clear_error():
    selection = _selection(patience=None, metric="recall_at_3")[0]
    with pytest.raises(ValueError, match="select_epoch metric 'recall_at_3' is None.*precision_at_1"):
        selection.observe(_Modules(), 1, {"precision_at_1": 0.5, "epoch": 1})


def test_a_resumed_run_selects_as_an_uninterrupted_one(pml_registry, tmp_path):
    add_toys(pml_registry)
    choice = {"folds": 2, "patience": 2}
    whole = run(tiny(epochs=4, select_epoch=choice, output=str(tmp_path / "whole")))
    run(tiny(epochs=2, select_epoch=choice, output=str(tmp_path / "part")))
    resumed = run(
        tiny(epochs=4, select_epoch=choice, output=str(tmp_path / "part")), resume=tmp_path / "part" / "checkpoint.pt"
    )
    for key in ("best_epoch", "best_value", "validation_curve", "stopped_at_epoch"):
        assert resumed["selection"][key] == whole["selection"][key]
    assert resumed["mean_average_precision_at_r"] == pytest.approx(whole["mean_average_precision_at_r"], abs=1e-12)


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ({"fold": 2, "folds": 2}, ValueError),
        ({"folds": 1}, ValueError),
        ({"patience": 0}, ValueError),
        ({"metric": 3}, TypeError),
        ({"epochs": 3}, ValueError),
        ([0, 4], ValueError),
    ],
)
def test_bad_select_epoch_is_refused(bad, error):
    with pytest.raises(error, match="select_epoch"):
        TrainConfig(method="x", select_epoch=bad)


def test_select_epoch_fills_its_defaults_and_excludes_validation():
    config = TrainConfig(method="x", seed=5, select_epoch={})
    assert config.select_epoch == {
        "fold": 0,
        "folds": 4,
        "seed": 5,
        "metric": "mean_average_precision_at_r",
        "patience": None,
    }
    with pytest.raises(ValueError, match="give one"):
        TrainConfig(method="x", select_epoch={}, validation={"fold": 0, "folds": 2})
    with pytest.raises(TypeError, match="select_epoch must be True or False"):  # tune's folds are its own
        tune("c_ncm", trials=1, folds=2, output="unused", select_epoch={})


def test_cli_early_stopping_says_what_it_selected(tmp_path, capsys):
    code = main(
        [
            "train",
            "--method",
            "c_ncm",
            "--epochs",
            "2",
            "--limit",
            "64",
            "--test-limit",
            "40",
            "--early-stopping",
            "1",
            "--select-folds",
            "2",
            "--output",
            str(tmp_path / "run"),
            "--no-progress",
            "--threads",
            "1",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "tested once with epoch" in out and "selected on validation fold 0 of 2" in out
    config = json.loads((tmp_path / "run" / "results.json").read_text())["config"]
    assert config["select_epoch"] == {
        "fold": 0,
        "folds": 2,
        "seed": 0,
        "metric": "mean_average_precision_at_r",
        "patience": 1,
    }


def test_bench_selects_every_runs_epoch_and_refuses_impossible_folds_up_front(tmp_path):
    with pytest.raises(ValueError, match="5 training classes cannot make 4 class-disjoint folds"):
        bench(methods="c_ncm", baselines="none", protocol="open_set", select_epoch={}, output=tmp_path / "no")
    assert not (tmp_path / "no").exists()
    summary = bench(
        methods="c_ncm",
        baselines="pml_normalized_softmax",
        epochs=2,
        limit=64,
        test_limit=40,
        select_epoch={"folds": 2},
        plots=False,
        output=tmp_path / "b",
    )
    assert [r["selection"]["epochs_trained"] for r in summary["runs"]] == [2, 2]
    assert all(r["test_size"] == 40 for r in summary["runs"])  # the test split, not the fold
    assert "the epoch selected on validation fold 0 of 2" in (tmp_path / "b" / "results.md").read_text()


def test_the_epoch_lines_say_the_metric_is_the_validation_folds():
    from pml_anchors.app.progress import epoch_line

    entry = {"epoch": 2, "loss": 0.5, "seconds": 1.0, "precision_at_1": 0.9}
    assert epoch_line(entry, 4) == "epoch 2/4: loss 0.5000, 1.0 s, P@1 0.9000"
    assert epoch_line({**entry, "evaluated_on": "validation"}, 4).endswith("1.0 s, validation P@1 0.9000")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_nproc_2_selects_the_epoch_of_one_process(tmp_path, capsys):
    """``--nproc 2 --select-epoch``: both processes train on the other folds (the global batches of one process),
    rank 0 evaluates the validation fold every epoch, selects, stops both processes early and tests once; the same
    curve, epoch and stop as one process (lenetpp: no BatchNorm, so the two runs differ only by DDP's rounding)."""
    argv = ["train", "--method", "c_ncm", "--backbone", "lenetpp", "--epochs", "6", "--limit", "128", "--lr", "0.01"]
    argv += ["--test-limit", "60", "--batch-size", "32", "--select-folds", "2", "--device", "cpu", "--threads", "1"]
    argv += ["--early-stopping", "1", "--no-progress"]
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        assert main([*argv, *extra, "--output", str(tmp_path / name)]) == 0
    one, two = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("one", "two"))
    assert two["world_size"] == 2 and two["selection"]["test_reads_while_training"] == 0
    assert two["selection"]["best_epoch"] == one["selection"]["best_epoch"]
    assert two["selection"]["stopped_at_epoch"] == one["selection"]["stopped_at_epoch"] == two["epochs"] < 6
    curves = [[value for _, value in run["selection"]["validation_curve"]] for run in (one, two)]
    assert len(curves[1]) == two["epochs"] and curves[1] == pytest.approx(curves[0], abs=1e-4)
    assert two["mean_average_precision_at_r"] == pytest.approx(one["mean_average_precision_at_r"], abs=1e-4)
    assert two["train_size"] == one["train_size"] < 128  # the other fold, on both processes
    assert all(entry["evaluated_on"] == "validation" for entry in two["history"])
    evaluated = evaluate_checkpoint(tmp_path / "two" / "checkpoint.pt")  # the selected epoch's weights
    assert evaluated["mean_average_precision_at_r"] == pytest.approx(two["mean_average_precision_at_r"], abs=1e-6)
    best = two["selection"]["best_epoch"]
    assert (evaluated["epoch"], evaluated["epochs_trained"]) == (best, two["epochs"])  # what eval reports
    assert pml_anchors.load_trained(tmp_path / "two" / "checkpoint.pt").epoch == best
    capsys.readouterr()
    resumed = ["train", "--resume", str(tmp_path / "one" / "checkpoint.pt"), "--epochs", "8", "--no-output"]
    assert main([*resumed, "--no-progress"]) == 0  # stopped early: nothing more to train, and it says so
    assert f"this run stopped early at epoch {one['epochs']}" in capsys.readouterr().err
    assert main([*resumed, "--early-stopping", "5"]) == 2  # options given on resume add to the run's selection
    err = capsys.readouterr().err
    assert "did not improve for 1 epoch(s)" in err and "'patience': 1} (checkpoint)" in err and "'folds': 4" not in err
