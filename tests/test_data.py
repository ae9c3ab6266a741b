"""Tests for pml_anchors.app.data (digits, MNIST from local IDX files, ImageFolder, protocols)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from pml_anchors.app.data import (
    DATASETS,
    MNIST_FILES,
    DatasetSplits,
    TensorImageDataset,
    get_labels,
    load_dataset,
    prepare_mnist_root,
)

MNIST_IDX_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/mnist"
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


# ------------------------------------------------------------------------------------- digits


def test_digits_same_class_shapes_and_labels():
    s = load_dataset("digits")
    assert isinstance(s, DatasetSplits)
    assert (s.name, s.protocol, s.num_classes, s.input_shape) == ("digits", "same_class", 10, (1, 8, 8))
    assert (s.in_channels, s.input_size) == (1, 8)
    assert len(s.train) + len(s.test) == 1797
    assert len(s.test) == pytest.approx(0.25 * 1797, abs=10)
    x, y = s.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    assert set(s.train_labels.tolist()) == set(range(10)) == set(s.test_labels.tolist())
    assert s.class_names == tuple(str(i) for i in range(10))
    # stratified: every class has ~25 % of its images in the test set
    counts = s.test_labels.bincount()
    assert counts.min() >= 40 and counts.max() <= 50
    # scaled to [0, 1] then standardised with train statistics
    xs, _ = s.train.tensors()
    assert xs.mean().abs() < 1e-4 and (xs.std() - 1).abs() < 1e-3


def test_digits_split_is_deterministic_by_seed():
    a, b, c = load_dataset("digits", seed=0), load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(a.train_labels, b.train_labels)
    assert torch.equal(a.train.tensors()[0], b.train.tensors()[0])
    assert not torch.equal(a.train.tensors()[0][:50], c.train.tensors()[0][:50])
    assert c.seed == 1


def test_digits_open_set():
    s = load_dataset("digits", protocol="open_set")
    assert s.protocol == "open_set" and s.num_classes == 5
    train, test = set(s.train_labels.tolist()), set(s.test_labels.tolist())
    assert train == set(range(5)) and test == set(range(5, 10))
    assert train.isdisjoint(test)
    assert s.num_test_classes == 5
    assert s.train_class_names == ("0", "1", "2", "3", "4")
    assert s.test_class_names == ("5", "6", "7", "8", "9")
    # "all": the unseen classes' images of the train split join the test set
    s_all = load_dataset("digits", protocol="open_set", open_set_test="all")
    assert len(s_all.test) > 3 * len(s.test)
    assert set(s_all.test_labels.tolist()) == set(range(5, 10))
    assert torch.equal(s_all.train_labels, s.train_labels)


def test_open_set_label_remapping_with_num_train_classes():
    s = load_dataset("digits", protocol="open_set", num_train_classes=3)
    assert s.num_classes == 3
    assert set(s.train_labels.tolist()) == {0, 1, 2}
    assert set(s.test_labels.tolist()) == set(range(3, 10))
    with pytest.raises(ValueError, match="num_train_classes"):
        load_dataset("digits", protocol="open_set", num_train_classes=10)


def test_limit_is_deterministic_and_class_balanced():
    a = load_dataset("digits", limit=100)
    b = load_dataset("digits", limit=100)
    assert len(a.train) == 100
    assert torch.equal(a.train_labels, b.train_labels)
    assert torch.equal(a.train.tensors()[0], b.train.tensors()[0])
    assert a.train_labels.bincount().tolist() == [10] * 10
    s = load_dataset("digits", protocol="open_set", limit=20, test_limit=30)
    assert len(s.train) == 20 and len(s.test) == 30
    assert s.train_labels.bincount().tolist() == [4] * 5


def test_dataloader_batches():
    s = load_dataset("digits", limit=64)
    x, y = next(iter(DataLoader(s.train, batch_size=32, shuffle=True)))
    assert x.shape == (32, 1, 8, 8) and y.shape == (32,) and y.dtype == torch.int64


def test_unknown_dataset_and_protocol():
    with pytest.raises(ValueError, match="Did you mean 'mnist'") as exc:
        load_dataset("mnsit")
    for name in ("digits", "mnist", "imagefolder"):
        assert name in str(exc.value)
    with pytest.raises(ValueError, match="Unknown protocol 'open'.*same_class.*open_set"):
        load_dataset("digits", protocol="open")
    assert {"digits", "mnist", "imagefolder", "folder"} <= set(DATASETS)


def test_tensor_dataset_and_get_labels():
    images = torch.arange(2 * 3 * 2 * 2, dtype=torch.uint8).reshape(2, 3, 2, 2)
    ds = TensorImageDataset(images, [4, 7], mean=(0.5, 0.5, 0.5), std=0.5)
    x, y = ds[1]
    assert y == 7 and torch.allclose(x, (images[1].float() / 255 - 0.5) / 0.5)
    assert [item[1] for item in ds.__getitems__([1, 0])] == [7, 4]
    assert get_labels(ds).tolist() == [4, 7]


# -------------------------------------------------------------------------------------- MNIST


def _write_idx(path: Path, array: torch.Tensor, gz: bool = True) -> None:
    magic = 2051 if array.dim() == 3 else 2049
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.to(torch.uint8).numpy().tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def fake_idx_dir(tmp_path):
    """Tiny synthetic MNIST in IDX format (train: 40 images, t10k: 20), gzipped and plain."""
    d = tmp_path / "idx"
    d.mkdir()
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 40), ("t10k", 20)):
        _write_idx(d / f"{split}-images-idx3-ubyte", torch.randint(0, 256, (n, 28, 28), generator=gen))
        _write_idx(d / f"{split}-labels-idx1-ubyte", torch.arange(n) % 10, gz=(split == "train"))
    return d


def test_prepare_mnist_root_from_synthetic_idx(fake_idx_dir, tmp_path):
    root = prepare_mnist_root(fake_idx_dir, tmp_path / "root")
    assert root == tmp_path / "root"
    for name in MNIST_FILES:
        assert (root / "MNIST" / "raw" / name).is_file()
    mtime = (root / "MNIST" / "raw" / MNIST_FILES[0]).stat().st_mtime_ns
    prepare_mnist_root(fake_idx_dir, root)  # second call: files already there are skipped
    assert (root / "MNIST" / "raw" / MNIST_FILES[0]).stat().st_mtime_ns == mtime
    s = load_dataset("mnist", data_root=root)
    assert (len(s.train), len(s.test), s.input_shape, s.num_classes) == (40, 20, (1, 28, 28), 10)
    assert s.train_labels.tolist() == [i % 10 for i in range(40)]
    s = load_dataset("mnist", data_root=root, protocol="open_set")
    assert set(s.train_labels.tolist()) == set(range(5)) and set(s.test_labels.tolist()) == set(range(5, 10))


def test_prepare_mnist_root_checks_sha256(fake_idx_dir, tmp_path):
    (fake_idx_dir / "SHA256SUMS").write_text("0" * 64 + "  train-images-idx3-ubyte.gz\n")
    with pytest.raises(ValueError, match="SHA-256"):
        prepare_mnist_root(fake_idx_dir, tmp_path / "root")
    prepare_mnist_root(fake_idx_dir, tmp_path / "root", verify=False)


def test_prepare_mnist_root_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        prepare_mnist_root(tmp_path / "nope", tmp_path / "root")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        prepare_mnist_root(tmp_path / "empty", tmp_path / "root")


def test_mnist_missing_root_gives_clear_error(tmp_path, fake_idx_dir):
    with pytest.raises(FileNotFoundError, match="prepare_mnist_root") as exc:
        load_dataset("mnist", data_root=tmp_path / "does-not-exist")
    assert "download=True" in str(exc.value) and "MNIST/raw" in str(exc.value).replace("\\", "/")
    with pytest.raises(FileNotFoundError, match="itself holds IDX files"):
        load_dataset("mnist", data_root=fake_idx_dir)


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    if not MNIST_IDX_DIR.is_dir():
        pytest.skip("MNIST IDX files not found at ../shared/data/mnist")
    return prepare_mnist_root(MNIST_IDX_DIR, tmp_path_factory.mktemp("mnist_root"))


def test_mnist_same_class(mnist_root):
    s = load_dataset("mnist", data_root=mnist_root)
    assert (len(s.train), len(s.test), s.num_classes, s.input_shape) == (60000, 10000, 10, (1, 28, 28))
    assert s.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert s.train_labels.bincount().tolist() == MNIST_TRAIN_COUNTS
    x, y = s.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 5
    assert x.min() == pytest.approx(-0.1307 / 0.3081, abs=1e-5)
    xs = s.train.__getitems__(list(range(2000)))
    batch = torch.stack([t for t, _ in xs])
    assert batch.mean().abs() < 0.05 and (batch.std() - 1).abs() < 0.05


def test_mnist_open_set_and_limit(mnist_root):
    s = load_dataset("mnist", data_root=mnist_root, protocol="open_set", limit=500)
    assert s.num_classes == 5 and len(s.train) == 500
    assert s.train_labels.bincount().tolist() == [100] * 5
    assert set(s.test_labels.tolist()) == set(range(5, 10))
    assert len(s.test) == 10000 - (980 + 1135 + 1032 + 1010 + 982)


# -------------------------------------------------------------------------------- imagefolder


def _make_folder(root: Path, classes: list[str], n: int, seed: int = 0) -> None:
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = torch.randint(0, 256, (10, 12, 3), generator=gen, dtype=torch.uint8).numpy()
            Image.fromarray(arr).save(root / c / f"{i}.png")


def test_imagefolder_single_folder_both_protocols(tmp_path):
    _make_folder(tmp_path, ["a", "b", "c", "d"], 4)
    s = load_dataset("imagefolder", data_root=tmp_path, image_size=16)
    assert s.num_classes == 4 and s.input_shape == (3, 16, 16) and s.class_names == ("a", "b", "c", "d")
    assert len(s.train) + len(s.test) == 16
    assert set(s.test_labels.tolist()) == set(range(4))
    x, y = s.test[0]
    assert x.shape == (3, 16, 16) and isinstance(y, int)
    o = load_dataset("folder", data_root=tmp_path, image_size=16, protocol="open_set")
    assert o.num_classes == 2 and len(o.train) == 8 and len(o.test) == 8
    assert set(o.train_labels.tolist()) == {0, 1} and set(o.test_labels.tolist()) == {2, 3}
    assert o.test_class_names == ("c", "d")
    assert [o.test[i][1] for i in range(len(o.test))] == o.test_labels.tolist()
    x, _ = next(iter(DataLoader(o.train, batch_size=4)))
    assert x.shape == (4, 3, 16, 16)


def test_imagefolder_train_test_layout(tmp_path):
    _make_folder(tmp_path / "train", ["a", "b", "c"], 3)
    _make_folder(tmp_path / "test", ["a", "b", "c"], 2, seed=1)
    s = load_dataset("imagefolder", data_root=tmp_path, image_size=8, augment=True)
    assert (len(s.train), len(s.test), s.num_classes, s.input_shape) == (9, 6, 3, (3, 8, 8))
    assert s.train[0][0].shape == (3, 8, 8)
    o = load_dataset("imagefolder", data_root=tmp_path, image_size=8, protocol="open_set")
    assert o.num_classes == 1 and set(o.test_labels.tolist()) == {1, 2} and len(o.test) == 4


def test_imagefolder_disjoint_folders(tmp_path):
    _make_folder(tmp_path / "train", ["a", "b"], 2)
    _make_folder(tmp_path / "test", ["c", "d", "e"], 2, seed=1)
    o = load_dataset("imagefolder", data_root=tmp_path, image_size=8, protocol="open_set")
    assert o.num_classes == 2 and set(o.train_labels.tolist()) == {0, 1}
    assert set(o.test_labels.tolist()) == {2, 3, 4} and o.class_names == ("a", "b", "c", "d", "e")
    with pytest.raises(ValueError, match="absent from training"):
        load_dataset("imagefolder", data_root=tmp_path, image_size=8)


def test_imagefolder_eval_resize_before_the_centre_crop_as_in_proxy_anchors_official_transforms(tmp_path):
    """resize_size: the shorter side is resized to it, then centre-cropped to image_size (official ResNet
    transforms: 256 then 224); the sizes and the normalisation are recorded in the splits' info."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    _make_folder(tmp_path, ["a", "b"], 2)
    s = load_dataset("imagefolder", data_root=tmp_path, image_size=16, resize_size=20, augment=True)
    assert s.info["image_size"] == 16 and s.info["resize_size"] == 20 and s.info["augment"] is True
    norm = (s.info["mean"], s.info["std"])
    assert norm == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    x, y = s.test[0]  # one of its class's images, through the evaluation transform
    assert x.shape == (3, 16, 16)
    expected = [
        TF.normalize(TF.to_tensor(TF.center_crop(TF.resize(Image.open(p).convert("RGB"), 20), 16)), *norm)
        for p in sorted((tmp_path / s.class_names[y]).glob("*.png"))
    ]
    assert any(torch.allclose(x, e) for e in expected)
    plain = load_dataset("imagefolder", data_root=tmp_path, image_size=16)
    assert plain.info["resize_size"] == 16  # default: resized to the crop itself
    with pytest.raises(ValueError, match="resize_size \\(8\\) must be at least image_size \\(16\\)"):
        load_dataset("imagefolder", data_root=tmp_path, image_size=16, resize_size=8)


def test_imagefolder_missing_root(tmp_path):
    with pytest.raises(ValueError, match="needs data_root"):
        load_dataset("imagefolder")
    with pytest.raises(FileNotFoundError):
        load_dataset("imagefolder", data_root=tmp_path / "nope")
