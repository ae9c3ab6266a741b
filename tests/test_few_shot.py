"""Few-shot training sets: ``train_per_class`` (``--train-per-class N``), N training items of every class, seeded and
nested, from :func:`per_class_subset` to ``load_dataset``, ``TrainConfig``, ``train`` (results.json, checkpoint,
resume) and ``bench``."""

import json

import pytest
import torch
from training_toys import single_thread  # noqa: F401 - autouse fixture

import pml_anchors
from pml_anchors.app.checkpoints import load_checkpoint
from pml_anchors.app.config import TrainConfig, field_default
from pml_anchors.app.data import load_dataset
from pml_anchors.app.data.splits import per_class_subset
from pml_anchors.cli import main
from pml_anchors.plugin.settings import ENV_DISABLE, ENV_LOAD, ENV_PLUGINS_DIR, ENV_STRICT

COUNTS = [5, 9, 3, 7]
NAMES = ("c0", "c1", "c2", "c3")


@pytest.fixture
def labels():
    """Labels of 4 classes with 5, 9, 3 and 7 items, shuffled."""
    ordered = torch.arange(len(COUNTS)).repeat_interleave(torch.tensor(COUNTS))
    return ordered[torch.randperm(len(ordered), generator=torch.Generator().manual_seed(5))]


@pytest.fixture
def ncm(monkeypatch):
    """The installed pml-anchors-ncm plugin only (c_ncm), nothing from a plugins folder."""
    monkeypatch.setenv(ENV_LOAD, "pml-anchors-ncm")
    monkeypatch.setenv(ENV_PLUGINS_DIR, "")
    monkeypatch.delenv(ENV_DISABLE, raising=False)
    monkeypatch.delenv(ENV_STRICT, raising=False)
    pml_anchors.reset()
    yield
    pml_anchors.reset()


def test_per_class_subset_keeps_n_of_every_class_seeded_and_nested(labels):
    previous: set[int] = set()
    for n in (1, 2, 3):
        keep = per_class_subset(labels, n, seed=0)
        assert torch.bincount(labels[keep]).tolist() == [n] * len(COUNTS)
        assert torch.equal(keep, torch.sort(torch.unique(keep)).values)  # sorted positions, no repeats
        assert torch.equal(keep, per_class_subset(labels, n, seed=0))  # the same seed: the same items
        assert previous < set(keep.tolist())  # the (n-1)-shot items are among the n-shot ones
        previous = set(keep.tolist())
    assert set(per_class_subset(labels, 3, seed=0).tolist()) >= set(torch.nonzero(labels == 2).flatten().tolist())
    draws = {tuple(per_class_subset(labels, 2, seed=s).tolist()) for s in range(5)}
    assert len(draws) == 5  # every seed draws another 2-shot set


def test_per_class_subset_names_a_class_that_is_too_small(labels):
    with pytest.raises(ValueError) as caught:
        per_class_subset(labels, 4, seed=0, class_names=NAMES, where="dataset 'toy'")
    assert str(caught.value) == (
        "train_per_class=4: class 'c2' (label 2) of dataset 'toy' has only 3 items; choose train_per_class <= 3"
    )
    with pytest.raises(ValueError, match=r"class 'c2' \(label 2\) .* has only 3 items; 3 of the 4 classes have fewer"):
        per_class_subset(labels, 8, seed=0, class_names=NAMES)
    with pytest.raises(ValueError, match=r"class '2' of the training set has only 3 items"):
        per_class_subset(labels, 4, seed=0)  # no names: the label
    with pytest.raises(ValueError, match="train_per_class must be a positive int, got 0"):
        per_class_subset(labels, 0, seed=0)
    with pytest.raises(TypeError, match="train_per_class must be a positive int, got float 1.5"):
        per_class_subset(labels, 1.5, seed=0)


def test_load_dataset_few_shot_on_digits():
    full = load_dataset("digits", seed=0)
    few = load_dataset("digits", seed=0, train_per_class=4)
    assert torch.bincount(few.train_labels).tolist() == [4] * 10 and few.num_classes == 10
    keep = per_class_subset(full.train_labels, 4, 0, full.class_names)
    assert torch.equal(few.train.images, full.train.images[keep])  # the items of the full training split
    assert torch.equal(few.test.images, full.test.images) and torch.equal(few.test_labels, full.test_labels)
    assert torch.equal(load_dataset("digits", seed=0, train_per_class=4).train.images, few.train.images)
    assert not torch.equal(load_dataset("digits", seed=1, train_per_class=4).train.images, few.train.images)

    open_set = load_dataset("digits", protocol="open_set", train_per_class=3, test_limit=50)
    assert torch.bincount(open_set.train_labels).tolist() == [3] * 5  # the train classes (digits 0-4) only
    assert len(open_set.test) == 50 and set(open_set.test_labels.tolist()) == {5, 6, 7, 8, 9}
    with pytest.raises(ValueError, match=r"train_per_class=200: class '8' of dataset 'digits' \(protocol 'same_class'"):
        load_dataset("digits", train_per_class=200)


def test_limit_and_train_per_class_are_not_given_together(ncm, capsys):
    message = "train_per_class=2 and limit=30 both choose the training items: give one"
    with pytest.raises(ValueError, match=message):
        load_dataset("digits", limit=30, train_per_class=2)
    with pytest.raises(ValueError, match=message):
        TrainConfig(method="c_ncm", limit=30, train_per_class=2)
    argv = ["train", "--method", "c_ncm", "--limit", "30", "--train-per-class", "2", "--no-output"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_train_config_field():
    assert field_default("train_per_class") is None  # what an older checkpoint's config means
    config = TrainConfig(method="c_ncm", train_per_class=2, test_limit=100)
    assert TrainConfig.from_dict(config.to_dict()).train_per_class == 2
    with pytest.raises(ValueError, match="train_per_class must be None or a positive int, got 0"):
        TrainConfig(method="c_ncm", train_per_class=0)
    with pytest.raises(TypeError, match="train_per_class must be None or a positive int, got str '2'"):
        TrainConfig(method="c_ncm", train_per_class="2")


def test_cli_train_few_shot_records_and_resumes_it(ncm, tmp_path, capsys):
    argv = ["train", "--method", "c_ncm", "--dataset", "digits", "--train-per-class", "2", "--epochs", "1"]
    assert main([*argv, "--no-output"]) == 0
    assert "c_ncm on digits [same_class], 1 epoch" in capsys.readouterr().out

    out = tmp_path / "run"
    assert main([*argv, "--threads", "1", "--no-progress", "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["train_per_class"] == 2 and results["train_size"] == 20 and results["test_size"] == 450
    assert results["config"]["train_per_class"] == 2 and results["dataset_plugin"] is None
    assert load_checkpoint(out / "checkpoint.pt")["config"]["train_per_class"] == 2

    resume = ["train", "--resume", str(out / "checkpoint.pt"), "--no-progress"]
    assert main([*resume, "--train-per-class", "3", "--epochs", "2"]) == 2
    assert "cannot resume: the config differs from the checkpoint's: train_per_class=2 (checkpoint) vs 3" in (
        capsys.readouterr().err
    )
    assert main([*resume, "--epochs", "2"]) == 0
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["epochs"] == 2 and resumed["train_per_class"] == 2 and resumed["train_size"] == 20


def test_bench_few_shot(ncm, tmp_path):
    out = tmp_path / "bench"
    argv = ["bench", "--methods", "c_ncm", "--baselines", "none", "--train-per-class", "2", "--epochs", "1"]
    assert main([*argv, "--no-plots", "--threads", "1", "--no-progress", "--output", str(out)]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["settings"]["train_per_class"] == 2
    (run,) = summary["runs"]
    assert run["method"] == "c_ncm" and run["train_per_class"] == 2 and run["train_size"] == 20
    assert "few-shot: 2 training items per class" in (out / "results.md").read_text()
