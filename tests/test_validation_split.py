"""Validation folds carved from the training split (pml_anchors.app.data.validation) and the sealed test split."""

from __future__ import annotations

import json

import pytest
import torch
from training_toys import add_toys, tiny

from pml_anchors.app.config import TrainConfig
from pml_anchors.app.data import load_dataset
from pml_anchors.app.data.containers import TensorImageDataset, get_labels
from pml_anchors.app.data.pixels import AugmentedTensorDataset
from pml_anchors.app.data.validation import (
    HeldOutTestSplitError,
    SealedTestSplit,
    seal_test_split,
    validation_folds,
    validation_split,
)
from pml_anchors.app.session import build, load_config_dataset, run


@pytest.fixture(scope="module")
def digits_same():
    return load_dataset("digits", protocol="same_class", seed=0)


@pytest.fixture(scope="module")
def digits_open():
    return load_dataset("digits", protocol="open_set", seed=0)


def _image_keys(dataset) -> set[bytes]:
    """One key per item's pixels: which training items a split holds (digits has no exact duplicates per class)."""
    x, y = dataset.tensors()
    return {bytes(row.numpy().tobytes()) + bytes([int(c)]) for row, c in zip(x.flatten(1), y)}


@pytest.mark.parametrize("protocol", ["same_class", "open_set"])
def test_folds_partition_the_training_items(protocol):
    labels = torch.arange(12).repeat_interleave(7)
    parts = validation_folds(labels, 3, seed=1, protocol=protocol)
    joined = torch.sort(torch.cat(parts)).values
    assert torch.equal(joined, torch.arange(len(labels)))  # covering, and disjoint (no index twice)
    assert all(len(p) for p in parts)


def test_open_set_folds_are_class_disjoint_and_balanced():
    labels = torch.arange(10).repeat_interleave(5)
    parts = validation_folds(labels, 3, seed=0, protocol="open_set")
    class_sets = [set(labels[p].tolist()) for p in parts]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not class_sets[i] & class_sets[j]
    assert set().union(*class_sets) == set(range(10))
    assert sorted(len(s) for s in class_sets) == [3, 3, 4]
    for p, s in zip(parts, class_sets):  # every item of a fold's classes is in that fold
        assert len(p) == 5 * len(s)


def test_same_class_folds_are_stratified():
    labels = torch.tensor([0] * 10 + [1] * 6 + [2] * 3)
    parts = validation_folds(labels, 3, seed=4, protocol="same_class")
    for c, n in ((0, 10), (1, 6), (2, 3)):
        per_fold = sorted(int((labels[p] == c).sum()) for p in parts)
        assert per_fold[-1] - per_fold[0] <= 1 and sum(per_fold) == n


@pytest.mark.parametrize("protocol", ["same_class", "open_set"])
def test_folds_are_seeded(protocol):
    labels = torch.arange(10).repeat_interleave(9)
    a = validation_folds(labels, 2, seed=3, protocol=protocol)
    b = validation_folds(labels, 2, seed=3, protocol=protocol)
    c = validation_folds(labels, 2, seed=4, protocol=protocol)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_too_few_classes_or_items_is_a_clear_error():
    with pytest.raises(ValueError, match=r"3 training classes cannot make 2 class-disjoint folds"):
        validation_folds(torch.arange(3).repeat_interleave(4), 2, 0, "open_set")
    with pytest.raises(ValueError, match=r"class 1 has 2 training items, fewer than folds=3"):
        validation_folds(torch.tensor([0, 0, 0, 1, 1]), 3, 0, "same_class")
    with pytest.raises(ValueError, match="folds"):
        validation_folds(torch.tensor([0, 0, 1, 1]), 1, 0, "same_class")
    with pytest.raises(ValueError, match="protocol"):
        validation_folds(torch.tensor([0, 0, 1, 1]), 2, 0, "closed")


def test_open_set_validation_split_relabels_and_reads_only_training(digits_open):
    sealed = seal_test_split(digits_open)
    n_train = len(digits_open.train)
    seen = set()
    for fold in range(2):
        v = validation_split(sealed, fold, 2, seed=0)
        train_labels, val_labels = get_labels(v.train), get_labels(v.test)
        assert set(train_labels.tolist()) == set(range(v.num_classes))  # train labels 0..K-1
        assert min(val_labels.tolist()) >= v.num_classes  # validation classes disjoint, after them
        record = v.info["validation"]
        assert record["fold"] == fold and record["folds"] == 2 and record["seed"] == 0
        assert record["train_size"] + record["validation_size"] == n_train
        assert not set(record["train_classes"]) & set(record["validation_classes"])
        assert set(record["train_classes"]) | set(record["validation_classes"]) == set(digits_open.train_class_names)
        assert len(v.class_names) == v.num_classes + len(record["validation_classes"])
        seen |= set(record["validation_classes"])
        assert _image_keys(v.train).isdisjoint(_image_keys(v.test))
    assert seen == set(digits_open.train_class_names)  # the folds together validate every training class
    assert sealed.test.reads == 0


def test_same_class_validation_split_keeps_labels(digits_same):
    v0, v1 = (validation_split(digits_same, f, 2, seed=5) for f in range(2))
    assert v0.num_classes == digits_same.num_classes == 10
    assert set(get_labels(v0.test).tolist()) == set(range(10))
    assert len(v0.test) + len(v1.test) == len(digits_same.train)
    assert _image_keys(v0.test).isdisjoint(_image_keys(v1.test))
    assert _image_keys(v0.test) | _image_keys(v1.test) == _image_keys(digits_same.train)
    assert _image_keys(v0.train) == _image_keys(v1.test)  # two folds: train of fold 0 is fold 1
    with pytest.raises(ValueError, match=r"validation fold must be in 0\.\.1"):
        validation_split(digits_same, 2, 2)


def test_validation_items_are_not_augmented():
    images = torch.randint(0, 255, (12, 1, 4, 4), dtype=torch.uint8)
    flip = AugmentedTensorDataset(images, torch.arange(2).repeat(6), augment=lambda x: 255 - x)
    from pml_anchors.app.data.containers import DatasetSplits

    splits = DatasetSplits(flip, flip, 2, (1, 4, 4), "toy")
    v = validation_split(splits, 0, 2)
    assert isinstance(v.train, AugmentedTensorDataset)
    assert type(v.test) is TensorImageDataset  # evaluated as they are, not augmented


def test_sealed_test_split_refuses_every_read(digits_same):
    sealed = SealedTestSplit(digits_same.test)
    for read in (
        len,
        lambda d: d[0],
        lambda d: d.labels,
        lambda d: d.targets,
        get_labels,
        lambda d: d.__getitems__([0]),
    ):
        with pytest.raises(HeldOutTestSplitError, match="the test split is sealed"):
            read(sealed)
    assert sealed.reads == 6
    assert sealed.unseal() is digits_same.test


def test_a_session_evaluating_a_sealed_test_split_fails(pml_registry, digits_same):
    """The seal is real: evaluation after training would trip it (tune never gets there, test_tune.py)."""
    add_toys(pml_registry)
    splits = seal_test_split(load_config_dataset(tiny()))
    with pytest.raises(HeldOutTestSplitError):
        run(tiny(), splits=splits)


def test_config_validation_trains_on_a_fold_and_records_it(pml_registry, tmp_path):
    add_toys(pml_registry)
    config = tiny(validation={"fold": 1, "folds": 2, "seed": 3}, output=str(tmp_path / "run"))
    results = run(config)
    record = json.loads((tmp_path / "run" / "results.json").read_text())["validation"]
    assert record == results["validation"]
    assert record["fold"] == 1 and record["folds"] == 2 and record["seed"] == 3
    assert record["train_size"] + record["validation_size"] == 64  # tiny(): limit=64 training items
    assert results["test_size"] == record["validation_size"]
    assert results["config"]["validation"] == {"fold": 1, "folds": 2, "seed": 3}
    session = build(config)
    assert session.splits.info["validation"] == record


@pytest.mark.parametrize(
    "bad",
    [{"fold": 2, "folds": 2}, {"fold": 0}, {"fold": 0, "folds": 1}, {"fold": 0, "folds": 2, "extra": 1}, [0, 2]],
)
def test_config_rejects_a_bad_validation_choice(bad):
    with pytest.raises((ValueError, TypeError), match="validation"):
        TrainConfig(method="x", validation=bad)


@pytest.mark.parametrize("protocol", ["same_class", "open_set"])
def test_validation_images_go_through_the_test_transform(tmp_path, protocol):
    """Image files: the training split's random crops and flips are not applied to the validation fold, which is
    evaluated through the test split's transform (resize + centre crop), as the test split itself is."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for c in "abcdefgh":
        (tmp_path / c).mkdir()
        for i in range(4):
            pixels = torch.randint(0, 256, (20, 24, 3), generator=gen, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / c / f"{i}.png")
    splits = load_dataset(
        "imagefolder", data_root=tmp_path, protocol=protocol, image_size=12, resize_size=16, augment=True
    )
    v = validation_split(splits, 0, 2)
    x1, _ = v.test[0]
    x2, _ = v.test[0]
    assert torch.equal(x1, x2)  # no random crop or flip
    assert _images(v.test).transform is _images(splits.test).transform  # the test split's resize + centre crop
    augmented = [v.train[0][0] for _ in range(8)]
    assert any(not torch.equal(augmented[0], a) for a in augmented[1:])  # training still augments
    assert _images(v.train).transform is _images(splits.train).transform is not _images(v.test).transform


def _images(dataset):
    """The ImageFolder under a split's relabelling wrappers."""
    while hasattr(dataset, "base"):
        dataset = dataset.base
    return dataset


def test_a_pml_datasets_validation_fold_goes_through_its_test_transform(tmp_path):
    from dml_layouts import write_cub

    write_cub(tmp_path)
    splits = load_dataset("cub", data_root=tmp_path, protocol="open_set", image_size=8, resize_size=10, augment=True)
    v = validation_split(splits, 1, 2)
    assert torch.equal(v.test[3][0], v.test[3][0])
    assert _images(v.test).transform is _images(splits.test).transform is not _images(v.train).transform
    assert type(_images(v.test)).__name__ == "CUB"  # PML's class, its images not read again (a shallow copy)
