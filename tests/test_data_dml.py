"""``cub``, ``cars196``, ``sop``, ``inaturalist2018`` through PML's dataset classes, on miniatures in each dataset's
official on-disk layout (tests/dml_layouts.py): the standard class split, same_class, class names, transforms,
layout errors, offline ``--download`` and the command line."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from dml_layouts import (
    INAT_CATEGORIES,
    INAT_TEST,
    INAT_TRAIN,
    SOP_TEST,
    SOP_TRAIN,
    WRITERS,
    write_cars196,
    write_cub,
    write_inaturalist2018,
    write_sop,
)
from pytorch_metric_learning import datasets as pml_datasets
from training_toys import single_thread  # noqa: F401 - autouse fixture

from pml_anchors.app.data import DATASETS, load_dataset
from pml_anchors.app.data.downloads import DatasetDownloadError
from pml_anchors.cli import main

NAMES = ("cub", "cars196", "sop", "inaturalist2018")


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    """The four miniatures, written once for the tests that only read them."""
    base = tmp_path_factory.mktemp("dml")
    for name, write in WRITERS.items():
        write(base / name)
    return {name: base / name for name in WRITERS}


@pytest.fixture
def offline(monkeypatch):
    """Every URL fails as on a machine without DNS (PML downloads with urllib); the URLs asked for are recorded."""
    asked: list[str] = []

    def refuse(request, *args, **kwargs):
        asked.append(getattr(request, "full_url", request))
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return asked


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ------------------------------------------------------------------------------------ the standard split


def test_the_four_are_registered():
    assert set(NAMES) <= set(DATASETS)


def test_cub_open_set_is_species_1_to_100_then_101_to_200(roots):
    s = load_dataset("cub", data_root=roots["cub"], protocol="open_set")
    assert s.num_classes == 100 and (len(s.train), len(s.test)) == (200, 200)
    assert torch.equal(s.train_labels, torch.arange(100).repeat_interleave(2))
    assert torch.equal(s.test_labels, torch.arange(100, 200).repeat_interleave(2))
    assert s.class_names == tuple(f"{c:03d}.Bird_{c}" for c in range(1, 201))  # the image folders
    assert s.train_class_names[-1] == "100.Bird_100" and s.test_class_names[0] == "101.Bird_101"
    # the same images PML's own class puts in each split, in its order
    assert len(pml_datasets.CUB(str(roots["cub"]), split="train")) == len(s.train)


def test_cars196_open_set_is_models_1_to_98_then_99_to_196_from_both_halves(roots):
    s = load_dataset("cars196", data_root=roots["cars196"], protocol="open_set")
    assert s.num_classes == 98 and (len(s.train), len(s.test)) == (196, 196)  # one image per class in each half
    assert set(s.train_labels.tolist()) == set(range(98)) and set(s.test_labels.tolist()) == set(range(98, 196))
    assert s.train_labels.bincount().tolist() == [2] * 98
    assert s.class_names[4] == "Ram C/V Cargo Van Minivan 2012"  # names.csv, not the folder (where / is -)
    assert s.class_names[98] == "Maker Model 99 Sedan 2012" and len(s.class_names) == 196
    labels = s.train_labels.tolist()
    x, y = s.train[labels.index(4)]  # read from car_data/car_data/train/Ram C-V Cargo Van Minivan 2012/
    assert y == 4 and x.shape == (3, 64, 64)


def test_sop_open_set_follows_the_ebay_files(roots):
    s = load_dataset("sop", data_root=roots["sop"], protocol="open_set")
    assert s.num_classes == len(SOP_TRAIN) == 4
    expected_train = [i for i, (_, _, _, n) in enumerate(SOP_TRAIN) for _ in range(n)]
    expected_test = [len(SOP_TRAIN) + i for i, (_, _, _, n) in enumerate(SOP_TEST) for _ in range(n)]
    assert s.train_labels.tolist() == expected_train and s.test_labels.tolist() == expected_test
    assert s.class_names == tuple(str(c) for c, *_ in SOP_TRAIN + SOP_TEST)  # product ids
    assert [s.test[i][1] for i in range(len(s.test))] == expected_test


def test_inaturalist2018_open_set_follows_the_smooth_ap_files(roots):
    s = load_dataset("inaturalist2018", data_root=roots["inaturalist2018"], protocol="open_set")
    assert s.num_classes == len(INAT_TRAIN) == 3
    assert s.class_names == tuple(str(c) for c in sorted(INAT_TRAIN) + sorted(INAT_TEST))  # category ids
    counts = [INAT_CATEGORIES[c][1] for c in sorted(INAT_TRAIN) + sorted(INAT_TEST)]
    assert s.train_labels.bincount().tolist() == counts[:3]
    assert s.test_labels.bincount()[3:].tolist() == counts[3:] and int(s.test_labels.min()) == 3


@pytest.mark.parametrize("name", NAMES)
def test_items_are_normalised_rgb_tensors_with_their_labels(roots, name):
    s = load_dataset(name, data_root=roots[name], protocol="open_set", image_size=16)
    assert s.input_shape == (3, 16, 16) and s.name == name and s.protocol == "open_set"
    x, y = s.train[0]  # CUB's first image is greyscale: converted to RGB
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == int(s.train_labels[0])
    loader = torch.utils.data.DataLoader(s.test, batch_size=4)
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 3, 16, 16) and yb.tolist() == s.test_labels[:4].tolist()
    assert s.info["source"].startswith("pytorch_metric_learning.datasets.")


# ------------------------------------------------------------------------------------ same_class


@pytest.mark.parametrize("name", ["cub", "cars196", "inaturalist2018"])
def test_same_class_is_a_seeded_per_class_split_of_all_images(roots, name):
    s = load_dataset(name, data_root=roots[name], seed=3)
    whole = len(getattr(pml_datasets, type_name(name))(str(roots[name]), split="train+test"))
    assert len(s.train) + len(s.test) == whole
    assert set(s.test_labels.tolist()) <= set(s.train_labels.tolist()) == set(range(s.num_classes))
    assert s.num_classes == len(s.class_names) and s.protocol == "same_class"
    again = load_dataset(name, data_root=roots[name], seed=3)
    assert torch.equal(again.train.indices, s.train.indices)


def type_name(name: str) -> str:
    return {"cub": "CUB", "cars196": "Cars196", "inaturalist2018": "INaturalist2018"}[name]


def test_same_class_test_fraction_and_seed(tmp_path):
    write_cub(tmp_path, per_class=4)
    half = load_dataset("cub", data_root=tmp_path, test_fraction=0.5)
    assert (len(half.train), len(half.test), half.num_classes) == (400, 400, 200)
    assert half.test_labels.bincount().tolist() == [2] * 200
    quarter = load_dataset("cub", data_root=tmp_path)  # default 0.25: round(1.0) = 1 test image a class
    assert len(quarter.test) == 200 and quarter.info["split"] == "stratified per class, test_fraction=0.25"
    other = load_dataset("cub", data_root=tmp_path, test_fraction=0.5, seed=1)
    assert not torch.equal(other.test.indices, half.test.indices)
    with pytest.raises(ValueError, match="test_fraction only applies to protocol='same_class'"):
        load_dataset("cub", data_root=tmp_path, protocol="open_set", test_fraction=0.5)


def test_sop_refuses_same_class_and_says_why(roots):
    with pytest.raises(ValueError, match=r"'sop' has no same_class protocol: .*5\.3.*Use protocol='open_set'"):
        load_dataset("sop", data_root=roots["sop"])
    with pytest.raises(TypeError, match="dataset 'sop'.*num_train_classes"):  # the standard split is fixed
        load_dataset("sop", data_root=roots["sop"], protocol="open_set", num_train_classes=2)


# ------------------------------------------------------------------------------------ transforms


def test_transforms_are_imagefolders_dml_ones_on_rgb(roots):
    from PIL import Image
    from torchvision.transforms import functional as TF

    s = load_dataset("cub", data_root=roots["cub"], protocol="open_set", image_size=16, resize_size=20, augment=True)
    assert (s.info["image_size"], s.info["resize_size"], s.info["augment"]) == (16, 20, True)
    norm = (s.info["mean"], s.info["std"])
    assert norm == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    first = sorted((roots["cub"] / "CUB_200_2011" / "images" / "101.Bird_101").glob("*.jpg"))[0]
    image = Image.open(first)
    expected = TF.normalize(TF.to_tensor(TF.center_crop(TF.resize(image.convert("RGB"), 20), 16)), *norm)
    assert torch.allclose(s.test[0][0], expected)  # evaluation: resize, centre crop (never random)
    assert s.train[0][0].shape == (3, 16, 16)  # training: random resized crop + flip, of the greyscale image too
    plain = load_dataset("cub", data_root=roots["cub"], protocol="open_set")
    assert plain.input_shape == (3, 64, 64) and plain.info["resize_size"] == 64 and plain.info["augment"] is False
    with pytest.raises(ValueError, match=r"resize_size \(8\) must be at least image_size \(16\)"):
        load_dataset("cub", data_root=roots["cub"], image_size=16, resize_size=8)


# ------------------------------------------------------------------------------------ layout errors


@pytest.mark.parametrize("name", NAMES)
def test_a_missing_or_empty_root_names_the_files_expected_where(tmp_path, name):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope'} is not a directory"):
        load_dataset(name, data_root=tmp_path / "nope", protocol="open_set")
    with pytest.raises(FileNotFoundError, match="none of them is there") as err:
        load_dataset(name, data_root=tmp_path, protocol="open_set")
    from pml_anchors.app.data.dml import DML_DATASETS

    assert all(rel in str(err.value) for rel in DML_DATASETS[name].required) and "--download" in str(err.value)


def test_wrong_places_are_recognised(tmp_path):
    write_cub(tmp_path / "cub", per_class=1)
    with pytest.raises(FileNotFoundError, match=f"points inside the dataset: pass its parent {tmp_path / 'cub'}"):
        load_dataset("cub", data_root=tmp_path / "cub" / "CUB_200_2011")
    with pytest.raises(FileNotFoundError, match=f"one level down: pass --data-root {tmp_path / 'cub'}"):
        load_dataset("cub", data_root=tmp_path)
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "CUB_200_2011.tgz").write_bytes(b"\x1f\x8b")
    with pytest.raises(FileNotFoundError, match="holds CUB_200_2011.tgz: extract it there"):
        load_dataset("cub", data_root=tmp_path / "archive")
    for folder in ("cars_train", "cars_test", "devkit"):
        (tmp_path / "stanford" / folder).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="original Stanford layout"):
        load_dataset("cars196", data_root=tmp_path / "stanford", protocol="open_set")


def test_a_half_extracted_dataset_is_one_error(tmp_path):
    write_cub(tmp_path, per_class=1)
    (tmp_path / "CUB_200_2011" / "image_class_labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match="missing CUB_200_2011/image_class_labels.txt"):
        load_dataset("cub", data_root=tmp_path)
    write_cub(tmp_path, per_class=1)
    gone = tmp_path / "CUB_200_2011" / "images" / "150.Bird_150" / "Bird_150_0000_150.jpg"
    gone.unlink()
    with pytest.raises(FileNotFoundError, match=r"incomplete: 1 of the 100 images .* \(e\.g\. .*Bird_150_0000_150"):
        load_dataset("cub", data_root=tmp_path, protocol="open_set")


def test_truncated_index_files_are_one_error_not_pmls_traceback(tmp_path):
    write_cub(tmp_path / "cub", per_class=1)
    index = tmp_path / "cub" / "CUB_200_2011" / "images.txt"
    lines = index.read_text().splitlines()
    index.write_text("\n".join([*lines[:-1], lines[-1].split()[0]]))  # cut after the last line's image id
    with pytest.raises(ValueError, match=r"could not read CUB-200-2011's index files .*extract the archive again"):
        load_dataset("cub", data_root=tmp_path / "cub")
    write_inaturalist2018(tmp_path / "inat")
    annotations = tmp_path / "inat" / "val2018.json"
    annotations.write_text(annotations.read_text()[:40])
    with pytest.raises(ValueError, match="could not read iNaturalist 2018's index files"):
        load_dataset("inaturalist2018", data_root=tmp_path / "inat", protocol="open_set")
    write_sop(tmp_path / "sop")
    (tmp_path / "sop" / "Stanford_Online_Products" / "Ebay_test.txt").write_text("image_id class_id\n")
    with pytest.raises(ValueError, match="list no image for split 'test'"):
        load_dataset("sop", data_root=tmp_path / "sop", protocol="open_set")


# ------------------------------------------------------------------------------------ --download


@pytest.mark.parametrize("name", NAMES)
def test_an_offline_download_is_one_error_and_leaves_nothing(tmp_path, offline, name):
    (tmp_path / "mine.txt").write_text("keep")
    root = tmp_path / "data" / "sets" / name  # its parents do not exist either
    with pytest.raises(DatasetDownloadError, match=r"could not download .* no network connection") as err:
        load_dataset(name, data_root=root, protocol="open_set", download=True)
    assert "put the files in place and run without --download" in str(err.value)
    assert offline and offline[0].startswith("https://")  # PML's own download was what failed
    assert _tree(tmp_path) == ["mine.txt"]


def test_download_into_a_prepared_root_reads_it_without_the_network(roots, offline):
    s = load_dataset("sop", data_root=roots["sop"], protocol="open_set", download=True)
    assert s.num_classes == 4 and offline == []


def test_cli_download_offline_is_one_line_and_the_empty_root_stays_empty(tmp_path, offline, capsys):
    argv = ["train", "--method", "c_ncm", "--dataset", "cub", "--data-root", str(tmp_path), "--download"]
    assert main([*argv, "--epochs", "1", "--no-output"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"pml-anchors train: error: could not download CUB-200-2011 into {tmp_path}: no network")
    assert _tree(tmp_path) == []


# ------------------------------------------------------------------------------------ command line


SMALL = '{"image_size": 32, "resize_size": 36}'


def test_cli_trains_on_cub_and_eval_rebuilds_it_from_the_checkpoint(tmp_path, capsys):
    write_cub(tmp_path / "cub", per_class=4)
    out = tmp_path / "run"
    kwargs = json.dumps({**json.loads(SMALL), "test_fraction": 0.5})  # two test images a class: P@1 is defined
    argv = ["train", "--method", "c_ncm", "--dataset", "cub", "--data-root", str(tmp_path / "cub"), "--epochs", "1"]
    assert main([*argv, "--output", str(out), "--no-progress", "--dataset-kwargs", kwargs]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "cub" and results["protocol"] == "same_class"
    assert 0.0 <= results["precision_at_1"] <= 1.0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    for key in ("precision_at_1", "mean_average_precision_at_r", "nearest_anchor_accuracy"):
        assert again[key] == pytest.approx(results[key], abs=1e-9), key
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert checkpoint["class_names"][:2] == ["001.Bird_1", "002.Bird_2"] and len(checkpoint["class_names"]) == 200
    assert checkpoint["data_info"]["image_size"] == 32 and checkpoint["data_info"]["resize_size"] == 36


@pytest.mark.parametrize(
    ("name", "protocol", "write"),
    [("cub", None, write_cub), ("cars196", "open_set", write_cars196), ("sop", "open_set", write_sop)]
    + [("inaturalist2018", "open_set", write_inaturalist2018)],
)
def test_cli_train_runs_end_to_end(tmp_path, capsys, name, protocol, write):
    write(tmp_path / name)
    argv = ["train", "--method", "c_ncm", "--dataset", name, "--data-root", str(tmp_path / name), "--epochs", "1"]
    argv += ["--no-output", "--no-progress", "--dataset-kwargs", SMALL]
    assert main(argv + (["--protocol", protocol] if protocol else [])) == 0
    assert f"c_ncm on {name} [{protocol or 'same_class'}], 1 epoch" in capsys.readouterr().out
