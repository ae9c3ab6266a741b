"""``cub``, ``cars196``, ``sop``, ``inaturalist2018``: the deep-metric-learning benchmarks, read (and downloaded) by
pytorch-metric-learning's own dataset classes with their standard class-disjoint splits.

``open_set`` is PML's split as it is: CUB-200-2011 classes 1–100 / 101–200, Cars-196 1–98 / 99–196, Stanford Online
Products ``Ebay_train.txt`` / ``Ebay_test.txt`` (11,318 / 11,316 products), iNaturalist 2018 the Smooth-AP split
files (``Inaturalist_{train,test}_set1.txt``). ``same_class`` (CUB, Cars, iNaturalist) is a seeded per-class split of
all the images (:func:`~pml_anchors.app.data.splits.stratified_split`, ``test_fraction``). Before PML's class is
built the layout under the root is checked, so a missing, misplaced or half-extracted dataset is one error naming
the files expected where; ``download=True`` runs PML's download through
:func:`~pml_anchors.app.data.downloads.guarded_download`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .containers import DatasetSplits, LabeledSubset, default_data_root, subset
from .downloads import DatasetDownloadError, guarded_download
from .imagefolder import IMAGENET_MEAN, IMAGENET_STD, imagefolder_transforms
from .splits import make_splits, stratified_split

__all__ = ["DML_DATASETS", "build_cars196", "build_cub", "build_inaturalist2018", "build_sop"]


@dataclass(frozen=True)
class _Family:
    """What differs between the four datasets: PML's class, the files it reads, the class names."""

    name: str  # the registry name
    title: str  # the dataset's own name, for messages
    pml_class: str  # the class in pytorch_metric_learning.datasets
    required: tuple[str, ...]  # paths under the root that PML reads (a trailing / marks a folder)
    source: str  # where PML downloads it from / how to get it by hand
    names: Callable[[Path, Any], dict[int, str]]  # (root, PML dataset) -> {raw label: class name}
    same_class_refused: str = ""  # why same_class is refused ("" = allowed)


def _folder_names(root: Path, ds) -> dict[int, str]:
    """The folder each class's images are in (CUB: ``001.Black_footed_Albatross``)."""
    return {int(label): Path(path).parent.name for path, label in zip(ds.paths, ds.labels)}


def _cars_names(root: Path, ds) -> dict[int, str]:
    """``names.csv``, one class name a line, class ``i`` on line ``i`` (as PML reads it)."""
    lines = [line.strip() for line in (root / "names.csv").read_text().splitlines()]
    return {int(label): lines[int(label) - 1] for label in set(ds.labels)}


def _label_ids(root: Path, ds) -> dict[int, str]:
    return {int(label): str(int(label)) for label in set(ds.labels)}


CUB = _Family(
    "cub",
    "CUB-200-2011",
    "CUB",
    ("CUB_200_2011/images.txt", "CUB_200_2011/image_class_labels.txt", "CUB_200_2011/images/"),
    "PML downloads CUB_200_2011.tgz from data.caltech.edu; by hand, extract that archive into the root",
    _folder_names,
)
CARS196 = _Family(
    "cars196",
    "Cars-196",
    "Cars196",
    ("names.csv", "anno_train.csv", "anno_test.csv", "car_data/car_data/train/", "car_data/car_data/test/"),
    "PML downloads Kaggle's 'jutrera/stanford-car-dataset-by-classes-folder' zip; by hand, extract that zip into "
    "the root",
    _cars_names,
)
SOP = _Family(
    "sop",
    "Stanford Online Products",
    "StanfordOnlineProducts",
    ("Stanford_Online_Products/Ebay_train.txt", "Stanford_Online_Products/Ebay_test.txt"),
    "PML downloads Stanford_Online_Products.zip from Google Drive; by hand, extract that zip into the root",
    _label_ids,
    same_class_refused="its 22,634 classes are products with 2 to 12 images each (5.3 on average), so a per-class "
    "split leaves one or two test images per class; the benchmark is class-disjoint",
)
INATURALIST2018 = _Family(
    "inaturalist2018",
    "iNaturalist 2018",
    "INaturalist2018",
    (
        "train2018.json",
        "val2018.json",
        "Inat_dataset_splits/Inaturalist_train_set1.txt",
        "Inat_dataset_splits/Inaturalist_test_set1.txt",
        "train_val2018/",
    ),
    "PML downloads train_val2018.tar.gz (about 120 GB), train2018.json.tar.gz and val2018.json.tar.gz from the "
    "competition's S3 bucket and the Smooth-AP split files from Google Drive; by hand, extract all four into the root",
    _label_ids,
)

#: registry name -> family
DML_DATASETS = {f.name: f for f in (CUB, CARS196, SOP, INATURALIST2018)}


# ------------------------------------------------------------------------------------------ layout checks


def _expected(family: _Family, root: Path) -> str:
    return f"expected {', '.join(family.required)} under {root}"


def _misplaced_hint(family: _Family, root: Path) -> str:
    """Where the files are instead, when they are somewhere near ``root``."""
    first = Path(family.required[0].rstrip("/"))
    if len(first.parts) > 1 and root.name == first.parts[0] and (root / Path(*first.parts[1:])).exists():
        return f" --data-root points inside the dataset: pass its parent {root.parent}."
    if root.is_dir():
        for child in sorted(p for p in root.iterdir() if p.is_dir()):
            if (child / first).exists():
                return f" The files are one level down: pass --data-root {child}."
        archives = sorted(p.name for p in root.iterdir() if p.name.endswith((".tgz", ".tar.gz", ".zip", ".tar")))
        if archives:
            return f" {root} holds {', '.join(archives)}: extract it there."
        if family is CARS196 and any((root / n).exists() for n in ("cars_train", "cars_test", "devkit")):
            return " This is the original Stanford layout (cars_train/, devkit/), not the Kaggle one PML reads."
    return ""


def _check_layout(family: _Family, root: Path, download: bool) -> None:
    """One ``FileNotFoundError`` naming what is missing where, before PML's class is built."""
    how = f"{family.source}, or pass --download (download=True) with a new or empty folder."
    if not root.is_dir():
        raise FileNotFoundError(
            f"{family.title} not found: {root} is not a directory ({_expected(family, root)}). {how}"
        )
    missing = [
        rel for rel in family.required if not (root / rel).exists() or rel.endswith("/") != (root / rel).is_dir()
    ]
    if missing:
        which = "none of them is there" if len(missing) == len(family.required) else f"missing {', '.join(missing)}"
        note = " (--download only fills a new or empty folder)" if download else ""
        raise FileNotFoundError(
            f"{family.title} not found: {_expected(family, root)}, {which}{note}.{_misplaced_hint(family, root)} {how}"
        )


def _missing_images(paths: Sequence[str]) -> list[str]:
    """The ``paths`` that are not files, listing each folder once (fast for iNaturalist's 460k images)."""
    by_dir: dict[str, list[str]] = {}
    for path in paths:
        by_dir.setdefault(os.path.dirname(path), []).append(path)
    missing = []
    for folder, files in by_dir.items():
        try:
            present = set(os.listdir(folder))
        except OSError:
            present = set()
        missing += [p for p in files if os.path.basename(p) not in present]
    return missing


def _read(family: _Family, root: Path, split: str, transform) -> Any:
    """PML's dataset for ``split``, with its index files' and images' problems stated as one error."""
    from pytorch_metric_learning import datasets

    index = ", ".join(rel for rel in family.required if not rel.endswith("/"))
    try:
        ds = getattr(datasets, family.pml_class)(str(root), split=split, transform=transform, download=False)
    except (OSError, ValueError, KeyError, IndexError) as exc:  # a truncated or foreign index file
        raise ValueError(
            f"could not read {family.title}'s index files ({index}) under {root}: {type(exc).__name__}: {exc}. "
            "They look truncated or from another version: extract the archive again."
        ) from exc
    if not ds.paths:
        raise ValueError(f"{family.title} under {root}: its index files ({index}) list no image for split {split!r}")
    missing = _missing_images(ds.paths)
    if missing:
        raise FileNotFoundError(
            f"{family.title} under {root} is incomplete: {len(missing)} of the {len(ds.paths)} images listed in "
            f"{index} are missing (e.g. {missing[0]}); the archive looks half-extracted: extract it again."
        )
    return ds


# ------------------------------------------------------------------------------------------ download


def _download(family: _Family, root: Path) -> None:
    """PML's download into ``root`` (new or empty); on failure nothing it or we created is left, parents included."""
    from pytorch_metric_learning import datasets

    cls = getattr(datasets, family.pml_class)
    new_parents = [p for p in root.parents if not p.exists()]  # nearest first
    try:
        guarded_download(
            family.title,
            root,
            lambda: cls(str(root), split="train", download=True),
            prepare_hint=f"{family.title}: {_expected(family, root)}; {family.source}.",
        )
    except DatasetDownloadError:
        for parent in new_parents:
            with suppress(OSError):
                parent.rmdir()
        raise


# ------------------------------------------------------------------------------------------ building


def _to_rgb(image):
    """PML's datasets open images as they are; a few CUB / Cars images are greyscale or CMYK."""
    return image.convert("RGB")


def _transforms(image_size: int, augment: bool, resize_size: int):
    from torchvision import transforms as T

    train_tf, eval_tf = imagefolder_transforms(image_size, augment, resize_size)
    rgb_eval = T.Compose([T.Lambda(_to_rgb), eval_tf])
    return (rgb_eval if train_tf is eval_tf else T.Compose([T.Lambda(_to_rgb), train_tf])), rgb_eval


def _relabel(ds, position: dict[int, int]) -> Dataset:
    return LabeledSubset(ds, torch.arange(len(ds.labels)), [position[int(label)] for label in ds.labels])


def _build(
    family: _Family,
    *,
    data_root,
    protocol: str,
    seed: int,
    download: bool,
    image_size: int,
    augment: bool,
    resize_size: int | None,
    test_fraction: float | None,
) -> DatasetSplits:
    if protocol == "same_class" and family.same_class_refused:
        raise ValueError(
            f"dataset {family.name!r} has no same_class protocol: {family.same_class_refused}. "
            "Use protocol='open_set' (--protocol open_set), its standard split."
        )
    if protocol == "open_set" and test_fraction is not None:
        raise ValueError(
            f"test_fraction only applies to protocol='same_class'; {family.name!r} open_set is PML's standard split"
        )
    image_size = int(image_size)
    resize_size = image_size if resize_size is None else int(resize_size)
    if resize_size < image_size:
        raise ValueError(f"resize_size ({resize_size}) must be at least image_size ({image_size}), the centre crop")
    root = (Path(data_root).expanduser() if data_root is not None else default_data_root() / family.name).absolute()
    if download and (not root.exists() or (root.is_dir() and not any(root.iterdir()))):
        _download(family, root)
    _check_layout(family, root, download)

    train_tf, eval_tf = _transforms(image_size, augment, resize_size)
    info: dict[str, Any] = {"root": str(root), "source": f"pytorch_metric_learning.datasets.{family.pml_class}"}
    info.update(image_size=image_size, resize_size=resize_size, augment=bool(augment))
    info.update(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    if protocol == "same_class":
        full = _read(family, root, "train+test", train_tf)
        full_eval = full if train_tf is eval_tf else copy.copy(full)  # the same images, parsed once
        full_eval.transform = eval_tf
        names = family.names(root, full)
        position = {label: i for i, label in enumerate(sorted(names))}
        labels = torch.tensor([position[int(label)] for label in full.labels])
        fraction = 0.25 if test_fraction is None else float(test_fraction)
        tr_idx, te_idx = stratified_split(labels, fraction, seed)
        train_pool = subset(_relabel(full, position), tr_idx)
        test_pool = subset(_relabel(full_eval, position), te_idx)
        info["split"] = f"stratified per class, test_fraction={fraction}"
    else:
        train, test = _read(family, root, "train", train_tf), _read(family, root, "test", eval_tf)
        names = {**family.names(root, train), **family.names(root, test)}
        position = {label: i for i, label in enumerate(sorted(names))}
        train_pool, test_pool = _relabel(train, position), _relabel(test, position)
        info["split"] = f"PML's {family.pml_class} train/test"
    return make_splits(
        name=family.name,
        protocol=protocol,
        seed=seed,
        train_pool=train_pool,
        test_pool=test_pool,
        class_names=[names[label] for label in sorted(names)],
        input_shape=(3, image_size, image_size),
        info=info,
    )


def build_cub(
    *,
    data_root=None,
    protocol: str,
    seed: int,
    download: bool = False,
    image_size: int = 64,
    resize_size: int | None = None,
    augment: bool = False,
    test_fraction: float | None = None,
) -> DatasetSplits:
    """CUB-200-2011 (11,788 bird photos, 200 species) via PML's ``CUB``; root holds ``CUB_200_2011/``.

    ``open_set``: species 1–100 train (labels 0–99), 101–200 test. ``same_class``: every species split
    ``test_fraction`` (default 0.25) / rest by ``seed``. Class names are the image folders
    (``001.Black_footed_Albatross``). Transforms as ``imagefolder``: ``image_size`` 64 by default (CPU); the papers'
    ``image_size=224, resize_size=256, augment=True`` is the opt-in. Default root: ``default_data_root()/cub``.
    """
    return _build(CUB, **locals())


def build_cars196(
    *,
    data_root=None,
    protocol: str,
    seed: int,
    download: bool = False,
    image_size: int = 64,
    resize_size: int | None = None,
    augment: bool = False,
    test_fraction: float | None = None,
) -> DatasetSplits:
    """Cars-196 (16,185 car photos, 196 models) via PML's ``Cars196``, Kaggle's by-class-folder layout.

    ``open_set``: models 1–98 train (labels 0–97), 99–196 test, from both of the layout's train/ and test/ halves.
    ``same_class``: every model split ``test_fraction`` (default 0.25) / rest by ``seed``. Class names from
    ``names.csv`` (``AM General Hummer SUV 2000``). Transforms and options as :func:`build_cub`.
    """
    return _build(CARS196, **locals())


def build_sop(
    *,
    data_root=None,
    protocol: str,
    seed: int,
    download: bool = False,
    image_size: int = 64,
    resize_size: int | None = None,
    augment: bool = False,
    test_fraction: float | None = None,
) -> DatasetSplits:
    """Stanford Online Products (120,053 photos of 22,634 products) via PML's ``StanfordOnlineProducts``.

    ``open_set`` only: ``Ebay_train.txt`` (11,318 products, 59,551 images) train, ``Ebay_test.txt`` (11,316,
    60,502) test. ``same_class`` is refused (a ``ValueError``): with 5.3 images a product a per-class split leaves one
    or two test images per class. Class names are the product ids. Transforms and options as :func:`build_cub`.
    """
    return _build(SOP, **locals())


def build_inaturalist2018(
    *,
    data_root=None,
    protocol: str,
    seed: int,
    download: bool = False,
    image_size: int = 64,
    resize_size: int | None = None,
    augment: bool = False,
    test_fraction: float | None = None,
) -> DatasetSplits:
    """iNaturalist 2018 as PML (after Smooth-AP) defines it, via PML's ``INaturalist2018``.

    ``open_set``: the Smooth-AP split files, 5,690 species (325,846 images) train, 2,452 (136,093) test.
    ``same_class``: the images of both files split per species, ``test_fraction`` (default 0.25) / rest by ``seed``
    (about 57 images a species, long-tailed). Class names are the category ids. Transforms and options as
    :func:`build_cub`.
    """
    return _build(INATURALIST2018, **locals())
