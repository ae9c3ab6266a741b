"""``mnist``: torchvision's MNIST from a local root (1×28×28), prepared offline from IDX files or downloaded."""

from __future__ import annotations

from pathlib import Path

from .containers import DatasetSplits, TensorImageDataset, default_data_root
from .downloads import guarded_download
from .mnist_idx import MNIST_FILES
from .splits import make_splits

__all__ = ["MNIST_MEAN", "MNIST_STD", "build_mnist"]

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


def _mnist_missing_message(root: Path) -> str:
    raw = root / "MNIST" / "raw"
    msg = (
        f"MNIST not found: expected the uncompressed IDX files {', '.join(MNIST_FILES)} in {raw}. "
        "Prepare that root offline with pml_anchors.app.data.prepare_mnist_root(idx_dir, root) from a folder of "
        "(gzipped) IDX files, or pass download=True (the CLI's --download) to let torchvision download MNIST "
        "(needs internet)."
    )
    if root.is_dir() and any((root / f).exists() or (root / (f + ".gz")).exists() for f in MNIST_FILES):
        msg += (
            f" {root} itself holds IDX files: call prepare_mnist_root({str(root)!r}, <cache dir>) and pass the "
            "cache dir as data_root."
        )
    return msg


def build_mnist(
    *,
    data_root=None,
    protocol: str,
    seed: int,
    download: bool = False,
    num_train_classes: int | None = None,
    open_set_test: str = "test",
) -> DatasetSplits:
    """torchvision MNIST read once into uint8 tensors, normalised on the fly (0.1307 / 0.3081)."""
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    raw = root / "MNIST" / "raw"
    if not download and not all((raw / f).is_file() for f in MNIST_FILES):
        raise FileNotFoundError(_mnist_missing_message(root))
    from torchvision import datasets

    if download:
        guarded_download(
            "MNIST",
            root,
            lambda: datasets.MNIST(str(root), train=True, download=True),
            prepare_hint="Offline, build the root from the four (gzipped) IDX files with "
            "pml_anchors.app.data.prepare_mnist_root(idx_dir, root).",
        )
    pools = []
    for train in (True, False):
        ds = datasets.MNIST(str(root), train=train, download=False)
        pools.append(TensorImageDataset(ds.data.unsqueeze(1), ds.targets, mean=MNIST_MEAN, std=MNIST_STD))
    return make_splits(
        name="mnist",
        protocol=protocol,
        seed=seed,
        train_pool=pools[0],
        test_pool=pools[1],
        train_pool_eval=pools[0],
        class_names=[str(i) for i in range(10)],
        input_shape=(1, 28, 28),
        num_train_classes=num_train_classes,
        open_set_test=open_set_test,
        info={"root": str(root), "mean": MNIST_MEAN, "std": MNIST_STD},
    )
