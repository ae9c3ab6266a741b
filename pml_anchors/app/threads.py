"""How many CPU threads a run uses when ``--threads`` is not given: the CPUs this process may really use, no more.

torch's own default is one thread per CPU it sees, which ignores a container's CPU quota and the other processes
already running. OpenMP threads that outnumber the free CPUs wait for each other at every parallel operation: on a
busy 2-core machine the digits bench took 33.6 s with torch's default (2 threads) and 11.8 s with 1. So
:func:`choose_threads` takes, in this order:

1. ``OMP_NUM_THREADS`` when it is set (the user's explicit choice, as OpenMP itself reads it);
2. the CPUs this process may run on: its affinity mask (``os.sched_getaffinity``), capped by the cgroup CPU quota
   (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``, rounded down, at least 1);
3. when those are all of the machine's CPUs, minus the ones other processes keep busy (the 1-minute load average,
   rounded; at least 1 thread). A container's load average counts the whole host, so it is not used under a quota
   or a narrower affinity mask.

The choice and its reason are recorded in ``results.json`` (``threads``, ``threads_from``) and in ``results.md``:
the thread count can change the last digits of the metrics (floating-point sums in another order), so pin it with
``--threads N`` (or ``TrainConfig(num_threads=N)``) to compare runs across machines. Stdlib only: the command line
reads it before torch is imported.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["THREADS_GIVEN", "cgroup_cpu_limit", "choose_threads", "default_threads", "split_threads"]

#: ``threads_from`` of a run whose thread count was given (``--threads``, ``TrainConfig.num_threads``)
THREADS_GIVEN = "--threads"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _omp_num_threads(environ: Mapping[str, str]) -> int | None:
    """The first number of ``OMP_NUM_THREADS`` (it may list one per nesting level, ``"4,2"``); ``None`` if unset or
    not a positive number."""
    text = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _own_cgroup_v2(root: Path) -> Path | None:
    """This process's cgroup v2 folder (``0::/path`` in ``/proc/self/cgroup``), when it is mounted under ``root``."""
    text = _read(Path("/proc/self/cgroup")) or ""
    for line in text.splitlines():
        if line.startswith("0::"):
            folder = root / line[3:].lstrip("/")
            return folder if folder != root else None
    return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (e.g. ``1.5``), or ``None`` when there is none (or it cannot
    be read): cgroup v2 ``cpu.max`` (``"150000 100000"``; ``"max ..."``: none), else v1
    ``cpu/cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` (quota ``-1``: none)."""
    limits = []
    for folder in (root, _own_cgroup_v2(root)):
        if folder is None:
            continue
        parts = (_read(folder / "cpu.max") or "").split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                limits.append(int(parts[0]) / int(parts[1]))
            except (ValueError, ZeroDivisionError):
                pass
    for v1 in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        quota, period = _read(root / v1 / "cpu.cfs_quota_us"), _read(root / v1 / "cpu.cfs_period_us")
        try:
            q, p = int(quota or ""), int(period or "")
        except ValueError:
            continue
        if q > 0 and p > 0:
            limits.append(q / p)
    return min(limits) if limits else None


def _affinity() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return None


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def choose_threads(
    *,
    environ: Mapping[str, str] | None = None,
    cpu_count: int | None = None,
    affinity: int | None = None,
    cpu_limit: float | None = None,
    load: float | None = None,
) -> tuple[int, str]:
    """``(threads, why)`` from the given facts about this machine (see the module's docstring); ``why`` names the
    deciding one: ``"OMP_NUM_THREADS"``, ``"cgroup quota (1.5 CPUs)"``, ``"CPU affinity (2 of 8 CPUs)"``,
    ``"load average 2.1 on 2 CPUs"`` or ``"2 CPUs"``."""
    omp = _omp_num_threads(os.environ if environ is None else environ)
    if omp is not None:
        return omp, "OMP_NUM_THREADS"
    total = max(1, cpu_count or 1)
    cpus, why = total, f"{total} CPU{'s' if total != 1 else ''}"
    if affinity is not None and 0 < affinity < cpus:
        cpus, why = affinity, f"CPU affinity ({affinity} of {total} CPUs)"
    if cpu_limit is not None and cpu_limit > 0 and math.floor(cpu_limit) < cpus:
        cpus, why = max(1, math.floor(cpu_limit)), f"cgroup quota ({cpu_limit:g} CPUs)"
    if cpus == total and load is not None and load > 0:
        free = max(1, min(cpus, math.floor(cpus - load + 0.5)))
        if free < cpus:
            return free, f"load average {load:.1f} on {total} CPUs"
    return cpus, why


@functools.cache
def default_threads() -> tuple[int, str]:
    """:func:`choose_threads` for this process, decided once (every run of a process, e.g. every run of a bench, then
    uses the same count)."""
    return choose_threads(
        cpu_count=os.cpu_count(), affinity=_affinity(), cpu_limit=cgroup_cpu_limit(), load=_load_average()
    )


def split_threads(choice: tuple[int, str], processes: int) -> tuple[int, str]:
    """``choice`` shared by ``processes`` processes of one job (``--nproc``): each gets its part, at least 1."""
    threads, why = choice
    if processes <= 1:
        return choice
    return max(1, threads // processes), f"{why}, shared by {processes} processes"
