"""Downloading a dataset into a root folder: one clear error when it fails, and nothing half-written left behind.

torchvision's and PML's dataset classes download on construction (``download=True``); offline that ends in a
long traceback and an empty or half-extracted folder that the next run then mistakes for the dataset.
:func:`guarded_download` runs such a construction, and if it raises, removes every file and folder that appeared
under the root during it and raises :class:`DatasetDownloadError` naming the dataset, the folder, the cause and
what to do instead (a prepared root without ``--download``).
"""

from __future__ import annotations

import shutil
import socket
import urllib.error
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

__all__ = ["DatasetDownloadError", "guarded_download", "network_reason"]

T = TypeVar("T")

#: what the error text of an offline download holds when the library folded the URLError into its own message
OFFLINE_SIGNS = (
    "Name or service not known",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "No route to host",
    "Connection refused",
    "urlopen error",
)


class DatasetDownloadError(OSError):
    """A dataset download failed; whatever it had written was removed."""


def network_reason(error: BaseException) -> str:
    """A short cause for ``error``: "no network connection (...)" for the errors an offline machine raises."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for exc in chain:
        if isinstance(exc, (urllib.error.URLError, socket.gaierror, socket.timeout, ConnectionError)):
            return f"no network connection ({type(exc).__name__}: {exc})"
    text = " ".join(str(error).split())  # torchvision folds each mirror's URLError into one multi-line message
    for sign in OFFLINE_SIGNS:
        if sign in text:
            return f"no network connection ({sign})"
    return f"{type(error).__name__}: {text[:300]}"


def _snapshot(root: Path) -> set[Path]:
    return set(root.rglob("*")) if root.is_dir() else set()


def _remove_new(root: Path, before: set[Path], root_existed: bool) -> None:
    if not root_existed:
        shutil.rmtree(root, ignore_errors=True)
        return
    # deepest first, so that a new folder is empty (of new files) when it is reached
    for path in sorted(_snapshot(root) - before, key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@contextmanager
def _cleanup_on_failure(root: Path) -> Iterator[None]:
    root_existed = root.exists()
    before = _snapshot(root)
    try:
        yield
    except BaseException:
        _remove_new(root, before, root_existed)
        raise


def guarded_download(name: str, root: str | Path, build: Callable[[], T], *, prepare_hint: str = "") -> T:
    """``build()`` (a dataset constructor with ``download=True`` writing under ``root``), undone if it fails.

    On failure every file and folder created under ``root`` meanwhile is removed (``root`` too if it did not
    exist), and a :class:`DatasetDownloadError` says which dataset, where, why and ``prepare_hint`` (how to lay the
    files out by hand). ``KeyboardInterrupt`` is cleaned up after the same way and re-raised as it is.
    """
    root = Path(root)
    try:
        with _cleanup_on_failure(root):
            return build()
    except Exception as error:
        hint = f" {prepare_hint}" if prepare_hint else ""
        raise DatasetDownloadError(
            f"could not download {name} into {root}: {network_reason(error)}. Nothing was left behind there. "
            f"Run with internet access, or put the files in place and run without --download.{hint}"
        ) from error
