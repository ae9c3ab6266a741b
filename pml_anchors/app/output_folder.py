"""A run's ``--output`` folder: claimed by one run at a time, checked writable before training, never overwritten
by accident.

* **Claim**: a lock file ``.pml-anchors.lock`` (the owner's pid, host and start time) created atomically
  (``O_CREAT | O_EXCL``) when the run starts and removed when it ends. A second run into the folder fails at once,
  naming the owner. A lock left by a run that died on this host (its pid is gone) is taken over with a warning; one
  from another host (a shared file system) is not, since its owner cannot be checked from here.
* **Finished runs**: a folder that already holds a run's ``results.json`` or ``checkpoint.pt`` is refused unless the
  run resumes it (``--resume``) or overwrites it (``--overwrite``).
* **Writable, with room**: before training, a probe file is written and removed, and the free space is compared
  with an estimate of the checkpoint (written twice over: a temporary copy, then the rename), so a read-only or full
  folder is an error now, not after the first epoch.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LOCK_NAME", "OutputFolderError", "check_room", "claimed", "write_atomically"]

LOCK_NAME = ".pml-anchors.lock"
#: files that mark a folder as holding a run already
RUN_FILES = ("results.json", "checkpoint.pt")


class OutputFolderError(ValueError):
    """The ``--output`` folder cannot be used by this run; the message says why and what to do."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_lock(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _take_lock(folder: Path) -> Path:
    lock = folder / LOCK_NAME
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    for _ in range(2):  # the second try after removing a stale lock
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _read_lock(lock)
            pid, host = held.get("pid"), held.get("host")
            if host == owner["host"] and isinstance(pid, int) and not _pid_alive(pid):
                warnings.warn(f"{folder}: taking over the lock of run pid {pid}, which is gone", RuntimeWarning, 2)
                lock.unlink(missing_ok=True)
                continue
            started = held.get("started")
            since = (
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(started)))
                if isinstance(started, (int, float))
                else "?"
            )
            raise OutputFolderError(
                f"{folder} is in use by another run (pid {pid} on host {host}, since {since}): give each run its own "
                f"--output, or wait for it to finish (if that run is dead, delete {lock})"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(owner, f)
        return lock
    raise OutputFolderError(f"{folder}: could not take the lock {lock}")


@contextmanager
def claimed(folder: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> Iterator[Path]:
    """Hold ``folder`` for one run: create it, check it is writable, refuse a finished run's folder unless
    ``resume`` or ``overwrite``, and lock it until the block ends."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputFolderError(f"cannot create the output folder {path}: {exc.strerror or exc}") from exc
    _probe(path)
    lock = _take_lock(path)
    try:
        finished = [name for name in RUN_FILES if (path / name).exists()]
        if finished and not (resume or overwrite):
            raise OutputFolderError(
                f"{path} already holds a run ({', '.join(finished)}): pass --resume {path / 'checkpoint.pt'} to "
                "continue it, --overwrite to replace it, or another --output"
            )
        yield path
    finally:
        lock.unlink(missing_ok=True)


def _probe(path: Path) -> None:
    probe = path / f".pml-anchors-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise OutputFolderError(f"the output folder {path} is not writable: {exc.strerror or exc}") from exc
    finally:
        probe.unlink(missing_ok=True)


def check_room(folder: str | os.PathLike, needed_bytes: int) -> None:
    """A clear error now if ``folder``'s file system has less free space than ``needed_bytes``."""
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise OutputFolderError(
            f"the output folder {folder} has {free / 2**20:.1f} MiB free, but this run's checkpoints need about "
            f"{needed_bytes / 2**20:.1f} MiB (each is written to a temporary file first, then renamed)"
        )


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file to ``path``; on any failure the temporary file is
    removed (a full disk keeps no partial file) and the error says which file could not be written."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, f"cannot write {target}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
