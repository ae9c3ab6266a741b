"""The torchvision datasets (CIFAR-10/100, SVHN, Food-101, Caltech-256, EMNIST, Fashion-MNIST, KMNIST) on tiny
fixtures in their official on-disk layouts (tests/torchvision_layouts.py), and Fashion-MNIST from ../shared."""

from __future__ import annotations

import gzip
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets
from torchvision_layouts import (
    CIFAR10_NAMES,
    cifar100_names,
    use_md5,
    write_caltech256,
    write_cifar10,
    write_cifar100,
    write_food101,
    write_idx_set,
    write_svhn,
)
from training_toys import single_thread  # noqa: F401 - autouse fixture: tiny models train faster on one thread

from pml_anchors.app.data import (
    DATASETS,
    MNIST_FILES,
    AugmentedTensorDataset,
    TensorImageDataset,
    channel_stats,
    emnist_files,
    load_dataset,
)
from pml_anchors.app.data.mnist import prepared_idx_cache
from pml_anchors.cli import main

FASHION_IDX_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/fashion-mnist"
NEW = ("cifar10", "cifar100", "svhn", "food101", "caltech256", "emnist", "fashion_mnist", "kmnist")
FOOD = ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio"]
CALTECH = [f"object{i:03d}" for i in range(1, 257)] + ["clutter"]  # 257 folders, as the real one: 257.clutter


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    """Default roots and prepared caches go to a temporary folder, never the user's ~/.cache."""
    monkeypatch.setenv("PML_ANCHORS_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def offline(monkeypatch):
    """Every URL fails as on a machine without DNS (no real network is touched, online or not)."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def cifar10_root(tmp_path, monkeypatch):
    root = tmp_path / "cifar"
    use_md5(monkeypatch, datasets.CIFAR10, write_cifar10(root))
    return root


@pytest.fixture
def svhn_root(tmp_path, monkeypatch):
    root = tmp_path / "svhn"
    use_md5(monkeypatch, datasets.SVHN, {"split_list": write_svhn(root)})
    return root


@pytest.fixture(scope="module")
def caltech_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("caltech")
    write_caltech256(root, CALTECH, per_class=3)
    return root


def _unnormalised(ds: TensorImageDataset, x: torch.Tensor) -> torch.Tensor:
    """The uint8 pixels behind a normalised item."""
    return torch.round((x * ds._std + ds._mean) * 255).to(torch.uint8)


def _files_under(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")} if root.exists() else {}


def test_the_eight_datasets_are_registered():
    assert set(NEW) <= set(DATASETS)


def test_channel_stats_are_exact_and_never_zero():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (7, 3, 5, 4), dtype=torch.uint8, generator=gen)
    images[:, 2] = 9  # a constant channel
    mean, std = channel_stats(images)
    ref = images.double() / 255
    assert mean[:2] == pytest.approx(ref[:, :2].mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert std[:2] == pytest.approx(ref[:, :2].std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-6)
    assert mean[2] == pytest.approx(9 / 255, abs=1e-6) and std[2] == 1.0
    with pytest.raises(ValueError, match="uint8 images"):
        channel_stats(images.float())


# ------------------------------------------------------------------------------------- CIFAR / SVHN


def test_cifar10_same_class_reads_the_official_batches(cifar10_root):
    s = load_dataset("cifar10", data_root=cifar10_root)
    assert (s.name, len(s.train), len(s.test), s.num_classes, s.input_shape) == ("cifar10", 50, 20, 10, (3, 32, 32))
    assert s.class_names == tuple(CIFAR10_NAMES)
    assert s.train_labels.tolist() == [i % 10 for i in range(10)] * 5
    assert type(s.train) is TensorImageDataset  # no augmentation unless asked
    raw = torch.from_numpy(datasets.CIFAR10(str(cifar10_root), train=True).data).permute(0, 3, 1, 2)
    mean = (raw.double() / 255).mean(dim=(0, 2, 3))
    assert s.info["mean"] == pytest.approx(mean.tolist(), abs=1e-6)
    x, y = s.train[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 3
    assert torch.equal(_unnormalised(s.train, x), raw[3])
    xs, _ = s.train.tensors()
    assert xs.mean(dim=(0, 2, 3)).abs().max() < 1e-4 and (xs.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-2


def test_cifar10_open_set(cifar10_root):
    s = load_dataset("cifar10", data_root=cifar10_root, protocol="open_set")
    assert s.num_classes == 5 and set(s.train_labels.tolist()) == set(range(5))
    assert set(s.test_labels.tolist()) == set(range(5, 10)) and len(s.train) == 25 and len(s.test) == 10
    assert s.train_class_names == tuple(CIFAR10_NAMES[:5]) and s.test_class_names == tuple(CIFAR10_NAMES[5:])
    s_all = load_dataset("cifar10", data_root=cifar10_root, protocol="open_set", open_set_test="all")
    assert len(s_all.test) == 10 + 25 and set(s_all.test_labels.tolist()) == set(range(5, 10))
    three = load_dataset("cifar10", data_root=cifar10_root, protocol="open_set", num_train_classes=3)
    assert three.num_classes == 3 and set(three.test_labels.tolist()) == set(range(3, 10))


def _crops(raw: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every 32-pixel crop of ``raw`` zero-padded by 4, and of its mirror image."""
    padded = torch.nn.functional.pad(raw, (4, 4, 4, 4))
    plain = [padded[:, i : i + 32, j : j + 32] for i in range(9) for j in range(9)]
    return plain, [c.flip(-1) for c in plain]


def _augmented_draws(ds, index: int, n: int) -> tuple[int, int, int]:
    """(unflipped crops, flipped-only crops, shifted crops) among ``n`` draws of item ``index``; fails on anything
    that is not a padded crop of the item or of its mirror image."""
    plain, flipped = _crops(ds.images[index])
    counts = [0, 0, 0]
    for _ in range(n):
        x = _unnormalised(ds, ds[index][0])
        if any(torch.equal(x, c) for c in plain):
            counts[0] += 1
        elif any(torch.equal(x, c) for c in flipped):
            counts[1] += 1
        else:
            pytest.fail("an augmented item is not a 32-pixel crop of the 4-pixel padded image (or its flip)")
        counts[2] += not torch.equal(x, ds.images[index]) and not torch.equal(x, ds.images[index].flip(-1))
    return counts[0], counts[1], counts[2]


def test_cifar_augment_is_padded_crops_and_flips_for_training_only(cifar10_root):
    torch.manual_seed(0)
    s = load_dataset("cifar10", data_root=cifar10_root, augment=True)
    assert isinstance(s.train, AugmentedTensorDataset) and s.info["augment"] is True
    unflipped, flipped, shifted = _augmented_draws(s.train, 0, 40)
    assert unflipped > 0 and flipped > 0 and shifted > 0
    assert type(s.test) is TensorImageDataset and torch.equal(s.test[0][0], s.test[0][0])
    batch = s.train.__getitems__([0, 1, 2])
    assert [y for _, y in batch] == [0, 1, 2] and all(x.shape == (3, 32, 32) for x, _ in batch)
    limited = load_dataset("cifar10", data_root=cifar10_root, augment=True, limit=10)
    assert isinstance(limited.train, AugmentedTensorDataset) and len(limited.train) == 10
    o = load_dataset("cifar10", data_root=cifar10_root, augment=True, protocol="open_set", open_set_test="all")
    assert isinstance(o.train, AugmentedTensorDataset) and not isinstance(o.test, AugmentedTensorDataset)


def test_cifar100_fine_labels_and_names(tmp_path, monkeypatch):
    root = tmp_path / "c100"
    use_md5(monkeypatch, datasets.CIFAR100, write_cifar100(root))
    s = load_dataset("cifar100", data_root=root)
    assert (len(s.train), len(s.test), s.num_classes) == (200, 100, 100)
    assert s.class_names == tuple(cifar100_names()) and s.train_labels.max() == 99
    o = load_dataset("cifar100", data_root=root, protocol="open_set")
    assert o.num_classes == 50 and set(o.test_labels.tolist()) == set(range(50, 100))
    assert o.test_class_names[0] == "fine_50"


def test_cifar_md5_sums_still_guard_real_users(tmp_path, monkeypatch):
    write_cifar10(tmp_path)  # torchvision's real sums: the fixture does not match them
    with pytest.raises(OSError, match="MD5 mismatch of cifar-10-batches-py/data_batch_1, .*test_batch"):
        load_dataset("cifar10", data_root=tmp_path)
    sums = {attr: value for attr, value in write_cifar10(tmp_path / "ok").items()}
    use_md5(monkeypatch, datasets.CIFAR10, sums)
    batch = tmp_path / "ok" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-10])  # a truncated download
    with pytest.raises(OSError, match=r"damaged or not the official release: MD5 mismatch of [^,]*data_batch_3 \("):
        load_dataset("cifar10", data_root=tmp_path / "ok")


def test_svhn_digits_and_crops_without_flips(svhn_root):
    s = load_dataset("svhn", data_root=svhn_root)
    assert (len(s.train), len(s.test), s.num_classes, s.input_shape) == (30, 20, 10, (3, 32, 32))
    assert s.train_labels.tolist() == [i % 10 for i in range(30)]  # the files' label 10 is the digit 0
    assert s.class_names == tuple(str(d) for d in range(10))
    torch.manual_seed(0)
    a = load_dataset("svhn", data_root=svhn_root, augment=True)
    unflipped, flipped, shifted = _augmented_draws(a.train, 4, 30)
    assert unflipped == 30 and flipped == 0 and shifted > 0
    o = load_dataset("svhn", data_root=svhn_root, protocol="open_set")
    assert o.num_classes == 5 and set(o.test_labels.tolist()) == set(range(5, 10))


# ----------------------------------------------------------------------------------- Food-101 / Caltech


def test_food101_official_split_names_and_transforms(tmp_path):
    write_food101(tmp_path, FOOD, n_train=3, n_test=2)
    s = load_dataset("food101", data_root=tmp_path, image_size=16)
    assert (len(s.train), len(s.test), s.num_classes, s.input_shape) == (12, 8, 4, (3, 16, 16))
    assert s.class_names == tuple(FOOD) and s.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    x, y = s.test[3]
    assert x.shape == (3, 16, 16) and y == 1
    assert s.info["image_size"] == 16 and s.info["resize_size"] == 16 and s.info["std"] == [0.229, 0.224, 0.225]
    a = load_dataset("food101", data_root=tmp_path, image_size=8, resize_size=12, augment=True)
    assert a.train[0][0].shape == (3, 8, 8) and a.test[0][0].shape == (3, 8, 8)
    o = load_dataset("food101", data_root=tmp_path, image_size=8, protocol="open_set", open_set_test="all")
    assert o.num_classes == 2 and o.test_class_names == ("baklava", "beef_carpaccio") and len(o.test) == 4 + 6
    with pytest.raises(ValueError, match="resize_size"):
        load_dataset("food101", data_root=tmp_path, image_size=32, resize_size=16)


def test_food101_half_extracted_is_one_clear_error(tmp_path):
    base = write_food101(tmp_path, FOOD, n_train=2, n_test=1)
    last = sorted((base / "images" / "baklava").iterdir())[-1]
    last.unlink()
    with pytest.raises(FileNotFoundError, match=rf"incomplete: .*food-101/images/baklava/{last.stem}\.jpg"):
        load_dataset("food101", data_root=tmp_path)
    (base / "meta" / "test.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"Food-101 not found .*missing: food-101/meta/test\.json.*--download"):
        load_dataset("food101", data_root=tmp_path)


def test_caltech256_seeded_per_class_split_without_clutter(caltech_root):
    s = load_dataset("caltech256", data_root=caltech_root, image_size=8)
    assert s.num_classes == 256 and s.input_shape == (3, 8, 8)
    assert s.class_names[:2] == ("object001", "object002") and "clutter" not in s.class_names
    assert len(s.train) == 2 * 256 and len(s.test) == 256  # test_fraction 0.25 of 3 images: 1 per class
    assert s.test_labels.bincount().tolist() == [1] * 256
    assert s.train[0][0].shape == (3, 8, 8)  # the first image of each class is greyscale: converted to RGB
    again = load_dataset("caltech256", data_root=caltech_root, image_size=8)
    other = load_dataset("caltech256", data_root=caltech_root, image_size=8, seed=1)
    assert torch.equal(again.test.indices, s.test.indices) and not torch.equal(other.test.indices, s.test.indices)
    c = load_dataset("caltech256", data_root=caltech_root, image_size=8, clutter=True, test_fraction=0.5)
    assert c.num_classes == 257 and c.class_names[-1] == "clutter" and c.info["test_fraction"] == 0.5


def test_caltech256_open_set(caltech_root):
    o = load_dataset("caltech256", data_root=caltech_root, image_size=8, protocol="open_set")
    assert o.num_classes == 128 and len(o.train) == 128 * 3 and len(o.test) == 128 * 3
    assert set(o.test_labels.tolist()) == set(range(128, 256)) and o.test_class_names[0] == "object129"
    with pytest.raises(ValueError, match="test_fraction only applies"):
        load_dataset("caltech256", data_root=caltech_root, protocol="open_set", test_fraction=0.3)


def test_caltech256_wrong_layout_is_named_and_nothing_is_created(tmp_path):
    write_caltech256(tmp_path, ["ak47", "american-flag", "backpack"], per_class=1)
    os.rename(tmp_path / "caltech256/256_ObjectCategories/002.american-flag", tmp_path / "american-flag")
    with pytest.raises(FileNotFoundError, match=r"category 2 of the sorted entries .* is '003\.backpack'"):
        load_dataset("caltech256", data_root=tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="caltech256/256_ObjectCategories"):
        load_dataset("caltech256", data_root=empty)
    assert list(empty.iterdir()) == []  # torchvision's Caltech256 would have created caltech256/ here


# ---------------------------------------------------------------------------------- the MNIST family


def test_fashion_mnist_and_kmnist_from_torchvision_roots(tmp_path):
    for name, folder, cls in (
        ("fashion_mnist", "FashionMNIST", datasets.FashionMNIST),
        ("kmnist", "KMNIST", datasets.KMNIST),
    ):
        x_train, _, _, _ = write_idx_set(tmp_path / folder / "raw", MNIST_FILES, n_train=40, n_test=20)
        s = load_dataset(name, data_root=tmp_path)
        assert (s.name, len(s.train), len(s.test), s.num_classes, s.input_shape) == (name, 40, 20, 10, (1, 28, 28))
        assert s.class_names == tuple(cls.classes) and s.info["root"] == str(tmp_path)
        assert s.info["mean"] == pytest.approx(x_train.mean() / 255, abs=1e-6)
        assert s.info["std"] == pytest.approx((x_train / 255).std(), abs=1e-6)
        assert torch.equal(_unnormalised(s.train, s.train[5][0]), torch.from_numpy(x_train[5]).unsqueeze(0))
        o = load_dataset(name, data_root=tmp_path, protocol="open_set")
        assert o.test_class_names == tuple(cls.classes[5:])


def test_emnist_balanced_by_default_and_upright(tmp_path):
    raw = tmp_path / "EMNIST" / "raw"
    stored, _, _, _ = write_idx_set(raw, emnist_files("balanced"), n_train=94, n_test=47, num_classes=47)
    s = load_dataset("emnist", data_root=tmp_path)
    assert s.info["split"] == "balanced" and s.num_classes == 47 and (len(s.train), len(s.test)) == (94, 47)
    assert s.class_names == tuple(datasets.EMNIST.classes_split_dict["balanced"])
    assert torch.equal(s.train.images[0, 0], torch.from_numpy(stored[0]).T)  # the files store images transposed
    o = load_dataset("emnist", data_root=tmp_path, protocol="open_set")
    assert o.num_classes == 23 and set(o.test_labels.tolist()) == set(range(23, 47))


def test_emnist_letters_split_and_bad_split(tmp_path):
    write_idx_set(
        tmp_path / "EMNIST" / "raw", emnist_files("letters"), n_train=52, n_test=26, num_classes=26, first_label=1
    )
    s = load_dataset("emnist", data_root=tmp_path, split="letters")
    assert s.num_classes == 26 and s.class_names == tuple("abcdefghijklmnopqrstuvwxyz")
    assert s.train_labels.min() == 0 and s.train_labels.max() == 25  # torchvision's 1..26, remapped
    with pytest.raises(ValueError, match="EMNIST split must be one of byclass, bymerge, balanced"):
        load_dataset("emnist", data_root=tmp_path, split="letter")
    with pytest.raises(FileNotFoundError, match="emnist-balanced-train-images-idx3-ubyte"):
        load_dataset("emnist", data_root=tmp_path)


@pytest.mark.parametrize(
    ("name", "folder", "files", "kwargs"),
    [
        ("fashion_mnist", "FashionMNIST", MNIST_FILES, {}),
        ("kmnist", "KMNIST", MNIST_FILES, {}),
        ("emnist", "EMNIST", emnist_files("digits"), {"split": "digits"}),
    ],
)
def test_a_folder_of_gzipped_idx_files_is_prepared_into_the_cache(tmp_path, cache_home, name, folder, files, kwargs):
    src = tmp_path / "idx"
    write_idx_set(src, files, n_train=30, n_test=10, gz=True)
    before = _files_under(src)
    s = load_dataset(name, data_root=src, **kwargs)
    assert (len(s.train), len(s.test)) == (30, 10) and s.info["prepared_from"] == str(src)
    cache = prepared_idx_cache(src, folder)
    assert s.info["root"] == str(cache) and cache.is_relative_to(cache_home)
    assert sorted(p.name for p in (cache / folder / "raw").iterdir()) == sorted(files)
    assert _files_under(src) == before  # data_root is never written into
    stamps = _files_under(cache)
    load_dataset(name, data_root=src, **kwargs)
    assert _files_under(cache) == stamps  # prepared once


def test_idx_folder_checksums_partial_folders_and_damaged_files(tmp_path):
    src = tmp_path / "idx"
    write_idx_set(src, MNIST_FILES, gz=True)
    (src / "SHA256SUMS").write_text("0" * 64 + "  train-images-idx3-ubyte.gz\n")
    with pytest.raises(ValueError, match="SHA-256"):
        load_dataset("fashion_mnist", data_root=src)
    (src / "SHA256SUMS").unlink()
    (src / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"Fashion-MNIST not found: .*\(missing: .*t10k-labels-idx1-ubyte\)"):
        load_dataset("fashion_mnist", data_root=src)
    raw = tmp_path / "root" / "KMNIST" / "raw"
    write_idx_set(raw, MNIST_FILES)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(OSError, match=r"KMNIST in .*raw is incomplete or damaged: .*train-images-idx3-ubyte has"):
        load_dataset("kmnist", data_root=tmp_path / "root")


@pytest.fixture(scope="module")
def fashion_cache(tmp_path_factory):
    if not FASHION_IDX_DIR.is_dir():
        pytest.skip(f"the Fashion-MNIST IDX files are not at {FASHION_IDX_DIR} (a clone without ../shared/data)")
    return tmp_path_factory.mktemp("fashion_cache")


def test_real_fashion_mnist_loads_through_torchvision(fashion_cache, monkeypatch):
    monkeypatch.setenv("PML_ANCHORS_DATA", str(fashion_cache))
    s = load_dataset("fashion_mnist", data_root=FASHION_IDX_DIR)
    assert (len(s.train), len(s.test), s.num_classes, s.input_shape) == (60000, 10000, 10, (1, 28, 28))
    assert s.class_names[0] == "T-shirt/top" and s.class_names[9] == "Ankle boot"
    counts = (s.train_labels.bincount() + s.test_labels.bincount()).tolist()
    assert counts == [7000] * 10  # 7,000 of every class, re-split 60,000 / 10,000 (../shared/data/README.md)
    assert s.info["prepared_from"] == str(FASHION_IDX_DIR) and s.info["mean"] == pytest.approx(0.2860, abs=1e-3)
    raw = Path(s.info["root"]) / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    with gzip.open(FASHION_IDX_DIR / "train-images-idx3-ubyte.gz", "rb") as f:
        first = np.frombuffer(f.read(16 + 784)[16:], dtype=np.uint8).reshape(28, 28)
    assert raw.is_file() and torch.equal(s.train.images[0, 0], torch.from_numpy(first.copy()))
    x, _ = s.train[0]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28)


# ------------------------------------------------------------------------------ errors and downloads


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cifar10", "CIFAR-10 not found under .*cifar-10-batches-py/data_batch_1"),
        ("cifar100", "CIFAR-100 not found under .*cifar-100-python/train"),
        ("svhn", "SVHN not found under .*train_32x32.mat"),
        ("food101", "Food-101 not found under .*food-101/meta/train.json"),
        ("caltech256", "Caltech-256 not found under .*caltech256/256_ObjectCategories"),
        ("emnist", "EMNIST not found: .*EMNIST/raw"),
        ("fashion_mnist", "Fashion-MNIST not found: .*FashionMNIST/raw"),
        ("kmnist", "KMNIST not found: .*KMNIST/raw"),
    ],
)
def test_a_missing_root_names_the_files_expected_where(tmp_path, name, expected):
    root = tmp_path / "nothing-here"
    with pytest.raises(FileNotFoundError, match=expected) as exc:
        load_dataset(name, data_root=root)
    assert "download" in str(exc.value) and "\n" not in str(exc.value)
    assert not root.exists()


@pytest.mark.parametrize(
    ("name", "title"),
    [
        ("cifar10", "CIFAR-10"),
        ("cifar100", "CIFAR-100"),
        ("svhn", "SVHN"),
        ("food101", "Food-101"),
        ("caltech256", "Caltech-256"),
        ("emnist", "EMNIST"),
        ("fashion_mnist", "Fashion-MNIST"),
        ("kmnist", "KMNIST"),
    ],
)
def test_download_offline_is_one_line_and_leaves_nothing_behind(tmp_path, offline, capsys, name, title):
    (tmp_path / "notes.txt").write_text("mine")
    argv = ["train", "--method", "c_ncm", "--dataset", name, "--data-root", str(tmp_path), "--download", "--no-output"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"pml-anchors train: error: could not download {title} into {tmp_path}: no network")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["notes.txt"]


# ---------------------------------------------------------------------------------- end to end (CLI)


def test_cli_trains_on_cifar10_and_the_checkpoint_keeps_the_class_names(cifar10_root, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--method", "c_ncm", "--dataset", "cifar10", "--data-root", str(cifar10_root), "--epochs", "1"]
    assert main([*argv, "--dataset-kwargs", '{"augment": true}', "--device", "cpu", "--output", str(out)]) == 0
    assert "P@1" in capsys.readouterr().out
    checkpoint = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert checkpoint["class_names"] == CIFAR10_NAMES and len(checkpoint["data_info"]["mean"]) == 3
    assert main([*argv, "--no-output"]) == 0


def test_cli_trains_on_fashion_mnist_from_its_idx_folder(tmp_path, capsys):
    write_idx_set(tmp_path / "idx", MNIST_FILES, n_train=60, n_test=20, gz=True)
    argv = ["train", "--method", "c_ncm", "--dataset", "fashion_mnist", "--data-root", str(tmp_path / "idx")]
    assert main([*argv, "--epochs", "1", "--no-output"]) == 0
    assert "P@1" in capsys.readouterr().out


def test_cli_trains_on_food101(tmp_path, capsys):
    write_food101(tmp_path, FOOD, n_train=4, n_test=2)
    argv = ["train", "--method", "c_ncm", "--dataset", "food101", "--data-root", str(tmp_path), "--epochs", "1"]
    assert main([*argv, "--dataset-kwargs", '{"image_size": 16}', "--no-output"]) == 0
    assert "P@1" in capsys.readouterr().out
