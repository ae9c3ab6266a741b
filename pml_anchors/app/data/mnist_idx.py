"""torchvision roots for the MNIST-format datasets (MNIST, Fashion-MNIST, KMNIST, EMNIST) from IDX files, offline.

:func:`prepare_idx_root` copies or decompresses a dataset's IDX files (raw or ``.gz``) from a folder into
``ROOT/<Folder>/raw/``, where ``torchvision.datasets.<Folder>(ROOT, download=False)`` reads them, checking each
file's IDX header and, when the source folder has a ``SHA256SUMS`` file, its checksum. :func:`prepare_mnist_root` is
the MNIST case; :func:`emnist_files` names an EMNIST split's files.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import struct
from collections.abc import Sequence
from pathlib import Path

__all__ = ["MNIST_FILES", "check_idx_file", "emnist_files", "find_idx_file", "prepare_idx_root", "prepare_mnist_root"]

#: the four files of MNIST, Fashion-MNIST and KMNIST (what torchvision reads from ``<Folder>/raw/``)
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_MAGIC = {"images": 2051, "labels": 2049}


def emnist_files(split: str) -> tuple[str, ...]:
    """The four IDX files of EMNIST split ``split`` (``balanced``, ``byclass``, ...), as torchvision names them."""
    return tuple(
        f"emnist-{split}-{part}-{kind}-ubyte" for part in ("train", "test") for kind in ("images-idx3", "labels-idx1")
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_sums(path: Path) -> dict[str, str]:
    sums = {}
    for line in path.read_text().splitlines():
        parts = line.strip().split()
        if len(parts) >= 2:
            sums[parts[-1].lstrip("*")] = parts[0].lower()
    return sums


def find_idx_file(idx_dir: Path, name: str) -> Path | None:
    """``idx_dir/name`` gzipped or plain (also the ``train-images.idx3-ubyte`` spelling), or ``None``."""
    dotted = name.replace("-idx", ".idx")
    for cand in (name + ".gz", name, dotted + ".gz", dotted):
        if (idx_dir / cand).is_file():
            return idx_dir / cand
    return None


def _uncompressed_size(src: Path) -> int:
    if src.suffix != ".gz":
        return src.stat().st_size
    with open(src, "rb") as f:  # gzip trailer: ISIZE = uncompressed size mod 2**32
        f.seek(-4, os.SEEK_END)
        return struct.unpack("<I", f.read(4))[0]


def check_idx_file(path: Path, name: str | None = None) -> None:
    """Raise ``ValueError`` unless ``path`` is a complete uncompressed IDX file (magic number and size)."""
    name = path.name if name is None else name
    kind = "images" if "images" in name else "labels"
    with open(path, "rb") as f:
        header = f.read(16 if kind == "images" else 8)
    if len(header) < 8 or struct.unpack(">I", header[:4])[0] != _IDX_MAGIC[kind]:
        raise ValueError(f"{path} is not an uncompressed IDX {kind} file (bad magic number)")
    if len(header) < (16 if kind == "images" else 8):
        raise ValueError(f"{path} is truncated (its IDX header is incomplete)")
    dims = struct.unpack(">III", header[4:16]) if kind == "images" else struct.unpack(">I", header[4:8])
    expected = len(header) + math.prod(dims)
    if path.stat().st_size != expected:
        raise ValueError(f"{path} has {path.stat().st_size} bytes, its IDX header implies {expected} (truncated?)")


def _up_to_date(dest: Path, src: Path) -> bool:
    return (
        dest.is_file()
        and dest.stat().st_size == _uncompressed_size(src)
        and dest.stat().st_mtime_ns >= src.stat().st_mtime_ns
    )


def prepare_idx_root(
    idx_dir: str | os.PathLike,
    root: str | os.PathLike,
    *,
    folder: str = "MNIST",
    files: Sequence[str] = MNIST_FILES,
    verify: bool = True,
) -> Path:
    """Build a torchvision root for ``torchvision.datasets.<folder>`` from a folder of (gzipped or plain) IDX files.

    Writes ``<root>/<folder>/raw/<file>`` (uncompressed) for each of ``files``, skipping files already there with
    the right size and newer than their source. With ``verify`` and a ``SHA256SUMS`` file in ``idx_dir``, every
    listed source file that has to be extracted is checked first (mismatch → ``ValueError``), and every written
    file's IDX header is checked before it takes its final name, so an interrupted or bad extraction leaves no
    file that looks complete. Returns ``Path(root)``, to pass as ``data_root``. E.g. Fashion-MNIST:
    ``prepare_idx_root(idx_dir, root, folder="FashionMNIST")``; EMNIST: ``files=emnist_files("balanced")``.
    """
    idx_dir, root = Path(idx_dir).expanduser(), Path(root).expanduser()
    if not idx_dir.is_dir():
        raise FileNotFoundError(f"IDX folder {idx_dir} does not exist")
    found = {name: find_idx_file(idx_dir, name) for name in files}
    missing = [n for n, s in found.items() if s is None]
    if missing:
        raise FileNotFoundError(f"{idx_dir} lacks {folder} IDX files (plain or .gz): {', '.join(missing)}")
    sources = {n: s for n, s in found.items() if s is not None}
    sums_file = idx_dir / "SHA256SUMS"
    sums = _read_sums(sums_file) if verify and sums_file.is_file() else {}
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, src in sources.items():
        dest = raw / name
        if _up_to_date(dest, src):
            continue
        if src.name in sums and _sha256(src) != sums[src.name]:
            raise ValueError(f"SHA-256 of {src} does not match {sums_file}")
        tmp = dest.with_name(f"{dest.name}.{os.getpid()}.part")  # per process: parallel ranks may prepare at once
        try:
            opener = gzip.open if src.suffix == ".gz" else open
            with opener(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
            check_idx_file(tmp, name)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    return root


def prepare_mnist_root(idx_dir: str | os.PathLike, root: str | os.PathLike, *, verify: bool = True) -> Path:
    """Build a torchvision-readable MNIST root (``<root>/MNIST/raw/``) from a folder of (gzipped or plain) IDX files.

    :func:`prepare_idx_root` with ``folder="MNIST"`` and the four :data:`MNIST_FILES`.
    """
    return prepare_idx_root(idx_dir, root, folder="MNIST", files=MNIST_FILES, verify=verify)
