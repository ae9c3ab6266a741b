"""A torchvision ``MNIST`` root from the four original IDX files, offline (``pml-anchors`` never downloads them).

:func:`prepare_mnist_root` copies or decompresses ``train-images-idx3-ubyte`` and its three siblings (raw or
``.gz``) into ``ROOT/MNIST/raw/``, where ``torchvision.datasets.MNIST(ROOT, download=False)`` reads them, checking
each file's IDX header and, when the source folder has a ``SHA256SUMS`` file, its checksum.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import struct
from pathlib import Path

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_MAGIC = {"images": 2051, "labels": 2049}


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


def _find_idx_source(idx_dir: Path, name: str) -> Path | None:
    dotted = name.replace("-idx", ".idx")  # e.g. train-images.idx3-ubyte
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


def _check_idx(path: Path, name: str) -> None:
    kind = "images" if "images" in name else "labels"
    with open(path, "rb") as f:
        header = f.read(16 if kind == "images" else 8)
    if len(header) < 8 or struct.unpack(">I", header[:4])[0] != _IDX_MAGIC[kind]:
        raise ValueError(f"{path} is not an IDX {kind} file (bad magic number)")
    dims = struct.unpack(">III", header[4:16]) if kind == "images" else struct.unpack(">I", header[4:8])
    expected = len(header) + math.prod(dims)
    if path.stat().st_size != expected:
        raise ValueError(f"{path} has {path.stat().st_size} bytes, its header implies {expected}")


def prepare_mnist_root(idx_dir: str | os.PathLike, root: str | os.PathLike, *, verify: bool = True) -> Path:
    """Build a torchvision-readable MNIST root from a folder of (gzipped or plain) IDX files.

    Writes ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (uncompressed),
    skipping files already there with the right size. With ``verify`` and a ``SHA256SUMS`` file in
    ``idx_dir``, every listed source file that has to be extracted is checked first (mismatch →
    ``ValueError``). Every written file's IDX header is checked. Returns ``Path(root)``, to pass as ``data_root``.
    """
    idx_dir, root = Path(idx_dir).expanduser(), Path(root).expanduser()
    if not idx_dir.is_dir():
        raise FileNotFoundError(f"IDX folder {idx_dir} does not exist")
    found = {name: _find_idx_source(idx_dir, name) for name in MNIST_FILES}
    missing = [n for n, s in found.items() if s is None]
    if missing:
        raise FileNotFoundError(f"{idx_dir} lacks MNIST IDX files (plain or .gz): {', '.join(missing)}")
    sources = {n: s for n, s in found.items() if s is not None}
    sums_file = idx_dir / "SHA256SUMS"
    sums = _read_sums(sums_file) if verify and sums_file.is_file() else {}
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, src in sources.items():
        dest = raw / name
        if dest.is_file() and dest.stat().st_size == _uncompressed_size(src):
            continue
        if src.name in sums and _sha256(src) != sums[src.name]:
            raise ValueError(f"SHA-256 of {src} does not match {sums_file}")
        tmp = dest.with_name(dest.name + ".part")
        opener = gzip.open if src.suffix == ".gz" else open
        with opener(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        os.replace(tmp, dest)
        _check_idx(dest, name)
    return root
