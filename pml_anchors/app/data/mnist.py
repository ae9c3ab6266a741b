"""The MNIST family through torchvision (1×28×28): ``mnist``, ``fashion_mnist``, ``kmnist`` and ``emnist``.

Each is read once into ``uint8`` tensors by its torchvision class (``MNIST``, ``FashionMNIST``, ``KMNIST``,
``EMNIST``) from a torchvision root (``<root>/<Class>/raw/*-ubyte``) and normalised on the fly. Fashion-MNIST, KMNIST
and EMNIST also take a plain folder of their (gzipped) IDX files as ``data_root``: it is prepared once into a cache
root under :func:`default_data_root` (never written into). ``--download`` goes through :func:`guarded_download`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .containers import DatasetSplits, TensorImageDataset, default_data_root
from .downloads import guarded_download
from .mnist_idx import MNIST_FILES, check_idx_file, emnist_files, find_idx_file, prepare_idx_root
from .pixels import channel_stats
from .splits import make_splits

__all__ = [
    "EMNIST_DEFAULT_SPLIT",
    "MNIST_MEAN",
    "MNIST_STD",
    "build_emnist",
    "build_fashion_mnist",
    "build_kmnist",
    "build_mnist",
    "prepared_idx_cache",
]

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
#: the split of the RePoNet paper's EMNIST experiments (47 classes: digits and letters, similar cases merged)
EMNIST_DEFAULT_SPLIT = "balanced"


@dataclass(frozen=True)
class _IdxSpec:
    name: str  # registry name
    title: str  # in messages
    folder: str  # the torchvision class, and its folder under the root
    from_idx_dir: bool  # data_root may be a folder of the (gzipped) IDX files


_MNIST = _IdxSpec("mnist", "MNIST", "MNIST", False)
_FASHION = _IdxSpec("fashion_mnist", "Fashion-MNIST", "FashionMNIST", True)
_KMNIST = _IdxSpec("kmnist", "KMNIST", "KMNIST", True)
_EMNIST = _IdxSpec("emnist", "EMNIST", "EMNIST", True)


def prepared_idx_cache(idx_dir: str | Path, folder: str) -> Path:
    """The cache root that a folder of ``folder``'s IDX files is prepared into: under :func:`default_data_root`
    (``$PML_ANCHORS_DATA``), one per source folder."""
    digest = hashlib.sha256(str(Path(idx_dir).expanduser().resolve()).encode()).hexdigest()[:12]
    return default_data_root() / "prepared" / f"{folder}-{digest}"


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


def _missing_message(spec: _IdxSpec, root: Path, files: Sequence[str]) -> str:
    if spec is _MNIST:
        return _mnist_missing_message(root)
    raw = root / spec.folder / "raw"
    missing = [f for f in files if not (raw / f).is_file()]
    return (
        f"{spec.title} not found: expected the uncompressed IDX files {', '.join(files)} in {raw} (missing: "
        f"{', '.join(missing)}), or those four files, gzipped or plain, directly in {root}. Pass download=True "
        f"(the CLI's --download) to let torchvision download {spec.title} into {root} (needs internet)."
    )


def _resolve_root(spec: _IdxSpec, data_root, download: bool, files: Sequence[str]) -> tuple[Path, dict]:
    """The torchvision root to read (a prepared cache root when ``data_root`` is a folder of IDX files)."""
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    raw = root / spec.folder / "raw"
    if download or all((raw / f).is_file() for f in files):
        return root, {"root": str(root)}
    if spec.from_idx_dir and root.is_dir() and all(find_idx_file(root, f) is not None for f in files):
        cache = prepared_idx_cache(root, spec.folder)
        try:
            prepare_idx_root(root, cache, folder=spec.folder, files=files)
        except OSError as error:
            raise OSError(
                f"could not prepare {spec.title} from the IDX files in {root} into the cache {cache}: {error} "
                "(set PML_ANCHORS_DATA to a writable folder)"
            ) from error
        return cache, {"root": str(cache), "prepared_from": str(root)}
    raise FileNotFoundError(_missing_message(spec, root, files))


def _check_raw(spec: _IdxSpec, root: Path, files: Sequence[str]) -> None:
    raw = root / spec.folder / "raw"
    for name in files:
        try:
            check_idx_file(raw / name)
        except (ValueError, OSError) as error:
            raise OSError(
                f"{spec.title} in {raw} is incomplete or damaged: {error}. Delete {raw} and pass --download, or "
                "put the original files there again."
            ) from error


def _build_idx(
    spec: _IdxSpec,
    *,
    data_root,
    protocol: str,
    seed: int,
    download: bool,
    num_train_classes: int | None,
    open_set_test: str,
    files: Sequence[str] = MNIST_FILES,
    tv_kwargs: dict | None = None,
) -> DatasetSplits:
    from torchvision import datasets

    tv_class = getattr(datasets, spec.folder)
    tv_kwargs = dict(tv_kwargs or {})
    root, info = _resolve_root(spec, data_root, download, files)
    if download:
        hint = "Offline, put the four (gzipped) IDX files in a folder and pass that folder as data_root."
        if spec is _MNIST:
            hint = "Offline, build the root from the four (gzipped) IDX files with "
            hint += "pml_anchors.app.data.prepare_mnist_root(idx_dir, root)."
        guarded_download(
            spec.title, root, lambda: tv_class(str(root), train=True, download=True, **tv_kwargs), prepare_hint=hint
        )
    _check_raw(spec, root, files)
    pools, classes = [], []
    for train in (True, False):
        ds = tv_class(str(root), train=train, download=False, **tv_kwargs)
        images = ds.data.transpose(1, 2) if spec is _EMNIST else ds.data  # EMNIST stores its images transposed
        pools.append((images.unsqueeze(1).contiguous(), ds.targets))
        classes = [str(c) for c in ds.classes]
    if spec is _MNIST:
        mean, std, classes = MNIST_MEAN, MNIST_STD, [str(i) for i in range(10)]
    else:
        (mean,), (std,) = channel_stats(pools[0][0])
    train_pool, test_pool = (TensorImageDataset(x, y, mean=mean, std=std) for x, y in pools)
    return make_splits(
        name=spec.name,
        protocol=protocol,
        seed=seed,
        train_pool=train_pool,
        test_pool=test_pool,
        train_pool_eval=train_pool,
        class_names=classes,
        input_shape=(1, 28, 28),
        num_train_classes=num_train_classes,
        open_set_test=open_set_test,
        info={**info, **tv_kwargs, "mean": mean, "std": std},
    )


def build_mnist(
    *,
    data_root=None,
    protocol: str,
    seed: int,
    download: bool = False,
    num_train_classes: int | None = None,
    open_set_test: str = "test",
) -> DatasetSplits:
    """torchvision MNIST read once into uint8 tensors, normalised on the fly (0.1307 / 0.3081).

    ``data_root``: a torchvision root holding ``MNIST/raw/*-ubyte`` (see :func:`prepare_mnist_root`).
    """
    return _build_idx(_MNIST, **locals())


def build_fashion_mnist(
    *,
    data_root=None,
    protocol: str,
    seed: int,
    download: bool = False,
    num_train_classes: int | None = None,
    open_set_test: str = "test",
) -> DatasetSplits:
    """torchvision ``FashionMNIST`` (10 clothing classes), normalised with its training split's mean/std.

    ``data_root``: a torchvision root (``FashionMNIST/raw/*-ubyte``) or a folder of the four (gzipped) IDX files.
    """
    return _build_idx(_FASHION, **locals())


def build_kmnist(
    *,
    data_root=None,
    protocol: str,
    seed: int,
    download: bool = False,
    num_train_classes: int | None = None,
    open_set_test: str = "test",
) -> DatasetSplits:
    """torchvision ``KMNIST`` (Kuzushiji-MNIST, 10 hiragana), normalised with its training split's mean/std.

    ``data_root``: a torchvision root (``KMNIST/raw/*-ubyte``) or a folder of the four (gzipped) IDX files.
    """
    return _build_idx(_KMNIST, **locals())


def build_emnist(
    *,
    data_root=None,
    protocol: str,
    seed: int,
    download: bool = False,
    split: str = EMNIST_DEFAULT_SPLIT,
    num_train_classes: int | None = None,
    open_set_test: str = "test",
) -> DatasetSplits:
    """torchvision ``EMNIST`` split ``split`` (default ``balanced``: 47 classes, as in the RePoNet paper), upright.

    EMNIST's files store every image transposed; they are transposed back. Normalised with the split's training
    mean/std. ``data_root``: a torchvision root (``EMNIST/raw/emnist-<split>-*-ubyte``) or a folder of those four
    (gzipped) IDX files, e.g. the ``gzip/`` folder of NIST's ``gzip.zip``. Labels follow torchvision (``letters``:
    1..26, remapped to 0..25 by the protocol).
    """
    from torchvision import datasets

    if split not in datasets.EMNIST.splits:
        raise ValueError(f"EMNIST split must be one of {', '.join(datasets.EMNIST.splits)}; got {split!r}")
    return _build_idx(
        _EMNIST,
        data_root=data_root,
        protocol=protocol,
        seed=seed,
        download=download,
        num_train_classes=num_train_classes,
        open_set_test=open_set_test,
        files=emnist_files(split),
        tv_kwargs={"split": split},
    )
