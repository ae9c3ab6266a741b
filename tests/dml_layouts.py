"""Miniatures of the DML benchmarks in the on-disk layout PML's dataset classes read after download and extraction.

CUB and Cars are split by class id, so their miniatures keep every class (one or two tiny JPEGs each); SOP and
iNaturalist are split by their list files, so a few classes suffice. Each writer returns what a test checks against.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def jpeg(path: Path, seed: int, *, size: tuple[int, int] = (12, 10), mode: str = "RGB") -> None:
    """A tiny JPEG whose colour depends on ``seed`` (``mode="L"``: greyscale, as a few CUB / Cars images are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)
    Image.new(mode, size, colour[0] if mode == "L" else colour).save(path, format="JPEG")


def write_cub(root: Path, per_class: int = 2) -> list[str]:
    """``root/CUB_200_2011/`` with its index files and ``images/<NNN.Name>/<file>.jpg`` for all 200 classes.

    Image 1 is greyscale. Returns the 200 class folder names (class id ``i`` is entry ``i - 1``).
    """
    base = root / "CUB_200_2011"
    folders = [f"{c:03d}.Bird_{c}" for c in range(1, 201)]
    images, labels, split = [], [], []
    for c, folder in enumerate(folders, start=1):
        for k in range(per_class):
            i = len(images) + 1
            rel = f"{folder}/Bird_{c}_{k:04d}_{i}.jpg"
            jpeg(base / "images" / rel, i, mode="L" if i == 1 else "RGB")
            images.append(f"{i} {rel}")
            labels.append(f"{i} {c}")
            split.append(f"{i} {k % 2}")
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (base / "classes.txt").write_text("".join(f"{c} {f}\n" for c, f in enumerate(folders, start=1)))
    return folders


def write_cars196(root: Path) -> list[str]:
    """Kaggle's ``stanford-car-dataset-by-classes-folder``: ``names.csv``, ``anno_{train,test}.csv`` (no header:
    ``file,x1,y1,x2,y2,class``) and ``car_data/car_data/{train,test}/<name, / as ->/<file>.jpg``, one image of
    every class in each half. Class 5's name holds a ``/``. Returns the 196 names."""
    names = [f"Maker Model {c} Sedan 2012" for c in range(1, 197)]
    names[4] = "Ram C/V Cargo Van Minivan 2012"
    (root / "names.csv").parent.mkdir(parents=True, exist_ok=True)
    (root / "names.csv").write_text("\n".join(names) + "\n")
    for half, offset in (("train", 0), ("test", 1000)):
        rows = []
        for c, name in enumerate(names, start=1):
            file = f"{offset + c:05d}.jpg"
            jpeg(root / "car_data" / "car_data" / half / name.replace("/", "-") / file, offset + c)
            rows.append(f"{file},1,2,11,9,{c}")
        (root / f"anno_{half}.csv").write_text("\n".join(rows) + "\n")
    return names


#: the SOP miniature: (class_id, super_class_id, super-class folder, images) per split, ids as in the real files
SOP_TRAIN = [
    (1, 1, "bicycle_final", 3),
    (2, 1, "bicycle_final", 2),
    (3, 2, "cabinet_final", 2),
    (4, 2, "cabinet_final", 2),
]
SOP_TEST = [(5, 1, "bicycle_final", 2), (6, 2, "cabinet_final", 3), (7, 3, "chair_final", 2)]


def write_sop(root: Path) -> None:
    """``root/Stanford_Online_Products/`` with ``Ebay_{train,test,info}.txt`` (header ``image_id class_id
    super_class_id path``) and ``<super>_final/<product>_<k>.JPG``."""
    base = root / "Stanford_Online_Products"
    base.mkdir(parents=True, exist_ok=True)
    image_id, info = 0, []
    for split, rows in (("train", SOP_TRAIN), ("test", SOP_TEST)):
        lines = ["image_id class_id super_class_id path"]
        for class_id, super_id, folder, n in rows:
            for k in range(n):
                image_id += 1
                rel = f"{folder}/{100000 + class_id}_{k}.JPG"
                jpeg(base / rel, image_id)
                lines.append(f"{image_id} {class_id} {super_id} {rel}")
        (base / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
        info += lines[1:]
    (base / "Ebay_info.txt").write_text("\n".join(["image_id class_id super_class_id path", *info]) + "\n")


#: the iNaturalist miniature: category id -> (supercategory, images), and which categories each split file lists
INAT_CATEGORIES = {0: ("Plantae", 2), 3: ("Plantae", 3), 7: ("Aves", 2), 11: ("Insecta", 2), 12: ("Aves", 3)}
INAT_TRAIN, INAT_TEST = (0, 7, 12), (3, 11)


def write_inaturalist2018(root: Path) -> None:
    """``train2018.json`` / ``val2018.json`` (COCO-style ``images``, ``annotations``, ``categories``), the Smooth-AP
    split files ``Inat_dataset_splits/Inaturalist_{train,test}_set1.txt`` and ``train_val2018/<super>/<id>/*.jpg``;
    a category's images alternate between the two JSON files, as the official train/val halves do."""
    root.mkdir(parents=True, exist_ok=True)
    coco: dict[str, dict[str, list]] = {
        name: {"images": [], "annotations": [], "categories": []} for name in ("train", "val")
    }
    listed: dict[int, list[str]] = {}
    image_id = 0
    for cat, (supercategory, n) in INAT_CATEGORIES.items():
        for part in coco.values():
            part["categories"].append({"id": cat, "name": f"Species {cat}", "supercategory": supercategory})
        for k in range(n):
            image_id += 1
            rel = f"train_val2018/{supercategory}/{cat}/{image_id:08x}.jpg"
            jpeg(root / rel, image_id)
            part = coco["train" if k % 2 == 0 else "val"]
            part["images"].append({"id": image_id, "file_name": rel, "width": 12, "height": 10})
            part["annotations"].append({"id": image_id, "image_id": image_id, "category_id": cat})
            listed.setdefault(cat, []).append(rel)
    for name, part in coco.items():
        (root / f"{name}2018.json").write_text(json.dumps(part))
    splits = root / "Inat_dataset_splits"
    splits.mkdir()
    for split, cats in (("train", INAT_TRAIN), ("test", INAT_TEST)):
        (splits / f"Inaturalist_{split}_set1.txt").write_text("".join(f"{p}\n" for c in cats for p in listed[c]))


WRITERS = {"cub": write_cub, "cars196": write_cars196, "sop": write_sop, "inaturalist2018": write_inaturalist2018}
